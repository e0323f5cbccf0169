package repo

import (
	"context"
	"fmt"
	"slices"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/qemu"
)

// expected is what a disk restored from a chain must hold, from the
// chain's manifests alone: each range comes from the topmost layer whose
// chunk covers it — data with its SHA-256, or zeroes — and reads as
// zeroes where no chunk covers it. A data chunk partly hidden by the
// layers above (cut) is read from its own layer alone and checked
// against its SHA-256; the SHA-256 of its visible parts comes from that
// read (completeCuts). Every byte of the disk is thus checked against a
// SHA-256 recorded at backup time or known to be zero; a full's
// whole-disk SHA-256 is checked on top when the disk is one full image.
type expected struct {
	capacity uint64
	// chunks cover [0, capacity) in order: data (SHA-256 known, or
	// filled in by completeCuts) and zero.
	chunks []Chunk
	// layerOf is the chain layer each chunk comes from (-1: no chunk
	// covers that range).
	layerOf []int
	cuts    []cutChunk
	// whole is the whole-disk digest to check (blocks_sha256 or sha256;
	// nil when it does not apply: an incremental's content is checked by
	// its chunks alone).
	whole *DiskImage
}

// cutChunk is a data chunk partly hidden by the layers above.
type cutChunk struct {
	layer int
	chunk Chunk // as its layer records it
	parts []int // indices in expected.chunks of its visible parts
}

// expect computes what the chain (top first) restores to.
func expect(layers []layer) *expected {
	type piece struct {
		c     Chunk
		layer int
		whole bool
		src   int // index of the chunk in its layer
	}
	var ps []piece
	var covered extent.List
	for li, l := range layers {
		for ci, c := range l.d.Chunks {
			e := extent.Extent{Offset: c.Offset, Length: c.Length}
			parts := subtract(extent.List{e}, covered[covered.Search(c.Offset):])
			whole := len(parts) == 1 && parts[0] == e
			for _, p := range parts {
				pc := Chunk{Offset: p.Offset, Length: p.Length, Kind: c.Kind}
				if whole {
					pc.SHA256 = c.SHA256
				}
				ps = append(ps, piece{pc, li, whole, ci})
			}
		}
		covered = extent.Normalize(append(slices.Clone(covered), chunkExtents(l.d.Chunks)...))
	}
	slices.SortFunc(ps, func(a, b piece) int { return cmpU64(a.c.Offset, b.c.Offset) })

	top := layers[0].d
	exp := &expected{capacity: top.Capacity}
	if len(layers) == 1 && top.Level == LevelFull {
		exp.whole = top
	}
	add := func(c Chunk, layer int) int {
		n := len(exp.chunks)
		if c.Kind == KindZero && n > 0 {
			last := &exp.chunks[n-1]
			if last.Kind == KindZero && exp.layerOf[n-1] == layer && last.End() == c.Offset {
				last.Length += c.Length
				return n - 1
			}
		}
		exp.chunks = append(exp.chunks, c)
		exp.layerOf = append(exp.layerOf, layer)
		return n
	}
	cutIndex := map[[2]int]int{}
	var pos uint64
	for _, p := range ps {
		if p.c.Offset > pos {
			add(Chunk{Offset: pos, Length: p.c.Offset - pos, Kind: KindZero}, -1)
		}
		i := add(p.c, p.layer)
		if p.c.Kind == KindData && !p.whole {
			k, ok := cutIndex[[2]int{p.layer, p.src}]
			if !ok {
				k = len(exp.cuts)
				cutIndex[[2]int{p.layer, p.src}] = k
				exp.cuts = append(exp.cuts, cutChunk{layer: p.layer, chunk: layers[p.layer].d.Chunks[p.src]})
			}
			exp.cuts[k].parts = append(exp.cuts[k].parts, i)
		}
		pos = p.c.End()
	}
	if pos < exp.capacity {
		add(Chunk{Offset: pos, Length: exp.capacity - pos, Kind: KindZero}, -1)
	}
	return exp
}

// recorded are the chunks that come from manifest chunks (not the ranges
// no chunk covers): a merged image's chunk list.
func (exp *expected) recorded() []Chunk {
	var out []Chunk
	for i, c := range exp.chunks {
		if exp.layerOf[i] >= 0 {
			out = append(out, c)
		}
	}
	return out
}

// MismatchError is data that does not match what the manifests say.
type MismatchError struct {
	Backup   string // the backup whose manifest records the range
	Image    string // the file it is stored in ("" when no chunk covers the range: it must read as zeroes)
	Offset   uint64
	Length   uint64
	Expected string
	Actual   string
	Whole    bool // the whole-disk digest
}

func (e *MismatchError) Error() string {
	if e.Whole {
		return fmt.Sprintf("the whole-disk digest does not match the one recorded by backup %s (image %s): expected %s, actual %s",
			e.Backup, e.Image, e.Expected, e.Actual)
	}
	what := fmt.Sprintf("the data at offset %d (+%d) does not match the SHA-256 recorded by backup %s (image %s): expected %s, actual %s",
		e.Offset, e.Length, e.Backup, e.Image, e.Expected, e.Actual)
	if e.Expected == "0x00" {
		where := "no backup records data there"
		if e.Backup != "" {
			where = fmt.Sprintf("backup %s recorded zeroes there (image %s)", e.Backup, e.Image)
		}
		what = fmt.Sprintf("the data at offset %d is not zero, but %s", e.Offset, where)
	}
	return what
}

