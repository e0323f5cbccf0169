package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"slices"
	"sync"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/nbd"
	"github.com/sendense/capture/internal/qemu"
)

const (
	readConnections = 4       // qemu-nbd allows multi-conn for read-only exports
	maxSegment      = 1 << 20 // largest read
	readDepth       = 16      // segments read ahead of the hashing
)

// imageReader reads one image through a read-only qemu-nbd.
type imageReader struct {
	srv *qemu.Server
	hs  []*nbd.Handle
}

// openImageReader serves path read-only (alone, without its backing file,
// when noBacking) and connects to it.
func (r *Repo) openImageReader(ctx context.Context, path string, noBacking bool) (*imageReader, error) {
	srv, err := r.Tools.ServeNBD(ctx, path, qemu.ServeOptions{ReadOnly: true, NoBacking: noBacking})
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

// stream reads the segments with every connection, keeping several in
// flight, and calls fn with each in order (data nil: s.n zero bytes). The
// SHA-256 of a segment that is a whole data chunk is computed by the
// reading goroutine and passed as sum.
func (ir *imageReader) stream(ctx context.Context, segs []segment, fn func(s segment, data []byte, sum string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type slot struct {
		seg  segment
		buf  []byte
		sum  string
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
	for _, h := range ir.hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sl := range work {
				if err := ctx.Err(); err != nil {
					sl.err = err
				} else {
					sl.err = h.Pread(sl.buf[:sl.seg.n], sl.seg.off, 0)
					if sl.err == nil && (sl.seg.whole || sl.seg.block) {
						sum := sha256.Sum256(sl.buf[:sl.seg.n])
						sl.sum = hex.EncodeToString(sum[:])
					}
				}
				close(sl.done)
			}
		}()
	}
	go func() {
		defer close(order)
		defer close(work)
		for _, s := range segs {
			sl := &slot{seg: s, done: make(chan struct{})}
			if s.read {
				select {
				case b := <-free:
					if b == nil {
						b = make([]byte, maxSegment)
					}
					sl.buf = b
				case <-ctx.Done():
					return
				}
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
			switch {
			case sl.err != nil:
				err = fmt.Errorf("reading %d bytes at offset %d: %w", sl.seg.n, sl.seg.off, sl.err)
			case sl.buf != nil:
				err = fn(sl.seg, sl.buf[:sl.seg.n], sl.sum)
			default:
				err = fn(sl.seg, nil, "")
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

func newHashSink(chunks []Chunk, whole diskHasher) *hashSink {
	return &hashSink{chunks: chunks, whole: whole, h: sha256.New()}
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
