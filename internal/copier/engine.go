// Package copier copies a disk image between two backends, extent by
// extent, the way nbdcopy does: block status decides what to read, zero and
// skip (docs/design.md, "Extents"), several connections each keep many
// requests in flight, and the copy ends with a flush.
//
// Backends implement Source and Destination plus optional abilities
// (Extenter, Zeroer, MultiConn, Async, BufferAllocator, ReadOnlier),
// detected with type assertions: the engine never asks which backend it
// has. NBD (libnbd) and Null are provided.
package copier

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/sendense/capture/internal/extent"
)

// Copy copies src onto dst. It opens more connections to both sides when
// both allow multi-conn (Options.Connections), keeps Options.Requests
// requests in flight on each, and ends by flushing every destination
// connection; a failed flush fails the copy. The caller keeps src and dst
// and closes them. A non-nil Result is returned also on failure.
func Copy(ctx context.Context, src Source, dst Destination, opts Options) (*Result, error) {
	if err := opts.Check(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	size := src.Size()
	switch ds := dst.Size(); {
	case ds < size:
		return nil, fmt.Errorf("the destination (%d bytes) is smaller than the source (%d bytes)", ds, size)
	case ds > size && !opts.AllowLargerDestination:
		return nil, fmt.Errorf("the destination (%d bytes) is larger than the source (%d bytes): use --allow-larger-destination to copy anyway", ds, size)
	}
	if ro, ok := dst.(ReadOnlier); ok && ro.ReadOnly() {
		return nil, errors.New("the destination is read-only: it must accept writes")
	}

	connStart := time.Now()
	srcs, dsts, closeAll, err := connect(src, dst, opts.Connections)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	connSeconds := time.Since(connStart).Seconds()

	work := workList(size, opts.Skip)
	resuming := work.Bytes() != size
	res, err := run(ctx, srcs, dsts, size, work, opts, !opts.Incremental && !resuming)
	if res != nil {
		res.Timing.Connect = connSeconds
	}
	needSum, needDigest := opts.Checksum && res != nil && res.SHA256 == "", opts.Digest && res != nil && res.Digest == ""
	if err != nil || !needSum && !needDigest {
		return res, err
	}

	// An incremental (or resumed) copy did not see the whole image: read
	// the destination back.
	readers := make([]Source, len(dsts))
	for i, d := range dsts {
		r, ok := d.(Source)
		if !ok {
			return res, errors.New("checksum: the destination cannot be read back")
		}
		readers[i] = r
	}
	nulls := make([]Destination, len(dsts))
	for i := range nulls {
		nulls[i] = NewNull(size)
	}
	copts := Options{Connections: opts.Connections, Requests: opts.Requests, RequestSize: opts.RequestSize, DestinationIsZero: true,
		Checksum: needSum, Digest: needDigest, DigestHash: opts.DigestHash}
	copts = copts.withDefaults()
	start := time.Now()
	sum, err := run(ctx, readers, nulls, size, workList(size, nil), copts, true)
	if err != nil {
		return res, fmt.Errorf("checksum of the destination: %w", err)
	}
	if needSum {
		res.SHA256 = sum.SHA256
	}
	if needDigest {
		res.Digest = sum.Digest
	}
	res.Seconds += time.Since(start).Seconds()
	res.Timing.ReadBack = time.Since(start).Seconds()
	res.Timing.HashCPU += sum.Timing.HashCPU
	return res, nil
}

// Checksum returns the hex SHA-256 of src's content, read with the copy
// engine (block status spares reading zero extents).
func Checksum(ctx context.Context, src Source, opts Options) (string, error) {
	if err := opts.Check(); err != nil {
		return "", err
	}
	opts = opts.withDefaults()
	size := src.Size()
	copts := Options{Connections: 1, Requests: opts.Requests, RequestSize: opts.RequestSize, DestinationIsZero: true, Checksum: true}
	res, err := run(ctx, []Source{src}, []Destination{NewNull(size)}, size, workList(size, nil), copts.withDefaults(), true)
	if err != nil {
		return "", err
	}
	return res.SHA256, nil
}

// connect returns n connections to each side (fewer unless both allow
// multi-conn): src and dst first, then new ones, which closeAll closes.
func connect(src Source, dst Destination, n int) ([]Source, []Destination, func(), error) {
	srcs, dsts := []Source{src}, []Destination{dst}
	var opened []io.Closer
	closeAll := func() {
		for _, c := range opened {
			c.Close()
		}
	}
	sm, ok1 := src.(MultiConn)
	dm, ok2 := dst.(MultiConn)
	if !ok1 || !ok2 || !sm.CanMultiConn() || !dm.CanMultiConn() {
		n = 1
	}
	for i := 1; i < n; i++ {
		s, err := sm.Reopen()
		if err != nil {
			closeAll()
			return nil, nil, nil, fmt.Errorf("open source connection %d: %w", i+1, err)
		}
		opened = append(opened, s)
		d, err := dm.Reopen()
		if err != nil {
			closeAll()
			return nil, nil, nil, fmt.Errorf("open destination connection %d: %w", i+1, err)
		}
		opened = append(opened, d)
		ss, ok1 := s.(Source)
		dd, ok2 := d.(Destination)
		if !ok1 || !ok2 {
			closeAll()
			return nil, nil, nil, errors.New("copier: Reopen returned a different kind of connection")
		}
		srcs, dsts = append(srcs, ss), append(dsts, dd)
	}
	return srcs, dsts, closeAll, nil
}

// engine is the state shared by the workers of one run.
type engine struct {
	opts    Options
	size    uint64
	plan    *planner
	seq     *sequencer   // Checksum
	blocks  *blockDigest // Digest
	lim     *rate.Limiter
	canZero bool
	alloc   func(int) (Buffer, error)
	zeroBuf Buffer       // request-sized zeroes, when the destination cannot zero
	hashing bool         // data is hashed (HashChunks, Digest)
	hashq   chan hashJob // to the hashers; nil: each event loop hashes its data
	stats   counters

	errOnce sync.Once
	err     error
	stop    atomic.Bool

	skipMu  sync.Mutex
	skipped extent.List
}

func (e *engine) fail(err error) {
	e.errOnce.Do(func() { e.err = err })
	e.stop.Store(true)
	if e.seq != nil {
		e.seq.abort() // gives back the request buffers it holds
	}
	if e.blocks != nil {
		e.blocks.abort()
	}
}

func (e *engine) stopped() bool { return e.stop.Load() }

// run copies work (ranges of [0, size)) from srcs[i] to dsts[i]: each
// pair is a lane, driven by one of at most GOMAXPROCS event loops. With
// inline it computes the image's SHA-256 (Options.Checksum, in order) and
// disk digest (Options.Digest) from what it copies.
func run(ctx context.Context, srcs []Source, dsts []Destination, size uint64, work extent.List, opts Options, inline bool) (*Result, error) {
	start := time.Now()
	e := &engine{opts: opts, size: size}
	z, ok := dsts[0].(Zeroer)
	e.canZero = ok && z.CanZero()
	reqSize := uint64(opts.RequestSize)
	zeroMax := uint64(maxZeroRequest)
	if !e.canZero {
		zeroMax = reqSize
	}
	e.plan = newPlanner(work, reqSize, zeroMax, opts.Incremental, opts.DestinationIsZero)
	e.plan.skipped = func(off, n uint64) {
		e.stats.skipped.Add(n)
		e.skipMu.Lock()
		e.skipped = appendRange(e.skipped, off, n)
		e.skipMu.Unlock()
	}
	e.stats.skipped.Add(size - work.Bytes())
	e.alloc = pickAllocator(srcs[0], dsts[0])
	if !e.canZero {
		b, err := e.alloc(opts.RequestSize)
		if err != nil {
			return nil, err
		}
		clear(b.Bytes())
		e.zeroBuf = b
	}
	if inline && opts.Checksum {
		e.seq = newSequencer(size, &e.stats.hashNanos)
	}
	if inline && opts.Digest {
		e.blocks = newBlockDigest(size, opts.DigestHash, &e.stats.hashNanos)
	}
	if e.seq != nil || e.blocks != nil {
		for _, s := range workList(size, work) { // never copied: not hashable
			e.fail(fmt.Errorf("checksum: range %v was not copied", s))
		}
		e.plan.zeroes = e.zeroes
	}
	switch {
	case opts.Limiter != nil:
		e.lim = opts.Limiter
	case opts.Rate > 0:
		e.lim = rate.NewLimiter(rate.Limit(opts.Rate), opts.RequestSize)
	}

	e.hashing = opts.HashChunks || e.blocks != nil
	if e.hashing && runtime.GOMAXPROCS(0) >= hasherCPUs {
		e.hashq = make(chan hashJob, len(srcs)*opts.Requests)
		for range runtime.GOMAXPROCS(0) {
			go func() {
				for j := range e.hashq {
					e.hash(j)
					j.w.hashDone(j.ref)
				}
			}()
		}
		defer close(e.hashq)
	}

	// One event loop per connection pair, but no more than there are CPUs:
	// a loop drives several pairs rather than competing for a CPU.
	loops := max(1, min(len(srcs), runtime.GOMAXPROCS(0)))
	workers := make([]*worker, loops)
	for i := range srcs {
		k := i % loops
		if workers[k] == nil {
			w, err := newWorker(e, nil)
			if err != nil {
				if e.seq != nil {
					e.seq.stop()
				}
				if e.blocks != nil {
					e.blocks.abort()
				}
				if e.zeroBuf != nil {
					e.zeroBuf.Free()
				}
				return nil, err
			}
			workers[k] = w
		}
		workers[k].lanes = append(workers[k].lanes, newLane(e, srcs[i], dsts[i]))
	}
	stopProgress := e.startProgress(start)
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx)
		}()
	}
	wg.Wait()
	for _, w := range workers {
		for _, l := range w.lanes {
			if g, ok := l.dst.(*goConn); ok {
				g.close()
			}
		}
	}
	if err := ctx.Err(); err != nil {
		e.fail(err)
	}
	ioDone := time.Now()

	res := &Result{Connections: len(srcs), Requests: opts.Requests, RequestSize: opts.RequestSize}
	var drained, flushed time.Time
	for _, w := range workers {
		drained, flushed = latest(drained, w.drainedAt), latest(flushed, w.flushedAt)
	}
	if !drained.IsZero() {
		res.Timing.Transfer = drained.Sub(start).Seconds()
		if !flushed.IsZero() {
			res.Timing.Flush = flushed.Sub(drained).Seconds()
		}
	}
	res.Completed = append(res.Completed, e.skipped...)
	res.Completed = append(res.Completed, workList(size, work)...)
	for _, w := range workers {
		res.Completed = append(res.Completed, w.completed...)
		res.Chunks = append(res.Chunks, w.chunks...)
		if w.drained {
			w.freeBuffers()
		}
	}
	allDrained := true
	for _, w := range workers {
		allDrained = allDrained && w.drained
	}
	if e.zeroBuf != nil && allDrained {
		e.zeroBuf.Free()
	}
	res.Completed = extent.Normalize(res.Completed)
	slices.SortFunc(res.Chunks, func(a, b Chunk) int { return cmp.Compare(a.Offset, b.Offset) })
	if e.seq != nil {
		if e.err == nil {
			sum, err := e.seq.finish()
			if err != nil {
				e.fail(err)
			}
			res.SHA256 = sum
		} else {
			e.seq.stop()
		}
	}
	if e.blocks != nil {
		if e.err == nil {
			sum, err := e.blocks.finish()
			if err != nil {
				e.fail(err)
			}
			res.Digest = sum
		} else {
			e.blocks.abort()
		}
	}
	if e.seq != nil || e.blocks != nil {
		res.Timing.HashWait = time.Since(ioDone).Seconds()
	}
	res.Timing.HashCPU = time.Duration(e.stats.hashNanos.Load()).Seconds()
	res.Stats = e.stats.snapshot(time.Since(start).Seconds())
	stopProgress()
	return res, e.err
}

