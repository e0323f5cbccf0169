package lab

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/extent"
	"github.com/vmware/govmomi/vim25/types"
)

const bs = 64 << 10

func areasOf(info types.DiskChangeInfo) extent.List {
	var l extent.List
	for _, a := range info.ChangedArea {
		l = append(l, extent.Extent{Offset: uint64(a.Start), Length: uint64(a.Length)})
	}
	return l
}

func TestPage(t *testing.T) {
	areas := extent.List{{Offset: 0, Length: 10}, {Offset: 20, Length: 10}, {Offset: 40, Length: 10}, {Offset: 60, Length: 10}}
	for _, tc := range []struct {
		name       string
		start      uint64
		lim        queryLimits
		wantLen    int64
		wantAreas  extent.List
		wantOffset int64
	}{
		{"all", 0, queryLimits{pageLimit: 10}, 100, areas, 0},
		{"paged", 0, queryLimits{pageLimit: 2}, 30, extent.List{{Offset: 0, Length: 10}, {Offset: 20, Length: 10}}, 0},
		{"last page", 30, queryLimits{pageLimit: 2}, 70, extent.List{{Offset: 40, Length: 10}, {Offset: 60, Length: 10}}, 30},
		{"start inside area", 25, queryLimits{pageLimit: 1}, 5, extent.List{{Offset: 25, Length: 5}}, 25},
		{"window", 0, queryLimits{pageLimit: 10, maxWindow: 35}, 35, extent.List{{Offset: 0, Length: 10}, {Offset: 20, Length: 10}}, 0},
		{"empty window", 72, queryLimits{pageLimit: 10, maxWindow: 10}, 10, nil, 72},
		{"window clips area", 0, queryLimits{pageLimit: 10, maxWindow: 45}, 45, extent.List{{Offset: 0, Length: 10}, {Offset: 20, Length: 10}, {Offset: 40, Length: 5}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := page(areas, tc.start, 100, tc.lim)
			if info.StartOffset != tc.wantOffset || info.Length != tc.wantLen || !reflect.DeepEqual(areasOf(info), tc.wantAreas) {
				t.Fatalf("page = start %d len %d areas %v, want start %d len %d areas %v",
					info.StartOffset, info.Length, areasOf(info), tc.wantOffset, tc.wantLen, tc.wantAreas)
			}
		})
	}
}

func TestSplitChangeID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		uuid string
		seq  uint64
		bad  bool
	}{
		{"52 aa bb-cc dd/7", "52 aa bb-cc dd", 7, false},
		{" x/0 ", "x", 0, false},
		{"nope", "", 0, true},
		{"/3", "", 0, true},
		{"u/-1", "", 0, true},
		{"u/x", "", 0, true},
	} {
		uuid, seq, err := splitChangeID(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && (uuid != tc.uuid || seq != tc.seq)) {
			t.Errorf("splitChangeID(%q) = %q, %d, %v", tc.in, uuid, seq, err)
		}
	}
}

func TestEpochUUID(t *testing.T) {
	u := newEpochUUID()
	if len(u) != 47 || !strings.HasPrefix(u, "52 ") || u[23] != '-' {
		t.Fatalf("newEpochUUID() = %q", u)
	}
	if u == newEpochUUID() {
		t.Fatal("two epochs have the same UUID")
	}
}

