package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/lab"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	blk = 64 * kib // the lab's CBT block size
)

// cbtLab is a lab with one VM "cbt-vm" whose disk (key 2000) starts empty,
// with CBT on, and a vSphere client logged in to it.
type cbtLab struct {
	*lab.Lab
	client *cbt.Client
	vm     *cbt.VM
	env    []string
}

func startCBTLab(t *testing.T, capacity uint64) *cbtLab {
	t.Helper()
	ctx := context.Background()
	l, err := lab.Start(ctx, lab.Options{VMs: []lab.VMSpec{{
		Name: "cbt-vm", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: capacity}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	c, err := cbt.Connect(ctx, cbt.Config{Server: l.URL().String(), User: lab.User, Password: lab.Password, Thumbprint: l.Thumbprint()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	vm, err := c.FindVM(ctx, "cbt-vm")
	if err != nil {
		t.Fatal(err)
	}
	return &cbtLab{Lab: l, client: c, vm: vm, env: []string{"FAKEVDDK_ROOT=" + l.DatastoreRoot()}}
}

// snapshot takes a snapshot and returns its moref and disk 2000's changeId.
func (l *cbtLab) snapshot(t *testing.T) (string, string) {
	t.Helper()
	ctx := context.Background()
	s, err := l.client.CreateSnapshot(ctx, l.vm, fmt.Sprintf("test-%d", len(t.Name())), "", false, false)
	if err != nil {
		t.Fatal(err)
	}
	disks, err := l.client.Disks(ctx, l.vm, s)
	if err != nil {
		t.Fatal(err)
	}
	return s, disks[0].ChangeID
}

func (l *cbtLab) removeSnapshot(t *testing.T, s string) {
	t.Helper()
	if err := l.client.RemoveSnapshot(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// pluginArgs are the plugin parameters reading disk 2000 of snapshot s.
func (l *cbtLab) pluginArgs(s string, extra ...string) []string {
	u := l.URL()
	return append([]string{
		"server=" + u.Hostname(), "port=" + u.Port(), "user=" + lab.User, "password=+" + l.PasswordFile(),
		"thumbprint=" + l.Thumbprint(), "vm=moref=" + l.vm.Moref, "snapshot=" + s,
		"file=[" + lab.Datastore + "] cbt-vm/disk1.vmdk",
	}, extra...)
}

func (l *cbtLab) write(t *testing.T, off, length uint64, seed uint64) {
	t.Helper()
	if err := l.WriteRandom("cbt-vm", 2000, off, length, seed); err != nil {
		t.Fatal(err)
	}
}

// TestIncrementalMapMatchesWrites: the plugin's map of an incremental
// export is exactly the blocks written since the previous changeId:
// changed+allocated = data, changed+unallocated = hole+zero, unchanged =
// hole; and the export reads as the snapshot whatever the changeid.
func TestIncrementalMapMatchesWrites(t *testing.T) {
	l := startCBTLab(t, 16*mib)
	// Before the baseline: data that stays unchanged, and data later trimmed.
	l.write(t, 4*mib, 128*kib, 1)
	l.write(t, 6*mib, blk, 2)
	s1, c1 := l.snapshot(t)
	l.removeSnapshot(t, s1)
	if c1 == "" {
		t.Fatal("the baseline snapshot has no changeId")
	}

	l.write(t, 0, blk, 3)                                             // changed, allocated
	l.write(t, 1*mib+10, 100, 4)                                      // a 100-byte write marks its whole block
	l.write(t, 3*mib-blk, 2*blk, 5)                                   // two blocks
	if err := l.WriteZeroes("cbt-vm", 2000, 4*mib, blk); err != nil { // rewritten with zeros: allocated
		t.Fatal(err)
	}
	if err := l.Trim("cbt-vm", 2000, 6*mib, blk); err != nil { // cleared: unallocated
		t.Fatal(err)
	}
	l.write(t, 16*mib-blk, blk, 6) // the last block
	s2, c2 := l.snapshot(t)
	if c2 == c1 {
		t.Fatalf("changeId did not advance: %s", c2)
	}
	// Writes after the snapshot are not in it.
	l.write(t, 8*mib, blk, 7)

	got := nbdMap(t, l.env, l.pluginArgs(s2, "changeid="+c1)...)
	const data, hole, zero = 0, 1, 3
	want := mergeMap([]mapEntry{
		{0, blk, data},
		{blk, 1*mib - blk, hole},
		{1 * mib, blk, data},
		{1*mib + blk, 2*mib - 2*blk, hole},
		{3*mib - blk, 2 * blk, data},
		{3*mib + blk, 1*mib - blk, hole},
		{4 * mib, blk, data}, // zeros written: allocated, reads as zeros
		{4*mib + blk, 2*mib - blk, hole},
		{6 * mib, blk, zero}, // trimmed: unallocated
		{6*mib + blk, 10*mib - 2*blk, hole},
		{16*mib - blk, blk, data},
	})
	if !equalMaps(got, want) {
		t.Fatalf("map of the incremental export:\n got %v\nwant %v", got, want)
	}

	// The export reads as the snapshot, whatever changeid says.
	frozen, err := l.SnapshotPath("cbt-vm", 2000, s2)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out.raw")
	for _, extra := range [][]string{{"changeid=" + c1}, {"changeid=*"}, nil} {
		os.Remove(out)
		nbdkitRun(t, l.env, `nbdcopy "$uri" `+out, l.pluginArgs(s2, extra...)...)
		run(t, "cmp", frozen, out)
	}
	// The zeroed block reads as zeros.
	b, _ := os.ReadFile(out)
	for _, c := range b[4*mib : 4*mib+blk] {
		if c != 0 {
			t.Fatal("the block rewritten with zeros does not read as zeros")
		}
	}

	// changeid=* reports what is in use: the snapshot's allocated blocks.
	star := nbdMap(t, l.env, l.pluginArgs(s2, "changeid=*")...)
	for _, e := range star {
		if e.Type == zero {
			t.Errorf("changeid=* reported an in-use unallocated area %v", e)
		}
	}
	if star[0] != (mapEntry{0, blk, data}) {
		t.Errorf("changeid=* map starts with %v", star[0])
	}
}

// TestPagingPastTheLimit: 5000 scattered 64 KiB writes need several
// QueryChangedDiskAreas calls (2000 areas per answer): none is lost.
func TestPagingPastTheLimit(t *testing.T) {
	l := startCBTLab(t, 5000*2*blk+mib)
	s1, c1 := l.snapshot(t)
	l.removeSnapshot(t, s1)
	for i := uint64(0); i < 5000; i++ {
		l.write(t, i*2*blk, blk, i)
	}
	s2, _ := l.snapshot(t)
	areas, err := l.client.ChangedAreas(context.Background(), l.vm, s2, 2000, c1)
	if err != nil {
		t.Fatal(err)
	}
	if areas.Calls < 3 || len(areas.List) != 5000 {
		t.Fatalf("ChangedAreas: %d areas in %d calls, want 5000 in ≥ 3", len(areas.List), areas.Calls)
	}
	m := nbdMap(t, l.env, l.pluginArgs(s2, "changeid="+c1)...)
	var dataBlocks int
	for _, e := range m {
		if e.Type == 0 {
			if e.Length != blk || e.Offset%(2*blk) != 0 {
				t.Fatalf("unexpected data extent %v", e)
			}
			dataBlocks++
		}
	}
	if dataBlocks != 5000 {
		t.Fatalf("the map has %d data extents, want 5000", dataBlocks)
	}
}

// TestBadChangeID: a changeId from before a CBT reset, or with another
// UUID, fails the NBD open clearly; never a silent full or empty map.
func TestBadChangeID(t *testing.T) {
	l := startCBTLab(t, 4*mib)
	s1, c1 := l.snapshot(t)
	l.removeSnapshot(t, s1)
	l.write(t, 0, blk, 1)
	s2, _ := l.snapshot(t)

	id, err := cbt.ParseChangeID(c1)
	if err != nil {
		t.Fatal(err)
	}
	wrongUUID := strings.Replace(id.UUID, id.UUID[:2], "ff", 1)
	if wrongUUID == id.UUID {
		wrongUUID = strings.Replace(id.UUID, id.UUID[:2], "00", 1)
	}
	for _, tc := range []struct{ changeID, want string }{
		{fmt.Sprintf("%s/%d", wrongUUID, id.Seq), "changeid="},
		{"not-a-change-id", "changeid=not-a-change-id"},
	} {
		_, err := nbdkitTry(l.env, `nbdinfo --map "$uri"`, l.pluginArgs(s2, "changeid="+tc.changeID)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("changeid=%s: %v, want an error containing %q", tc.changeID, err, tc.want)
		}
	}

	// Reset CBT: the old changeId is refused.
	l.removeSnapshot(t, s2)
	if _, err := l.client.ResetCBT(context.Background(), l.vm); err != nil {
		t.Fatal(err)
	}
	s3, _ := l.snapshot(t)
	_, err = nbdkitTry(l.env, `nbdinfo --map "$uri"`, l.pluginArgs(s3, "changeid="+c1)...)
	if err == nil || !strings.Contains(err.Error(), "changeid="+c1) {
		t.Fatalf("a changeId from before the reset: %v", err)
	}
	t.Logf("reset changeId error: %v", err)
}
