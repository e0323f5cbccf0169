// Package extent holds byte-range arithmetic shared by the plugin, the
// vSphere (CBT) code and the copier: normalising lists of areas, clipping,
// intersecting and building typed block-status maps.
//
// A List is "normal" when it is sorted by offset, its extents are non-empty
// and no two extents overlap or touch. Normalize produces that form; the
// other functions expect it.
package extent

import (
	"fmt"
	"sort"
)

// Extent is the byte range [Offset, Offset+Length).
type Extent struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
}

// End returns the first byte after the extent.
func (e Extent) End() uint64 { return e.Offset + e.Length }

func (e Extent) String() string { return fmt.Sprintf("%d+%d", e.Offset, e.Length) }

// List is a list of extents, normally in normal form (see package doc).
type List []Extent

// Normalize sorts in, drops empty extents and merges overlapping or
// adjacent ones. It reuses in's storage.
func Normalize(in []Extent) List {
	out := in[:0]
	for _, e := range in {
		if e.Length > 0 {
			out = append(out, e)
		}
	}
	if !sort.SliceIsSorted(out, func(i, j int) bool { return out[i].Offset < out[j].Offset }) {
		sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	}
	merged := out[:0]
	for _, e := range out {
		if n := len(merged); n > 0 && e.Offset <= merged[n-1].End() {
			if e.End() > merged[n-1].End() {
				merged[n-1].Length = e.End() - merged[n-1].Offset
			}
			continue
		}
		merged = append(merged, e)
	}
	return List(merged)
}

// Bytes returns the total length of the list.
func (l List) Bytes() uint64 {
	var n uint64
	for _, e := range l {
		n += e.Length
	}
	return n
}

// Search returns the index of the first extent of l that ends after off
// (len(l) if none). l must be normal.
func (l List) Search(off uint64) int {
	return sort.Search(len(l), func(i int) bool { return l[i].End() > off })
}

// Clip returns the parts of l inside [off, off+length). The result shares
// no storage with l. l must be normal.
func (l List) Clip(off, length uint64) List {
	end := off + length
	var out List
	for i := l.Search(off); i < len(l) && l[i].Offset < end; i++ {
		e := l[i]
		s, t := max(e.Offset, off), min(e.End(), end)
		out = append(out, Extent{s, t - s})
	}
	return out
}

// Intersect returns the ranges covered by both a and b (both normal).
func Intersect(a, b List) List {
	var out List
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		s, t := max(a[i].Offset, b[j].Offset), min(a[i].End(), b[j].End())
		if s < t {
			out = append(out, Extent{s, t - s})
		}
		if a[i].End() < b[j].End() {
			i++
		} else {
			j++
		}
	}
	return out
}

// RoundOut widens every extent of l to multiples of align (a power of two),
// clipped to size, and returns the normalised result in new storage.
func RoundOut(l List, align, size uint64) List {
	out := make([]Extent, 0, len(l))
	for _, e := range l {
		s := e.Offset &^ (align - 1)
		t := min((e.End()+align-1)&^(align-1), size)
		if s < t {
			out = append(out, Extent{s, t - s})
		}
	}
	return Normalize(out)
}
