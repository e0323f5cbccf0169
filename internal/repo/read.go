package repo

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"slices"
	"sync"

	"github.com/sendense/capture/internal/diskdigest"
	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/nbd"
	"github.com/sendense/capture/internal/qcow2"
	"github.com/sendense/capture/internal/qemu"
)

const (
	readConnections = 4       // qemu-nbd allows multi-conn for read-only exports
	maxSegment      = 1 << 20 // largest read
	readDepth       = 12      // requests read ahead of the hashing
	maxRead         = 4 << 20 // largest request: consecutive segments read together
)

// reader is what stream reads from, by several goroutines at once.
type reader interface {
	workers() int
	// pread reads len(p) bytes at off for goroutine worker.
	pread(worker int, p []byte, off uint64) error
	Close() error
}

// imageReader reads one image (or a pinned chain) through a read-only
// qemu-nbd, one connection per goroutine.
type imageReader struct {
	srv *qemu.Server
	hs  []*nbd.Handle
}

func (ir *imageReader) workers() int { return len(ir.hs) }
func (ir *imageReader) pread(worker int, p []byte, off uint64) error {
	return ir.hs[worker].Pread(p, off, 0)
}

// openImageReader serves path read-only with opts (pin its backing chain
// with Backing or NoBacking) and connects to it.
func (r *Repo) openImageReader(ctx context.Context, path string, opts qemu.ServeOptions) (*imageReader, error) {
	opts.ReadOnly = true
	srv, err := r.Tools.ServeNBD(ctx, path, opts)
	if err != nil {
		return nil, err
	}
	ir := &imageReader{srv: srv}
	for i := 0; i < readConnections; i++ {
		h, err := nbd.Dial(srv.URI())
		if err != nil {
			ir.Close()
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		ir.hs = append(ir.hs, h)
	}
	return ir, nil
}

func (ir *imageReader) Close() error {
	for _, h := range ir.hs {
		h.Close()
	}
	return ir.srv.Close()
}

// segment is a range to hash: read from the image, or known to be zero.
type segment struct {
	off, n uint64
	read   bool
	// chunk is the index of the chunk the segment is in (-1: none);
	// whole says it is all of that data chunk, so the reader hashes it.
	chunk int
	whole bool
	// block says it is one whole block of the disk digest (read): the
	// reader hashes it too (splitBlocks).
	block bool
}

func (s segment) end() uint64 { return s.off + s.n }

// stream reads the segments with every connection, keeping several
// requests in flight, and calls fn with each segment in order (data nil:
// s.n zero bytes). Consecutive segments to read are read together, up to
// maxRead bytes per request. The SHA-256 of a segment that is a whole
// data chunk is computed by the reading goroutine and passed as sum
// (dh: the repository's digest function, Repo.DigestHash).
// write, when set, is called by the reading goroutine (worker i of
// rd.workers()) with each range read, before fn sees its segments.
func stream(ctx context.Context, rd reader, segs []segment, dh *diskdigest.Hash, write func(worker int, off uint64, data []byte) error,
	fn func(s segment, data []byte, sum string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type slot struct {
		segs []segment // contiguous; all read, or one not read
		off  uint64
		n    uint64
		buf  []byte
		sums []string
		err  error
		done chan struct{}
	}
	free := make(chan []byte, readDepth)
	for i := 0; i < readDepth; i++ {
		free <- nil // allocated on first use
	}
	work := make(chan *slot, readDepth)
	order := make(chan *slot, 2*readDepth)
	var wg sync.WaitGroup
	for worker := range rd.workers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sl := range work {
				if err := ctx.Err(); err != nil {
					sl.err = err
				} else if sl.err = rd.pread(worker, sl.buf[:sl.n], sl.off); sl.err == nil {
					if write != nil {
						if err := write(worker, sl.off, sl.buf[:sl.n]); err != nil {
							sl.err = &writeError{err}
						}
					}
					for i, s := range sl.segs {
						if (s.whole || s.block) && sl.err == nil {
							sum := dh.Sum(sl.buf[s.off-sl.off : s.end()-sl.off])
							sl.sums[i] = hex.EncodeToString(sum[:])
						}
					}
				}
				close(sl.done)
			}
		}()
	}
	go func() {
		defer close(order)
		defer close(work)
		for i := 0; i < len(segs); {
			start, s := i, segs[i]
			sl := &slot{off: s.off, n: s.n, done: make(chan struct{})}
			i++
			if s.read {
				for i < len(segs) && segs[i].read && segs[i].off == sl.off+sl.n && sl.n+segs[i].n <= maxRead {
					sl.n += segs[i].n
					i++
				}
			}
			sl.segs = segs[start:i]
			if s.read {
				select {
				case b := <-free:
					if b == nil {
						b = make([]byte, maxRead)
					}
					sl.buf = b
				case <-ctx.Done():
					return
				}
				sl.sums = make([]string, len(sl.segs))
				select {
				case work <- sl:
				case <-ctx.Done():
					return
				}
			} else {
				close(sl.done)
			}
			select {
			case order <- sl:
			case <-ctx.Done():
				return
			}
		}
	}()
	var err error
	for sl := range order {
		<-sl.done
		if err == nil {
			if sl.err != nil {
				if we, ok := sl.err.(*writeError); ok {
					err = fmt.Errorf("writing %d bytes at offset %d: %w", sl.n, sl.off, we.err)
				} else {
					err = fmt.Errorf("reading %d bytes at offset %d: %w", sl.n, sl.off, sl.err)
				}
			}
			for i, s := range sl.segs {
				if err != nil {
					break
				}
				if sl.buf != nil {
					err = fn(s, sl.buf[s.off-sl.off:s.end()-sl.off], sl.sums[i])
				} else {
					err = fn(s, nil, "")
				}
			}
			if err != nil {
				cancel()
			}
		}
		if sl.buf != nil {
			free <- sl.buf
		}
	}
	wg.Wait()
	return err
}

