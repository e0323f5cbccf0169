package copier

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/sendense/capture/internal/extent"
)

const (
	// idleWait bounds one poll(2), so cancellation is noticed.
	idleWait = 250 * time.Millisecond
	// drainTimeout bounds the wait for requests in flight after a failure;
	// buffers of a worker that did not drain are leaked, never freed under
	// the I/O layer.
	drainTimeout = 30 * time.Second
)

type slotState uint8

const (
	stFree slotState = iota
	stReading
	stWriting
	stZeroing
)

// slot is one request: a read followed by a write, or a write-zeroes.
type slot struct {
	buf   Buffer // allocated on first use
	op    op
	state slotState
	parts int      // write, hashes and image hash still to finish
	sums  []string // SHA-256 of the data's chunks (HashChunks), set by a hasher
}

// lane is one source and one destination connection, with up to
// Options.Requests slots in flight.
type lane struct {
	src, dst Async
	dstConn  Destination
	ext      Extenter
	slots    []slot
	free     []int
	inflight int
	pollSrc  int // index in the worker's poll set, or -1
	pollDst  int
}

// worker drives one or more lanes from one goroutine with a single poll(2)
// over all their sockets (nbdcopy's multi-thread-copying.c, with several
// connections per thread). Using few goroutines matters: every goroutine
// blocked in poll(2) or libnbd costs Go scheduler hand-offs.
type worker struct {
	e     *engine
	lanes []*lane

	exhausted bool
	held      op // planned but waiting for the rate limiter
	hasHeld   bool
	heldUntil time.Time
	wait      time.Duration

	comps []Completion
	pfds  []unix.PollFd

	// Chunk and image hashing run on other goroutines; they report here
	// and wake the poll through an eventfd.
	wakeFd  int
	hashMu  sync.Mutex
	hashed  []slotRef
	hashBuf []slotRef

	completed extent.List
	chunks    []Chunk
	drained   bool
	// drainedAt: the last request completed; flushedAt: the flush ended.
	drainedAt, flushedAt time.Time
}

type slotRef struct{ lane, slot int }

// hashJob asks a hasher to hash a slot's data, read at off.
type hashJob struct {
	w    *worker
	ref  slotRef
	off  uint64
	data []byte
}

func newLane(e *engine, src Source, dst Destination) *lane {
	l := &lane{dstConn: dst}
	if a, ok := src.(Async); ok {
		l.src = a
	} else {
		l.src = newSyncConn(src, nil)
	}
	if a, ok := dst.(Async); ok {
		l.dst = a
	} else if c, ok := dst.(Concurrent); ok && c.Concurrent() {
		if g, err := newGoConn(dst); err == nil {
			l.dst = g
		}
	}
	if l.dst == nil {
		l.dst = newSyncConn(nil, dst)
	}
	if x, ok := src.(Extenter); ok && x.CanExtents() {
		l.ext = x
	}
	n := e.opts.Requests
	l.slots = make([]slot, n)
	l.free = make([]int, n)
	for i := range l.free {
		l.free[i] = n - 1 - i
	}
	return l
}

func newWorker(e *engine, lanes []*lane) (*worker, error) {
	w := &worker{e: e, lanes: lanes, wakeFd: -1}
	if e.hashq != nil || e.seq != nil {
		fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("eventfd: %w", err)
		}
		w.wakeFd = fd
	}
	return w, nil
}