// TestTrackerSemantics drives the tracker directly: epochs, sequences,
// activation at the first snapshot, history across several snapshots.
func TestTrackerSemantics(t *testing.T) {
	tr := newTracker(bs)
	d := &diskTrack{key: 2000, fileName: "[ds] v/disk1.vmdk", capacity: 100 * bs}
	v := &vmTrack{name: "v", disks: []*diskTrack{d}}
	tr.vms["vm-1"] = v
	noAlloc := func(string) (extent.List, error) { return nil, nil }
	lim := queryLimits{pageLimit: 1000}
	q := func(snap, id string) (extent.List, *qfault) {
		info, f := tr.query(v, snap, 2000, 0, id, lim, noAlloc)
		return areasOf(info), f
	}

	tr.noteWrite(d, 0, 1) // CBT off: not tracked
	s0 := tr.snapshot(v, "s0", nil)
	if s0.disks[2000].changeID() != "" {
		t.Fatalf("snapshot with CBT off has changeId %q", s0.disks[2000].changeID())
	}
	if _, f := q("s0", "*"); f == nil || !strings.Contains(f.msg, "not enabled") {
		t.Fatalf("query with CBT off: %v", f)
	}

	tr.setEnabled(v, true)
	tr.noteWrite(d, 5*bs, 1) // enabled but not active until the next snapshot
	s1 := tr.snapshot(v, "s1", nil)
	id1 := s1.disks[2000].changeID()
	if !strings.HasSuffix(id1, "/1") {
		t.Fatalf("first changeId %q", id1)
	}
	if _, f := q("s0", "*"); f == nil || !strings.Contains(f.msg, "not active") {
		t.Fatalf("query of a snapshot taken before tracking: %v", f)
	}

	tr.noteWrite(d, 10*bs+5, 2*bs) // blocks 10..12
	s2 := tr.snapshot(v, "s2", nil)
	id2 := s2.disks[2000].changeID()
	tr.noteWrite(d, 11*bs, 1) // block 11 again
	tr.noteWrite(d, 50*bs, bs)
	s3 := tr.snapshot(v, "s3", nil)
	_ = s3

	for _, tc := range []struct {
		snap, id string
		want     extent.List
	}{
		{"s2", id1, extent.List{{Offset: 10 * bs, Length: 3 * bs}}},
		{"s3", id1, extent.List{{Offset: 10 * bs, Length: 3 * bs}, {Offset: 50 * bs, Length: bs}}},
		{"s3", id2, extent.List{{Offset: 11 * bs, Length: bs}, {Offset: 50 * bs, Length: bs}}},
		{"s2", id2, nil},
	} {
		got, f := q(tc.snap, tc.id)
		if f != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("query(%s, %s) = %v, %v; want %v", tc.snap, tc.id, got, f, tc.want)
		}
	}
	if _, f := q("s1", id2); f == nil || !strings.Contains(f.msg, "newer than snapshot") {
		t.Errorf("changeId newer than the snapshot: %v", f)
	}
	if _, f := q("s2", "52 00/1"); f == nil || !strings.Contains(f.msg, "tracking epoch") {
		t.Errorf("wrong UUID: %v", f)
	}
	if _, f := q("s2", "garbage"); f == nil || f.fault.(*types.InvalidArgument).InvalidProperty != "changeId" {
		t.Errorf("malformed changeId: %v", f)
	}
	if _, f := tr.query(v, "s2", 2000, 100*bs, id1, lim, noAlloc); f == nil || f.fault.(*types.InvalidArgument).InvalidProperty != "startOffset" {
		t.Errorf("startOffset = capacity: %v", f)
	}
	if _, f := tr.query(v, "s2", 2001, 0, id1, lim, noAlloc); f == nil || f.fault.(*types.InvalidArgument).InvalidProperty != "deviceKey" {
		t.Errorf("bad device key: %v", f)
	}

	// Reset: disable and enable. Old snapshots and changeIds are invalid.
	tr.setEnabled(v, false)
	tr.setEnabled(v, true)
	s4 := tr.snapshot(v, "s4", nil)
	if _, f := q("s4", id2); f == nil || !strings.Contains(f.msg, "tracking epoch") {
		t.Errorf("changeId of the old epoch: %v", f)
	}
	if _, f := q("s3", id2); f == nil || !strings.Contains(f.msg, "reset or disabled") {
		t.Errorf("snapshot of the old epoch: %v", f)
	}
	if got, f := q("s4", s4.disks[2000].changeID()); f != nil || len(got) != 0 {
		t.Errorf("query of the snapshot's own changeId = %v, %v", got, f)
	}
}