// writeError is a failed write of a segment read.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

var zeroBuf [maxSegment]byte

// hashZeroes feeds n zero bytes to h.
func hashZeroes(h hash.Hash, n uint64) {
	for n > 0 {
		k := min(n, uint64(len(zeroBuf)))
		h.Write(zeroBuf[:k])
		n -= k
	}
}

// firstNonZero returns the index of the first non-zero byte of p, or -1.
func firstNonZero(p []byte) int {
	if len(p) <= len(zeroBuf) && bytes.Equal(p, zeroBuf[:len(p)]) {
		return -1
	}
	for i, b := range p {
		if b != 0 {
			return i
		}
	}
	return -1
}

// cut splits [off, off+n) into segments of at most maxSegment bytes,
// also at every boundary in cuts (sorted).
func cut(segs []segment, off, n uint64, read bool, cuts []uint64) []segment {
	end := off + n
	i, _ := slices.BinarySearch(cuts, off+1)
	for off < end {
		next := min(end, off+maxSegment)
		for i < len(cuts) && cuts[i] <= off {
			i++
		}
		if i < len(cuts) && cuts[i] < next {
			next = cuts[i]
		}
		segs = append(segs, segment{off: off, n: next - off, read: read, chunk: -1})
		off = next
	}
	return segs
}

// hashSink computes the chunk hashes (and the whole-disk digest) from the
// segments stream hands it in order.
type hashSink struct {
	chunks []Chunk
	whole  diskHasher // nil: no whole-disk digest

	onChunk   func(i int, sum string) // a data chunk's hash is complete
	onNonZero func(off uint64)        // a byte of a zero chunk read is not zero
	h         hash.Hash
	bytesRead uint64
}

func newHashSink(chunks []Chunk, whole diskHasher, fn *diskdigest.Hash) *hashSink {
	return &hashSink{chunks: chunks, whole: whole, h: fn.New()}
}