// run copies until the plan is exhausted or the copy fails, then flushes.
func (w *worker) run(ctx context.Context) {
	defer func() {
		if w.wakeFd >= 0 && w.drained {
			// Under hashMu: a hasher may still be in hashDone, and must
			// not write to a closed (or reused) descriptor.
			w.hashMu.Lock()
			unix.Close(w.wakeFd)
			w.wakeFd = -1
			w.hashMu.Unlock()
		}
	}()
	var deadline time.Time
	for {
		if err := ctx.Err(); err != nil && !w.e.stopped() {
			w.e.fail(err) // also releases what the checksum holds
		}
		stopping := w.e.stopped()
		if stopping && deadline.IsZero() {
			deadline = time.Now().Add(drainTimeout)
		}
		w.wait = idleWait
		if !stopping {
			if err := w.fill(); err != nil {
				w.e.fail(err)
				continue
			}
		}
		inflight := 0
		for _, l := range w.lanes {
			inflight += l.inflight
		}
		if inflight == 0 {
			if stopping || w.exhausted && !w.hasHeld {
				break
			}
			time.Sleep(w.wait) // waiting for the rate limiter
			continue
		}
		if stopping && time.Now().After(deadline) {
			return // not drained: keep the buffers
		}
		if w.reap() {
			continue
		}
		if err := w.poll(); err != nil {
			w.e.fail(err)
			if stopping {
				return // a connection is broken: keep the buffers
			}
		}
	}
	w.drained = true
	w.drainedAt = time.Now()
	if w.e.stopped() || ctx.Err() != nil {
		return
	}
	for _, l := range w.lanes {
		if err := l.dstConn.Flush(); err != nil {
			w.e.fail(fmt.Errorf("flush the destination: %w", err))
			return
		}
	}
	w.flushedAt = time.Now()
}

// fill starts requests on every lane with free slots, in turn.
func (w *worker) fill() error {
	for more := true; more; {
		more = false
		for _, l := range w.lanes {
			if len(l.free) == 0 {
				continue
			}
			o, ok, err := w.nextOp(l)
			if err != nil || !ok {
				return err
			}
			if err := w.start(l, o); err != nil {
				return err
			}
			more = true
		}
	}
	return nil
}

// nextOp returns the next op to start, or ok=false to wait.
func (w *worker) nextOp(l *lane) (op, bool, error) {
	if w.hasHeld {
		if d := time.Until(w.heldUntil); d > 0 {
			w.wait = min(w.wait, d)
			return op{}, false, nil
		}
		w.hasHeld = false
		return w.held, true, nil
	}
	if w.exhausted {
		return op{}, false, nil
	}
	o, ok, err := w.e.plan.next(l.ext)
	if err != nil {
		return op{}, false, err
	}
	if !ok {
		w.exhausted = true
		return op{}, false, nil
	}
	if o.act == actCopy && w.e.lim != nil {
		now := time.Now()
		if d := reserve(w.e.lim, now, int(o.n)); d > 0 {
			w.held, w.hasHeld, w.heldUntil = o, true, now.Add(d)
			w.wait = min(w.wait, d)
			return op{}, false, nil
		}
	}
	return o, true, nil
}

// reserve takes n bytes from the limiter, in reservations of at most its
// burst (which a single reservation cannot exceed), and returns how long
// to wait until the last of them may be used: a request larger than the
// burst is charged in full.
func reserve(lim *rate.Limiter, now time.Time, n int) time.Duration {
	burst := lim.Burst()
	if burst <= 0 {
		return 0 // no bucket to take from: rate.Inf
	}
	var d time.Duration
	for ; n > 0; n -= burst {
		d = lim.ReserveN(now, min(n, burst)).DelayFrom(now)
	}
	return d
}

// start begins op o in a free slot of lane l.
func (w *worker) start(l *lane, o op) error {
	i := l.free[len(l.free)-1]
	l.free = l.free[:len(l.free)-1]
	s := &l.slots[i]
	s.op, s.parts = o, 1
	var err error
	if o.act == actCopy {
		if s.buf == nil {
			if s.buf, err = w.e.alloc(w.e.opts.RequestSize); err != nil {
				l.free = append(l.free, i)
				return err
			}
		}
		s.state = stReading
		if err = l.src.StartRead(s.buf, int(o.n), o.off, uint64(i)); err != nil {
			err = fmt.Errorf("read from the source at offset %d: %w", o.off, err)
		}
	} else {
		err = w.startZero(l, s, i)
	}
	if err != nil {
		s.state = stFree
		l.free = append(l.free, i)
		return err
	}
	l.inflight++
	return nil
}