// mismatch builds the error for chunk i of exp.
func (exp *expected) mismatch(layers []layer, i int, off, n uint64, expectedSum, actual string) *MismatchError {
	e := &MismatchError{Offset: off, Length: n, Expected: expectedSum, Actual: actual}
	if l := exp.layerOf[i]; l >= 0 {
		e.Backup, e.Image = layers[l].m.ID, layers[l].path
	}
	return e
}

// completeCuts reads each cut chunk from its own layer alone, checks it
// against its recorded SHA-256, and records the SHA-256 of its visible
// parts in exp.
func (r *Repo) completeCuts(ctx context.Context, layers []layer, exp *expected) error {
	byLayer := map[int][]int{}
	for k, c := range exp.cuts {
		byLayer[c.layer] = append(byLayer[c.layer], k)
	}
	for li := range layers {
		ks := byLayer[li]
		if len(ks) == 0 {
			continue
		}
		slices.SortFunc(ks, func(a, b int) int { return cmpU64(exp.cuts[a].chunk.Offset, exp.cuts[b].chunk.Offset) })
		var full, parts []Chunk
		var partIndex []int
		for _, k := range ks {
			full = append(full, exp.cuts[k].chunk)
			for _, i := range exp.cuts[k].parts {
				parts = append(parts, Chunk{Offset: exp.chunks[i].Offset, Length: exp.chunks[i].Length, Kind: KindData})
				partIndex = append(partIndex, i)
			}
		}
		slices.SortFunc(parts, func(a, b Chunk) int { return cmpU64(a.Offset, b.Offset) })
		slices.SortFunc(partIndex, func(a, b int) int { return cmpU64(exp.chunks[a].Offset, exp.chunks[b].Offset) })
		cuts := chunkCuts(append(slices.Clone(full), parts...))
		slices.Sort(cuts)
		cuts = slices.Compact(cuts)
		var segs []segment
		for _, c := range full {
			segs = cut(segs, c.Offset, c.Length, true, cuts)
		}
		segsParts := annotate(slices.Clone(segs), parts)
		segs = annotate(segs, full)
		var bad *MismatchError
		sinkFull := newHashSink(full, nil, r.digests)
		sinkFull.onChunk = func(i int, sum string) {
			if c := full[i]; sum != c.SHA256 && bad == nil {
				bad = &MismatchError{Backup: layers[li].m.ID, Image: layers[li].path, Offset: c.Offset, Length: c.Length, Expected: c.SHA256, Actual: sum}
			}
		}
		sinkParts := newHashSink(parts, nil, r.digests)
		sinkParts.onChunk = func(i int, sum string) { exp.chunks[partIndex[i]].SHA256 = sum }
		ir, err := r.openChain(ctx, layers[li:li+1], true)
		if err != nil {
			return err
		}
		n := 0
		err = stream(ctx, ir, segs, r.digests, nil, func(s segment, data []byte, sum string) error {
			sinkFull.feed(s, data, sum)
			sinkParts.feed(segsParts[n], data, "")
			n++
			if bad != nil {
				return bad
			}
			return nil
		})
		if cerr := ir.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// checkStream reads [0, capacity) from ir in order — the data ranges of
// entries, zeroes elsewhere — and checks it against exp. write, when set,
// gets every data range read, from the reading goroutines (its worker
// argument tells which, for per-connection outputs). The whole-disk
// digest the full records is checked when that applies; with blocks, the
// disk digest (blocks_sha256) is computed and returned. A mismatch is a
// *MismatchError; the stream stops at the first.
func (r *Repo) checkStream(ctx context.Context, ir reader, entries []qemu.MapEntry, layers []layer, exp *expected, blocks bool,
	write func(worker int, off uint64, data []byte) error) (string, error) {
	var h diskHasher
	var want string
	if exp.whole != nil {
		h, want = exp.whole.wholeDigest(r.digests)
	}
	if blocks && (h == nil || !h.blocks()) {
		h, want = newBlocksHasher(exp.capacity, r.digests), ""
	}
	segs := digestSegments(entries, exp.capacity, exp.chunks, h)
	sink := newHashSink(exp.chunks, h, r.digests)
	var bad *MismatchError
	sink.onChunk = func(i int, sum string) {
		if c := exp.chunks[i]; sum != c.SHA256 && bad == nil {
			bad = exp.mismatch(layers, i, c.Offset, c.Length, c.SHA256, sum)
		}
	}
	var zeroChunk int
	sink.onNonZero = func(off uint64) {
		if bad == nil {
			bad = exp.mismatch(layers, zeroChunk, off, 1, "0x00", "")
		}
	}
	err := stream(ctx, ir, segs, r.digests, write, func(s segment, data []byte, sum string) error {
		zeroChunk = s.chunk
		sink.feed(s, data, sum)
		if bad != nil {
			return bad
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if h == nil {
		return "", nil
	}
	sum := sink.wholeSum()
	if want != "" && sum != want {
		return "", &MismatchError{Backup: layers[0].m.ID, Image: layers[0].path, Length: exp.capacity, Expected: want, Actual: sum, Whole: true}
	}
	return sum, nil
}
