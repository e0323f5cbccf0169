package copier

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"

	"github.com/sendense/capture/internal/extent"
)

// memSource is a source in memory with a block-status map (nil: none).
type memSource struct {
	data    []byte
	ext     extent.Map
	window  uint64 // max bytes described per Extents call (0: all)
	readErr error  // fails every read at or after readAt
	readAt  uint64
	readEnd uint64 // not 0: only those before readEnd
	mu      sync.Mutex
	reads   extent.List
	queries int
}

func (s *memSource) Size() uint64 { return uint64(len(s.data)) }
func (s *memSource) Close() error { return nil }

func (s *memSource) ReadAt(p []byte, off uint64) error {
	s.mu.Lock()
	s.reads = append(s.reads, extent.Extent{Offset: off, Length: uint64(len(p))})
	s.mu.Unlock()
	if s.readErr != nil && off+uint64(len(p)) > s.readAt && (s.readEnd == 0 || off < s.readEnd) {
		return s.readErr
	}
	copy(p, s.data[off:])
	return nil
}

func (s *memSource) CanExtents() bool { return s.ext != nil }

func (s *memSource) Extents(off, length uint64) (extent.Map, error) {
	s.mu.Lock()
	s.queries++
	s.mu.Unlock()
	if s.window > 0 {
		length = min(length, s.window)
	}
	var out extent.Map
	for _, e := range s.ext {
		if e.End() <= off || e.Offset >= off+length {
			continue
		}
		out = append(out, e) // whole extents, possibly reaching before off or past the end
	}
	return out, nil
}

// memDest is a destination in memory that records what was done to it.
type memDest struct {
	mu         sync.Mutex
	data       []byte
	written    extent.List // ranges written with data
	zeroed     extent.List // ranges zeroed
	noZero     bool
	readOnly   bool
	flushes    int
	flushErr   error
	writeErr   error
	writeErrAt uint64
}

func newMemDest(size int, fill byte) *memDest {
	d := &memDest{data: make([]byte, size)}
	for i := range d.data {
		d.data[i] = fill
	}
	return d
}

func (d *memDest) Size() uint64   { return uint64(len(d.data)) }
func (d *memDest) Close() error   { return nil }
func (d *memDest) ReadOnly() bool { return d.readOnly }
func (d *memDest) CanZero() bool  { return !d.noZero }

func (d *memDest) WriteAt(p []byte, off uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.writeErr != nil && off+uint64(len(p)) > d.writeErrAt {
		return d.writeErr
	}
	copy(d.data[off:], p)
	d.written = append(d.written, extent.Extent{Offset: off, Length: uint64(len(p))})
	return nil
}

func (d *memDest) ReadAt(p []byte, off uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.data[off:])
	return nil
}

func (d *memDest) Zero(off, n uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.noZero {
		return errors.New("zero not supported")
	}
	clear(d.data[off : off+n])
	d.zeroed = append(d.zeroed, extent.Extent{Offset: off, Length: n})
	return nil
}

func (d *memDest) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushes++
	return d.flushErr
}

// multi wraps a source or destination so that it allows multi-conn; every
// Reopen returns another view of the same object.
type multiSource struct {
	*memSource
	opened *int
}

func (m multiSource) CanMultiConn() bool { return true }
func (m multiSource) Reopen() (io.Closer, error) {
	*m.opened++
	return m, nil
}

type multiDest struct {
	*memDest
	opened *int
}

func (m multiDest) CanMultiConn() bool { return true }
func (m multiDest) Reopen() (io.Closer, error) {
	*m.opened++
	return m, nil
}

// asyncMem makes a memory source or destination asynchronous: requests
// complete later, in a random order, a few per Completed call.
type asyncMem struct {
	src     Source
	dst     Destination
	zero    Zeroer
	rnd     *rand.Rand
	pending []func() Completion
	maxIn   int // most requests seen in flight
}

func newAsyncSource(s Source, seed int64) *asyncMem {
	return &asyncMem{src: s, rnd: rand.New(rand.NewSource(seed))}
}

func newAsyncDest(d Destination, seed int64) *asyncMem {
	a := &asyncMem{dst: d, rnd: rand.New(rand.NewSource(seed))}
	a.zero, _ = d.(Zeroer)
	return a
}

func (a *asyncMem) queue(f func() Completion) {
	a.pending = append(a.pending, f)
	a.maxIn = max(a.maxIn, len(a.pending))
}

func (a *asyncMem) StartRead(b Buffer, n int, off, tag uint64) error {
	p := b.Bytes()[:n]
	a.queue(func() Completion { return Completion{tag, a.src.ReadAt(p, off)} })
	return nil
}

func (a *asyncMem) StartWrite(b Buffer, n int, off, tag uint64) error {
	p := b.Bytes()[:n]
	a.queue(func() Completion { return Completion{tag, a.dst.WriteAt(p, off)} })
	return nil
}

func (a *asyncMem) StartZero(off, n, tag uint64) error {
	a.queue(func() Completion { return Completion{tag, a.zero.Zero(off, n)} })
	return nil
}

func (a *asyncMem) Completed(dst []Completion) []Completion {
	if len(a.pending) == 0 {
		return dst
	}
	k := 1 + a.rnd.Intn(len(a.pending))
	for i := 0; i < k; i++ {
		j := a.rnd.Intn(len(a.pending))
		dst = append(dst, a.pending[j]())
		a.pending[j] = a.pending[len(a.pending)-1]
		a.pending = a.pending[:len(a.pending)-1]
	}
	return dst
}

func (a *asyncMem) PollFD() (int, int16) { return -1, 0 }
func (a *asyncMem) Notify(int16) error   { return nil }
func (a *asyncMem) NewBuffer(n int) (Buffer, error) {
	return make(goBuffer, n), nil
}

// asyncSource and asyncDest combine a memory backend with asyncMem.
type asyncSource struct {
	*memSource
	*asyncMem
}

type asyncDest struct {
	*memDest
	*asyncMem
}

func (a asyncSource) Size() uint64 { return a.memSource.Size() }
func (a asyncSource) Close() error { return nil }
func (a asyncDest) Size() uint64   { return a.memDest.Size() }
func (a asyncDest) Close() error   { return nil }

// typed builds a map from (length, type) pairs.
func typed(pairs ...uint64) extent.Map {
	var m extent.Map
	off := uint64(0)
	for i := 0; i+1 < len(pairs); i += 2 {
		m = m.Append(off, pairs[i], uint32(pairs[i+1]))
		off += pairs[i]
	}
	return m
}

func (e op) String() string { return fmt.Sprintf("%s %d+%d", e.act, e.off, e.n) }