// startZero writes zeroes over slot i's range.
func (w *worker) startZero(l *lane, s *slot, i int) error {
	s.state = stZeroing
	var err error
	if w.e.canZero {
		err = l.dst.StartZero(s.op.off, s.op.n, uint64(i))
	} else {
		err = l.dst.StartWrite(w.e.zeroBuf, int(s.op.n), s.op.off, uint64(i))
	}
	if err != nil {
		return fmt.Errorf("write zeroes to the destination at offset %d: %w", s.op.off, err)
	}
	return nil
}

// finish frees slot i of lane l.
func (w *worker) finish(l *lane, i int) {
	l.slots[i].state = stFree
	l.free = append(l.free, i)
	l.inflight--
}

// reap handles finished requests and reports whether there were any.
func (w *worker) reap() bool {
	any := false
	for li, l := range w.lanes {
		w.comps = l.src.Completed(w.comps[:0])
		for _, c := range w.comps {
			any = true
			w.readDone(l, li, c)
		}
		w.comps = l.dst.Completed(w.comps[:0])
		for _, c := range w.comps {
			any = true
			w.writeDone(l, c)
		}
	}
	if w.wakeFd >= 0 {
		w.hashMu.Lock()
		w.hashBuf, w.hashed = w.hashed, w.hashBuf[:0]
		w.hashMu.Unlock()
		for _, r := range w.hashBuf {
			any = true
			w.partDone(w.lanes[r.lane], r.slot)
		}
	}
	return any
}

func slotOf(l *lane, tag uint64, want slotState) (*slot, int) {
	i := int(tag)
	if i < 0 || i >= len(l.slots) || l.slots[i].state == stFree {
		panic(fmt.Sprintf("copier: completion for idle slot %d", tag))
	}
	if want != stFree && l.slots[i].state != want {
		panic(fmt.Sprintf("copier: slot %d completed in state %d, want %d", tag, l.slots[i].state, want))
	}
	return &l.slots[i], i
}

// readDone continues a copy whose read finished: write the data, or
// zeroes when it is all zero.
func (w *worker) readDone(l *lane, li int, c Completion) {
	s, i := slotOf(l, c.Tag, stReading)
	if c.Err != nil {
		w.e.fail(fmt.Errorf("read from the source at offset %d: %w", s.op.off, c.Err))
		w.finish(l, i)
		return
	}
	off, n := s.op.off, s.op.n
	w.e.stats.read.Add(n)
	if w.e.stopped() {
		w.finish(l, i)
		return
	}
	var err error
	if isZero(s.buf, int(n)) {
		w.e.zeroes(off, n)
		if w.e.opts.DestinationIsZero {
			w.e.stats.skipped.Add(n)
			w.completed = appendRange(w.completed, off, n)
			w.finish(l, i)
			return
		}
		err = w.startZero(l, s, i)
	} else {
		data := s.buf.Bytes()[:n]
		s.state = stWriting
		if err = l.dst.StartWrite(s.buf, int(n), off, uint64(i)); err != nil {
			err = fmt.Errorf("write to the destination at offset %d: %w", off, err)
		} else {
			// The write only reads the buffer: hash it meanwhile, and
			// keep the slot until the hashes are done.
			ref := slotRef{li, i}
			switch {
			case w.e.hashq != nil:
				s.parts++
				w.e.hashq <- hashJob{w, ref, off, data}
			case w.e.hashing:
				w.e.hash(hashJob{w, ref, off, data})
			}
			if w.e.seq != nil {
				s.parts++
				w.e.seq.data(off, data, func() { w.hashDone(ref) })
			}
		}
	}
	if err != nil {
		w.e.fail(err)
		w.finish(l, i)
	}
}

