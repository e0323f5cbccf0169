package copier

import (
	"fmt"
	"sync"

	"github.com/sendense/capture/internal/extent"
)

// action is what the copier does with a range of the source.
type action uint8

const (
	actCopy     action = iota // read; write the data (or zeroes if it is all zero)
	actZero                   // write zeroes
	actSkip                   // leave the destination alone
	actSkipZero               // leave the destination alone; the content is zero
)

func (a action) String() string {
	return [...]string{"copy", "zero", "skip", "skip-zero"}[a]
}

// classify applies the extents contract (docs/design.md, "Extents") to
// one base:allocation type:
//
//	0 data             copy (all-zero buffers become write-zeroes)
//	2 zero, 3 hole+zero write zeroes; nothing on a zero destination (full copies only)
//	1 hole, not zero   incremental: skip (the backing has it); full: copy, it is real data
//
// An incremental never skips a zero extent and never zeroes a hole-only one.
func classify(typ uint32, incremental, destIsZero bool) action {
	switch {
	case typ&extent.Zero != 0:
		if destIsZero && !incremental {
			return actSkip
		}
		return actZero
	case typ&extent.Hole != 0:
		if incremental {
			return actSkip
		}
		return actCopy
	default:
		return actCopy
	}
}

// op is one request the workers carry out.
type op struct {
	act action // actCopy or actZero
	off uint64
	n   uint64
}

// planner hands out the copy as a stream of ops in offset order, shared by
// all workers. It asks the source for block status lazily, a window at a
// time, on the connection of the worker that needs more work.
type planner struct {
	mu sync.Mutex

	work extent.List // ranges to copy (normal): the source minus Options.Skip
	wi   int         // current range of work
	pos  uint64      // next byte to plan
	cur  extent.Map  // actions (in Type) from pos on, within work[wi]
	ci   int         // extent of cur containing pos

	reqSize, zeroMax, window uint64
	incremental, destIsZero  bool

	// skipped is called for ranges planned as actSkip; zeroes for ranges
	// whose content is known to be zero (actZero and skipped zero extents).
	// Both are called with mu held, in offset order.
	skipped func(off, n uint64)
	zeroes  func(off, n uint64)

	err error
}

func newPlanner(work extent.List, reqSize, zeroMax uint64, incremental, destIsZero bool) *planner {
	return &planner{
		work: work, reqSize: reqSize, zeroMax: zeroMax, window: extentsWindow,
		incremental: incremental, destIsZero: destIsZero,
		skipped: func(off, n uint64) {}, zeroes: func(off, n uint64) {},
	}
}

// next returns the next op, or ok=false when everything is planned. ext is
// the calling worker's block-status connection (nil: all data).
func (p *planner) next(ext Extenter) (o op, ok bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.err == nil {
		if p.wi >= len(p.work) {
			return op{}, false, nil
		}
		w := p.work[p.wi]
		if p.pos < w.Offset {
			p.pos, p.cur, p.ci = w.Offset, nil, 0
		}
		if p.pos >= w.End() {
			p.wi++
			continue
		}
		if p.ci >= len(p.cur) {
			if p.err = p.fill(ext, w.End()); p.err != nil {
				break
			}
		}
		e := p.cur[p.ci]
		end := e.End()
		switch action(e.Type) {
		case actSkip, actSkipZero:
			p.skipped(p.pos, end-p.pos)
			if action(e.Type) == actSkipZero {
				p.zeroes(p.pos, end-p.pos)
			}
			p.advance(end)
			continue
		case actZero:
			end = min(end, alignUp(p.pos+1, p.zeroMax))
			o = op{actZero, p.pos, end - p.pos}
			p.zeroes(o.off, o.n)
		default:
			end = min(end, alignUp(p.pos+1, p.reqSize))
			o = op{actCopy, p.pos, end - p.pos}
		}
		p.advance(end)
		return o, true, nil
	}
	return op{}, false, p.err
}

// advance moves pos to end, stepping to the next extent when it is used up.
func (p *planner) advance(end uint64) {
	p.pos = end
	if end >= p.cur[p.ci].End() {
		p.ci++
	}
}

// fill loads block status for [pos, end) into cur, as actions: neighbours
// with the same action merge (zero and hole+zero are one write-zeroes).
func (p *planner) fill(ext Extenter, end uint64) error {
	p.cur, p.ci = p.cur[:0], 0
	if ext == nil {
		p.cur = p.cur.Append(p.pos, end-p.pos, uint32(actCopy))
		return nil
	}
	m, err := ext.Extents(p.pos, min(end-p.pos, p.window))
	if err != nil {
		return fmt.Errorf("source block status at offset %d: %w", p.pos, err)
	}
	for _, e := range m {
		s, t := max(e.Offset, p.pos), min(e.End(), end)
		if s >= t {
			continue
		}
		if want := p.pos; len(p.cur) > 0 {
			want = p.cur[len(p.cur)-1].End()
			if s != want {
				return fmt.Errorf("source block status at offset %d: extents are not contiguous at offset %d", p.pos, want)
			}
		} else if s != want {
			return fmt.Errorf("source block status at offset %d: first extent starts at %d", p.pos, e.Offset)
		}
		a := classify(e.Type, p.incremental, p.destIsZero)
		if a == actSkip && e.Type&extent.Zero != 0 {
			a = actSkipZero
		}
		p.cur = p.cur.Append(s, t-s, uint32(a))
	}
	if len(p.cur) == 0 {
		return fmt.Errorf("source block status at offset %d: the source described nothing", p.pos)
	}
	return nil
}

// alignUp rounds x up to a multiple of a (a power of two).
func alignUp(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }

// workList returns [0, size) minus skip.
func workList(size uint64, skip extent.List) extent.List {
	skip = extent.Normalize(append(extent.List(nil), skip...)).Clip(0, size)
	var out extent.List
	pos := uint64(0)
	for _, s := range skip {
		if s.Offset > pos {
			out = append(out, extent.Extent{Offset: pos, Length: s.Offset - pos})
		}
		pos = s.End()
	}
	if pos < size {
		out = append(out, extent.Extent{Offset: pos, Length: size - pos})
	}
	return out
}