func (s *hashSink) feed(seg segment, data []byte, sum string) error {
	if data != nil {
		s.bytesRead += uint64(len(data))
	}
	if s.whole != nil {
		s.whole.feed(seg, data, sum)
	}
	if seg.chunk < 0 {
		return nil
	}
	c := s.chunks[seg.chunk]
	switch c.Kind {
	case KindData:
		if sum != "" && seg.whole {
			if s.onChunk != nil {
				s.onChunk(seg.chunk, sum)
			}
			return nil
		}
		if seg.off == c.Offset {
			s.h.Reset()
		}
		if data != nil {
			s.h.Write(data)
		} else {
			hashZeroes(s.h, seg.n)
		}
		if seg.end() == c.End() && s.onChunk != nil {
			s.onChunk(seg.chunk, hex.EncodeToString(s.h.Sum(nil)))
		}
	case KindZero:
		if data != nil && s.onNonZero != nil {
			if i := firstNonZero(data); i >= 0 {
				s.onNonZero(seg.off + uint64(i))
			}
		}
	}
	return nil
}

func (s *hashSink) wholeSum() string { return s.whole.sum() }

// hashesWhole says whether the sink computes the whole-disk hash.
func (s *hashSink) hashesWhole() bool { return s.whole != nil }

// annotate sets each segment's chunk (segments never straddle a chunk
// boundary) and whether it is a whole data chunk, read.
func annotate(segs []segment, chunks []Chunk) []segment {
	ci := 0
	for i := range segs {
		sg := &segs[i]
		for ci < len(chunks) && chunks[ci].End() <= sg.off {
			ci++
		}
		sg.chunk = -1
		if ci < len(chunks) && chunks[ci].Offset <= sg.off {
			c := chunks[ci]
			sg.chunk = ci
			sg.whole = sg.read && c.Kind == KindData && sg.off == c.Offset && sg.end() == c.End()
		}
	}
	return segs
}

// wholeSegments covers [0, size): data clusters of the map are read, the
// rest is zero; cut at chunk boundaries.
func wholeSegments(entries []qemu.MapEntry, size uint64, cuts []uint64) []segment {
	var segs []segment
	pos := uint64(0)
	for _, e := range entries {
		if e.Start != pos || e.Start >= size {
			break
		}
		n := min(e.Length, size-e.Start)
		segs = cut(segs, e.Start, n, e.Present && e.Data, cuts)
		pos = e.Start + n
	}
	if pos < size {
		segs = cut(segs, pos, size-pos, true, cuts) // the map stopped short: read
	}
	return segs
}

// chunkCuts are the chunk boundaries.
func chunkCuts(chunks []Chunk) []uint64 {
	cuts := make([]uint64, 0, 2*len(chunks))
	for _, c := range chunks {
		if n := len(cuts); n == 0 || cuts[n-1] != c.Offset {
			cuts = append(cuts, c.Offset)
		}
		cuts = append(cuts, c.End())
	}
	return cuts
}

// subtract returns the parts of l not in minus (both normal).
func subtract(l, minus extent.List) extent.List {
	var out extent.List
	j := 0
	for _, e := range l {
		pos, end := e.Offset, e.End()
		for j < len(minus) && minus[j].End() <= pos {
			j++
		}
		for k := j; k < len(minus) && minus[k].Offset < end; k++ {
			if minus[k].Offset > pos {
				out = append(out, extent.Extent{Offset: pos, Length: minus[k].Offset - pos})
			}
			pos = max(pos, minus[k].End())
		}
		if pos < end {
			out = append(out, extent.Extent{Offset: pos, Length: end - pos})
		}
	}
	return out
}

// chunkExtents is the normal list of the chunks' ranges.
func chunkExtents(chunks []Chunk) extent.List {
	l := make([]extent.Extent, len(chunks))
	for i, c := range chunks {
		l[i] = extent.Extent{Offset: c.Offset, Length: c.Length}
	}
	return extent.Normalize(l)
}

// chainReader is a chain (top first) opened for reading, with its
// extents.
type chainReader interface {
	reader
	extents(ctx context.Context) ([]qemu.MapEntry, error)
}