// writeDone records a finished write (or write-zeroes).
func (w *worker) writeDone(l *lane, c Completion) {
	s, i := slotOf(l, c.Tag, stFree)
	if c.Err != nil {
		what := "write to"
		if s.state == stZeroing {
			what = "write zeroes to"
		}
		w.e.fail(fmt.Errorf("%s the destination at offset %d: %w", what, s.op.off, c.Err))
		s.state = stReading // the chunk was not written
	}
	w.partDone(l, i)
}

// partDone ends slot i once its write and its hash are both done.
func (w *worker) partDone(l *lane, i int) {
	s := &l.slots[i]
	if s.parts--; s.parts > 0 {
		return
	}
	off, n := s.op.off, s.op.n
	switch s.state {
	case stZeroing:
		w.e.stats.zeroed.Add(n)
		if w.e.opts.HashChunks {
			w.chunks = append(w.chunks, Chunk{Offset: off, Length: n, Kind: ChunkZero})
		}
	case stWriting:
		w.e.stats.written.Add(n)
		if w.e.opts.HashChunks {
			k := 0
			w.e.chunkPieces(off, n, func(off, n uint64) {
				w.chunks = append(w.chunks, Chunk{Offset: off, Length: n, Kind: ChunkData, SHA256: s.sums[k]})
				k++
			})
		}
	default: // failed
		w.finish(l, i)
		return
	}
	w.completed = appendRange(w.completed, off, n)
	w.finish(l, i)
}

// hashDone is called by a hasher when a slot's hashes are done, and
// by the sequencer when it no longer needs a slot's buffer.
func (w *worker) hashDone(r slotRef) {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	w.hashMu.Lock()
	defer w.hashMu.Unlock()
	w.hashed = append(w.hashed, r)
	if w.wakeFd >= 0 {
		unix.Write(w.wakeFd, one[:]) // an eventfd: never blocks
	}
}

// poll waits for the sockets of all lanes and lets them progress.
func (w *worker) poll() error {
	w.pfds = w.pfds[:0]
	for _, l := range w.lanes {
		l.pollSrc, l.pollDst = -1, -1
		if fd, ev := l.src.PollFD(); fd >= 0 && ev != 0 {
			l.pollSrc = len(w.pfds)
			w.pfds = append(w.pfds, unix.PollFd{Fd: int32(fd), Events: ev})
		}
		if fd, ev := l.dst.PollFD(); fd >= 0 && ev != 0 {
			l.pollDst = len(w.pfds)
			w.pfds = append(w.pfds, unix.PollFd{Fd: int32(fd), Events: ev})
		}
	}
	wake := -1
	if w.wakeFd >= 0 {
		wake = len(w.pfds)
		w.pfds = append(w.pfds, unix.PollFd{Fd: int32(w.wakeFd), Events: unix.POLLIN})
	}
	if len(w.pfds) == 0 {
		time.Sleep(time.Millisecond)
		return nil
	}
	ms := max(int(w.wait/time.Millisecond), 1)
	if _, err := unix.Poll(w.pfds, ms); err != nil {
		if errors.Is(err, unix.EINTR) {
			return nil
		}
		return fmt.Errorf("poll: %w", err)
	}
	if wake >= 0 && w.pfds[wake].Revents != 0 {
		var b [8]byte
		unix.Read(w.wakeFd, b[:])
	}
	for _, l := range w.lanes {
		if l.pollSrc >= 0 {
			if err := l.src.Notify(w.pfds[l.pollSrc].Revents); err != nil {
				return fmt.Errorf("source: %w", err)
			}
		}
		if l.pollDst >= 0 {
			if err := l.dst.Notify(w.pfds[l.pollDst].Revents); err != nil {
				return fmt.Errorf("destination: %w", err)
			}
		}
	}
	return nil
}

// freeBuffers releases the request buffers; only once drained.
func (w *worker) freeBuffers() {
	for _, l := range w.lanes {
		for i := range l.slots {
			if l.slots[i].buf != nil {
				l.slots[i].buf.Free()
				l.slots[i].buf = nil
			}
		}
	}
}