// zeroes records that [off, off+n) is zero for the image's hashes.
func (e *engine) zeroes(off, n uint64) {
	if e.seq != nil {
		e.seq.zero(off, n)
	}
	if e.blocks != nil {
		e.blocks.zero(off, n)
	}
}

// hash computes what a data request needs: the SHA-256 of its chunks
// (HashChunks; cut at block boundaries with Digest) and the digests of
// the blocks it holds whole; the parts of other blocks go to the block
// digest. It runs on a hasher goroutine while the data is written.
func (e *engine) hash(j hashJob) {
	t := time.Now()
	defer func() { e.stats.hashNanos.Add(int64(time.Since(t))) }()
	s := &j.w.lanes[j.ref.lane].slots[j.ref.slot]
	s.sums = s.sums[:0]
	e.chunkPieces(j.off, uint64(len(j.data)), func(off, n uint64) {
		p := j.data[off-j.off:][:n]
		whole := e.blocks != nil && e.blocks.isBlock(off, n)
		if e.opts.HashChunks || whole {
			sum := e.opts.DigestHash.Sum(p)
			if e.opts.HashChunks {
				s.sums = append(s.sums, hex.EncodeToString(sum[:]))
			}
			if whole {
				e.blocks.block(off/blockSize, sum)
			}
		}
		if e.blocks != nil && !whole {
			e.blocks.part(off, p)
		}
	})
}