// openChain opens the chain of layers (top first; alone: the top image
// alone, as if it had no backing file) for reading, through the layers'
// names only. A local repository's images are read directly when they
// use only what sendense writes (qcow2.Chain: no QEMU process, no copy
// through a socket; an encrypted repository's images decrypted here,
// unlockImage); others, and a remote repository's, through qemu-nbd with
// every file pinned (qemu's LUKS layer decrypts encrypted ones).
func (r *Repo) openChain(ctx context.Context, layers []layer, alone bool) (chainReader, error) {
	if alone {
		layers = layers[:1]
	}
	if r.fs.root != nil {
		lc, err := r.openLocalChain(layers)
		if err == nil {
			return lc, nil
		}
		if !errors.Is(err, qcow2.ErrUnsupported) {
			return nil, err
		}
		slog.Debug("reading the chain through qemu-nbd", "image", layers[0].path, "reason", err)
	}
	all := paths(layers)
	ir, err := r.openImageReader(ctx, all[0], qemu.ServeOptions{Backing: all[1:]})
	if err != nil {
		return nil, err
	}
	return &nbdChain{imageReader: ir, r: r, paths: all}, nil
}

// nbdChain is a chain served by qemu-nbd.
type nbdChain struct {
	*imageReader
	r     *Repo
	paths []string
}

func (c *nbdChain) extents(ctx context.Context) ([]qemu.MapEntry, error) {
	return c.r.Tools.Map(ctx, c.paths[0], qemu.MapOptions{Backing: c.paths[1:]})
}

// localChain is a local chain read directly.
type localChain struct {
	files []*os.File
	chain qcow2.Chain
	m     []qcow2.Extent
	once  sync.Once
}

// localWorkers is how many goroutines read a local chain.
const localWorkers = 4

func (r *Repo) openLocalChain(layers []layer) (*localChain, error) {
	lc := &localChain{}
	for _, l := range layers {
		rel, err := r.fs.rel(l.path)
		if err != nil {
			lc.Close()
			return nil, err
		}
		f, err := r.fs.root.Open(rel)
		if err != nil {
			lc.Close()
			return nil, err
		}
		lc.files = append(lc.files, f)
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			lc.Close()
			return nil, fmt.Errorf("%s is not a regular file", l.path)
		}
		var im *qcow2.Image
		if r.keys != nil {
			im, err = qcow2.OpenEncrypted(f, r.unlockImage(l.path))
		} else {
			im, err = qcow2.Open(f)
		}
		if err != nil {
			lc.Close()
			return nil, fmt.Errorf("%s: %w", l.path, err)
		}
		lc.chain = append(lc.chain, im)
	}
	// The whole map is read now: a cluster this reader does not read (a
	// compressed one) sends the chain to qemu-nbd before anything is read.
	m, err := lc.chain.Map()
	if err != nil {
		lc.Close()
		return nil, err
	}
	lc.m = m
	return lc, nil
}

// unlockImage opens the LUKS header of the image at path, in an
// encrypted repository, with its secret: its clusters are decrypted with
// libcrypto (internal/xts), several times faster than qemu's LUKS layer.
// A header of another kind sends the chain to qemu.
func (r *Repo) unlockImage(path string) func([]byte) (qcow2.Decrypter, error) {
	return func(hdr []byte) (qcow2.Decrypter, error) {
		c, err := qemu.UnlockLUKS(hdr, r.imageSecretOf(path))
		if errors.Is(err, qemu.ErrLUKSUnsupported) {
			return nil, fmt.Errorf("%w: %v", qcow2.ErrUnsupported, err)
		}
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

func (c *localChain) workers() int { return localWorkers }
func (c *localChain) pread(_ int, p []byte, off uint64) error {
	return c.chain.ReadAt(p, off)
}

func (c *localChain) extents(context.Context) ([]qemu.MapEntry, error) {
	out := make([]qemu.MapEntry, len(c.m))
	for i, e := range c.m {
		out[i] = qemu.MapEntry{Start: e.Offset, Length: e.Length, Present: e.Data, Data: e.Data, Zero: !e.Data}
	}
	return out, nil
}

func (c *localChain) Close() error {
	c.once.Do(func() {
		for _, f := range c.files {
			f.Close()
		}
	})
	return nil
}
