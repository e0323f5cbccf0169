package copier

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/extent"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		typ                     uint32
		incremental, destIsZero bool
		want                    action
	}{
		{0, false, false, actCopy},
		{0, true, false, actCopy},
		{0, false, true, actCopy},
		{1, false, false, actCopy}, // hole-only is real data in a full copy
		{1, false, true, actCopy},
		{1, true, false, actSkip}, // the backing image has it
		{2, false, false, actZero},
		{2, true, false, actZero}, // never skip a zero region in an incremental
		{2, false, true, actSkip},
		{3, false, false, actZero},
		{3, true, false, actZero}, // changed and unallocated: the block may have been cleared
		{3, false, true, actSkip},
		{3, true, true, actZero}, // refused by Check, but still never skipped
		{0x10 | 1, true, false, actSkip},
	} {
		if got := classify(tc.typ, tc.incremental, tc.destIsZero); got != tc.want {
			t.Errorf("classify(%d, incremental=%v, destIsZero=%v) = %v, want %v",
				tc.typ, tc.incremental, tc.destIsZero, got, tc.want)
		}
	}
}

// planAll runs the planner to the end.
func planAll(t *testing.T, p *planner, ext Extenter) (ops []op, skipped, zeroes extent.List, err error) {
	t.Helper()
	p.skipped = func(off, n uint64) { skipped = append(skipped, extent.Extent{Offset: off, Length: n}) }
	p.zeroes = func(off, n uint64) { zeroes = append(zeroes, extent.Extent{Offset: off, Length: n}) }
	for i := 0; i < 10000; i++ {
		o, ok, err := p.next(ext)
		if err != nil || !ok {
			return ops, skipped, zeroes, err
		}
		ops = append(ops, o)
	}
	t.Fatal("planner does not end")
	return
}