// chunkPieces calls fn for the chunks of a data request at off: the
// request, cut at block boundaries when computing the disk digest (so
// that a chunk's SHA-256 is its block's).
func (e *engine) chunkPieces(off, n uint64, fn func(off, n uint64)) {
	if e.blocks == nil {
		fn(off, n)
		return
	}
	forPieces(off, n, fn)
}

// latest is the later of a and b.
func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// appendRange appends [off, off+n) to l, merging with the last range when
// they touch.
func appendRange(l extent.List, off, n uint64) extent.List {
	if k := len(l); k > 0 && l[k-1].End() == off {
		l[k-1].Length += n
		return l
	}
	return append(l, extent.Extent{Offset: off, Length: n})
}

// pickAllocator returns the buffer allocator of the side doing
// asynchronous I/O (its buffers must suit it), else Go memory.
func pickAllocator(src Source, dst Destination) func(int) (Buffer, error) {
	for _, side := range []any{src, dst} {
		if _, ok := side.(Async); !ok {
			continue
		}
		if a, ok := side.(BufferAllocator); ok {
			return a.NewBuffer
		}
	}
	return func(n int) (Buffer, error) { return make(goBuffer, n), nil }
}

// startProgress calls Options.Progress periodically until the returned
// function is called, which reports once more.
func (e *engine) startProgress(start time.Time) func() {
	f := e.opts.Progress
	if f == nil {
		return func() {}
	}
	report := func() {
		f(Progress{Done: e.stats.done(), Total: e.size, Stats: e.stats.snapshot(time.Since(start).Seconds())})
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(e.opts.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				report()
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		report()
	}
}