func TestPlanner(t *testing.T) {
	const K = 1024
	ex := func(off, n uint64) extent.Extent { return extent.Extent{Offset: off, Length: n} }
	for _, tc := range []struct {
		name                    string
		size                    uint64
		ext                     extent.Map // nil: no block status
		window                  uint64
		skip                    extent.List
		incremental, destIsZero bool
		reqSize, zeroMax        uint64
		want                    []op
		wantSkipped             extent.List
		wantZeroes              extent.List
	}{
		{
			name: "no block status: all data in request-size pieces", size: 10 * K,
			reqSize: 4 * K, zeroMax: 64 * K,
			want: []op{{actCopy, 0, 4 * K}, {actCopy, 4 * K, 4 * K}, {actCopy, 8 * K, 2 * K}},
		},
		{
			name: "full copy: contract table", size: 16 * K,
			ext:     typed(4*K, 0, 4*K, 1, 4*K, 2, 4*K, 3),
			reqSize: 4 * K, zeroMax: 64 * K,
			want:       []op{{actCopy, 0, 4 * K}, {actCopy, 4 * K, 4 * K}, {actZero, 8 * K, 8 * K}},
			wantZeroes: extent.List{ex(8*K, 8*K)},
		},
		{
			name: "incremental: skip hole-only, zero zero extents", size: 16 * K,
			ext:         typed(4*K, 1, 4*K, 0, 4*K, 3, 4*K, 1),
			incremental: true, reqSize: 4 * K, zeroMax: 64 * K,
			want:        []op{{actCopy, 4 * K, 4 * K}, {actZero, 8 * K, 4 * K}},
			wantSkipped: extent.List{ex(0, 4*K), ex(12*K, 4*K)},
			wantZeroes:  extent.List{ex(8*K, 4*K)},
		},
		{
			name: "destination is zero: zero extents are skipped", size: 12 * K,
			ext:        typed(4*K, 3, 4*K, 0, 4*K, 2),
			destIsZero: true, reqSize: 4 * K, zeroMax: 64 * K,
			want:        []op{{actCopy, 4 * K, 4 * K}},
			wantSkipped: extent.List{ex(0, 4*K), ex(8*K, 4*K)},
			wantZeroes:  extent.List{ex(0, 4*K), ex(8*K, 4*K)},
		},
		{
			name: "requests are split at request-size boundaries", size: 20 * K,
			ext:     typed(1*K, 3, 11*K, 0, 8*K, 3),
			reqSize: 4 * K, zeroMax: 8 * K,
			want: []op{
				{actZero, 0, 1 * K},
				{actCopy, 1 * K, 3 * K}, {actCopy, 4 * K, 4 * K}, {actCopy, 8 * K, 4 * K},
				{actZero, 12 * K, 4 * K}, {actZero, 16 * K, 4 * K},
			},
			wantZeroes: extent.List{ex(0, 1*K), ex(12*K, 4*K), ex(16*K, 4*K)},
		},
		{
			name: "small block-status windows", size: 16 * K, window: 3 * K,
			ext:         typed(6*K, 0, 6*K, 1, 4*K, 3),
			incremental: true, reqSize: 8 * K, zeroMax: 64 * K,
			want:        []op{{actCopy, 0, 6 * K}, {actZero, 12 * K, 4 * K}},
			wantSkipped: extent.List{ex(6*K, 6*K)},
			wantZeroes:  extent.List{ex(12*K, 4*K)},
		},
		{
			name: "resume: Skip ranges are not planned", size: 16 * K,
			ext:     typed(16*K, 0),
			skip:    extent.List{ex(0, 4*K), ex(6*K, 2*K), ex(12*K, 8*K)},
			reqSize: 4 * K, zeroMax: 64 * K,
			want: []op{{actCopy, 4 * K, 2 * K}, {actCopy, 8 * K, 4 * K}},
		},
		{
			name: "extents past the end are clipped", size: 6 * K,
			ext:     typed(4*K, 0, 8*K, 3),
			reqSize: 4 * K, zeroMax: 64 * K,
			want:       []op{{actCopy, 0, 4 * K}, {actZero, 4 * K, 2 * K}},
			wantZeroes: extent.List{ex(4*K, 2*K)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ext Extenter
			if tc.ext != nil {
				ext = &memSource{data: make([]byte, tc.size), ext: tc.ext, window: tc.window}
			}
			p := newPlanner(workList(tc.size, tc.skip), tc.reqSize, tc.zeroMax, tc.incremental, tc.destIsZero)
			ops, skipped, zeroes, err := planAll(t, p, ext)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ops, tc.want) {
				t.Errorf("ops = %v\nwant  %v", ops, tc.want)
			}
			if !reflect.DeepEqual(extent.Normalize(skipped), extent.Normalize(tc.wantSkipped)) {
				t.Errorf("skipped = %v, want %v", skipped, tc.wantSkipped)
			}
			if !reflect.DeepEqual(extent.Normalize(zeroes), extent.Normalize(tc.wantZeroes)) {
				t.Errorf("zeroes = %v, want %v", zeroes, tc.wantZeroes)
			}
			// Everything is planned exactly once.
			var all extent.List
			for _, o := range ops {
				all = append(all, extent.Extent{Offset: o.off, Length: o.n})
			}
			all = append(all, skipped...)
			all = append(all, extent.Normalize(append(extent.List(nil), tc.skip...)).Clip(0, tc.size)...)
			if got := extent.Normalize(all); len(got) != 1 || got[0] != ex(0, tc.size) {
				if tc.size > 0 {
					t.Errorf("planned %v, want all of 0+%d", got, tc.size)
				}
			}
		})
	}
}

// badExtents returns what a broken server might send.
type badExtents struct{ m extent.Map }

func (b badExtents) CanExtents() bool                          { return true }
func (b badExtents) Extents(off, n uint64) (extent.Map, error) { return b.m, nil }

func TestPlannerBadBlockStatus(t *testing.T) {
	ty := func(off, n uint64, typ uint32) extent.Typed { return extent.Typed{Offset: off, Length: n, Type: typ} }
	for _, tc := range []struct {
		name string
		m    extent.Map
		want string
	}{
		{"empty", nil, "described nothing"},
		{"starts late", extent.Map{ty(512, 512, 0)}, "first extent starts at 512"},
		{"gap", extent.Map{ty(0, 512, 0), ty(1024, 512, 0)}, "not contiguous"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlanner(workList(4096, nil), 1024, 4096, false, false)
			_, _, _, err := planAll(t, p, badExtents{tc.m})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestWorkList(t *testing.T) {
	ex := func(off, n uint64) extent.Extent { return extent.Extent{Offset: off, Length: n} }
	got := workList(100, extent.List{ex(90, 20), ex(0, 10), ex(20, 5)})
	want := extent.List{ex(10, 10), ex(25, 65)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("workList = %v, want %v", got, want)
	}
	if got := workList(100, nil); !reflect.DeepEqual(got, extent.List{ex(0, 100)}) {
		t.Fatalf("workList(nil) = %v", got)
	}
}
