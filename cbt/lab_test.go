package cbt

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/lab"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"golang.org/x/sys/unix"
)

const block = 64 << 10

func startLab(t testing.TB, opts lab.Options) *lab.Lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := lab.Start(ctx, opts)
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(l.Close)
	return l
}

func labConfig(l *lab.Lab) Config {
	return Config{Server: l.URL().Host, User: lab.User, Password: lab.Password, Thumbprint: l.Thumbprint()}
}

func connect(t testing.TB, l *lab.Lab) *Client {
	t.Helper()
	c, err := Connect(context.Background(), labConfig(l))
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func findVM(t testing.TB, c *Client, spec string) *VM {
	t.Helper()
	vm, err := c.FindVM(context.Background(), spec)
	if err != nil {
		t.Fatalf("FindVM(%q): %v", spec, err)
	}
	return vm
}

// snapshotDisk takes a snapshot and returns it with the disk key's state.
func snapshotDisk(t testing.TB, c *Client, vm *VM, key int32) (string, Disk) {
	t.Helper()
	ctx := context.Background()
	s, err := c.CreateSnapshot(ctx, vm, "sendense-test", "", false, false)
	if err != nil {
		t.Fatal(err)
	}
	disks, err := c.Disks(ctx, vm, s)
	if err != nil {
		t.Fatal(err)
	}
	d, err := SelectDisk(disks, key, "")
	if err != nil {
		t.Fatal(err)
	}
	return s, d
}

func TestConnectTLS(t *testing.T) {
	l := startLab(t, lab.Options{VMs: []lab.VMSpec{}})
	ctx := context.Background()
	good := labConfig(l)

	c, err := Connect(ctx, good)
	if err != nil {
		t.Fatalf("thumbprint: %v", err)
	}
	if !c.IsVC() || c.Host() != l.URL().Host {
		t.Fatalf("IsVC %v Host %s", c.IsVC(), c.Host())
	}
	_ = c.Close(ctx)

	lower := good
	lower.Thumbprint = strings.ToLower(strings.ReplaceAll(good.Thumbprint, ":", ""))
	lower.Server = l.URL().String() // the https URL form
	if c, err := Connect(ctx, lower); err != nil {
		t.Fatalf("thumbprint without colons, URL form: %v", err)
	} else {
		_ = c.Close(ctx)
	}

	wrong := good
	wrong.Thumbprint = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33"
	_, err = Connect(ctx, wrong)
	if !errors.Is(err, ErrThumbprint) || !strings.Contains(err.Error(), wrong.Thumbprint) || !strings.Contains(err.Error(), l.Thumbprint()) {
		t.Fatalf("wrong thumbprint: %v", err)
	}
	wrong.Insecure = true // a pinned thumbprint is checked even then
	if _, err := Connect(ctx, wrong); !errors.Is(err, ErrThumbprint) {
		t.Fatalf("wrong thumbprint with insecure: %v", err)
	}

	none := good
	none.Thumbprint = ""
	_, err = Connect(ctx, none)
	if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), l.Thumbprint()) || !strings.Contains(err.Error(), "insecure") {
		t.Fatalf("unverified server: %v", err)
	}
	none.Insecure = true
	if c, err := Connect(ctx, none); err != nil {
		t.Fatalf("insecure: %v", err)
	} else {
		_ = c.Close(ctx)
	}

	ca := good
	ca.Thumbprint, ca.CAFile = "", l.CAFile()
	if c, err := Connect(ctx, ca); err != nil {
		t.Fatalf("CA file: %v", err)
	} else {
		_ = c.Close(ctx)
	}
	otherCA := startLab(t, lab.Options{VMs: []lab.VMSpec{}})
	ca.CAFile = otherCA.CAFile()
	if _, err := Connect(ctx, ca); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("CA file of another server: %v", err)
	}

	bad := good
	bad.Password = "wrong"
	if _, err := Connect(ctx, bad); !errors.Is(err, ErrLogin) || !strings.Contains(err.Error(), lab.User) {
		t.Fatalf("bad password: %v", err)
	}

	gone := good
	gone.Server = "127.0.0.1:1"
	if _, err := Connect(ctx, gone); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("unreachable: %v", err)
	}
	if _, err := Connect(ctx, Config{Server: l.URL().Host, User: lab.User, Thumbprint: "12:34"}); err == nil || !strings.Contains(err.Error(), "invalid thumbprint") {
		t.Fatalf("malformed thumbprint: %v", err)
	}
}

func TestFindVM(t *testing.T) {
	vms := append(lab.DefaultVMs(), lab.VMSpec{Name: "lab-small", Folder: "prod/db", Dir: "lab-small-2",
		Disks: []lab.DiskSpec{{Capacity: 4 * lab.MiB}}})
	l := startLab(t, lab.Options{VMs: vms})
	c := connect(t, l)
	ctx := context.Background()
	info := l.VMs()

	multi := findVM(t, c, "lab-multi")
	if multi.Moref != info[1].Moref || multi.Path != "/DC0/vm/lab-multi" {
		t.Fatalf("by name: %+v", multi)
	}
	for _, spec := range []string{info[1].Moref, "moref=" + info[1].Moref, "/DC0/vm/lab-multi"} {
		if vm := findVM(t, c, spec); *vm != *multi {
			t.Fatalf("FindVM(%q) = %+v, want %+v", spec, vm, multi)
		}
	}
	if vm := findVM(t, c, "/DC0/vm/prod/db/lab-small"); vm.Moref != info[2].Moref {
		t.Fatalf("by path in a folder: %+v", vm)
	}
	_, err := c.FindVM(ctx, "lab-small")
	if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "/DC0/vm/prod/db/lab-small") || !strings.Contains(err.Error(), info[0].Moref) {
		t.Fatalf("ambiguous name: %v", err)
	}
	for _, spec := range []string{"nope", "vm-99999", "/DC0/vm/nope", ""} {
		if _, err := c.FindVM(ctx, spec); !errors.Is(err, ErrNotFound) {
			t.Errorf("FindVM(%q): %v, want ErrNotFound", spec, err)
		}
	}

	list, err := c.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].Path != "/DC0/vm/lab-multi" || list[2].Path != "/DC0/vm/prod/db/lab-small" {
		t.Fatalf("ListVMs = %+v", list)
	}
	m := list[0]
	if !m.CBT.Enabled || m.PowerState != "poweredOff" || len(m.Disks) != 3 || m.Capacity != (32+16+48)*lab.MiB {
		t.Fatalf("lab-multi: %+v", m)
	}
	if s := list[1]; s.CBT.Enabled || s.PowerState != "poweredOn" || s.Disks[0].Key != 2000 || s.Disks[0].FileName != "[LocalDS_0] lab-small/disk1.vmdk" {
		t.Fatalf("lab-small: %+v", s)
	}
}

func TestDisksAndSnapshots(t *testing.T) {
	l := startLab(t, lab.Options{})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "lab-multi")
	cur, err := c.Disks(ctx, vm, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(cur) != 3 || cur[1].Key != 2001 || cur[1].Capacity != 16*lab.MiB || cur[1].Datastore != "LocalDS_0" ||
		cur[1].UUID == "" || cur[1].ChangeID != "" || cur[1].Label != "Hard disk 2" {
		t.Fatalf("current disks: %+v", cur)
	}
	s, d := snapshotDisk(t, c, vm, 2001)
	want, _ := l.ChangeID(s, 2001)
	if d.ChangeID == "" || d.ChangeID != want || d.UUID != cur[1].UUID || d.FileName != cur[1].FileName {
		t.Fatalf("snapshot disk %+v, want changeId %q", d, want)
	}
	if d2, err := SelectDisk([]Disk{cur[0], d}, 0, "[LocalDS_0] lab-multi/disk2.vmdk"); err != nil || d2.Key != 2001 {
		t.Fatalf("SelectDisk by file: %+v %v", d2, err)
	}
	if _, err := SelectDisk(cur, 2042, ""); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "2002 [LocalDS_0]") {
		t.Fatalf("SelectDisk missing: %v", err)
	}
	if _, err := c.Disks(ctx, findVM(t, c, "lab-small"), s); err == nil || !strings.Contains(err.Error(), "belongs to VM") {
		t.Fatalf("snapshot of another VM: %v", err)
	}
	if _, err := c.Disks(ctx, vm, "snapshot-99999"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown snapshot: %v", err)
	}

	snaps, err := c.Snapshots(ctx, vm)
	if err != nil || len(snaps) != 1 || snaps[0].Moref != s || snaps[0].Name != "sendense-test" || !snaps[0].Current ||
		time.Since(snaps[0].Created) > time.Minute {
		t.Fatalf("Snapshots = %+v, %v", snaps, err)
	}
	frozen, _ := l.SnapshotPath("lab-multi", 2001, s)
	if err := c.RemoveSnapshot(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(frozen); !os.IsNotExist(err) {
		t.Fatalf("frozen file left after RemoveSnapshot: %v", err)
	}
	if snaps, _ := c.Snapshots(ctx, vm); len(snaps) != 0 {
		t.Fatalf("snapshots left: %+v", snaps)
	}
}

func TestEnableCBT(t *testing.T) {
	l := startLab(t, lab.Options{})
	c := connect(t, l)
	ctx := context.Background()
	small := findVM(t, c, "lab-small")

	st, err := c.CBTStatus(ctx, small)
	if err != nil || st.Enabled || !st.Supported || st.Snapshots != 0 || st.PowerState != "poweredOn" {
		t.Fatalf("CBTStatus = %+v, %v", st, err)
	}
	// A snapshot taken before CBT: enabling must say tracking starts later.
	old, _ := c.CreateSnapshot(ctx, small, "pre-cbt", "", false, false)
	res, err := c.EnableCBT(ctx, small)
	if err != nil || res.AlreadyEnabled || !strings.Contains(res.Notice, NoticeTrackingStarts) || !strings.Contains(res.Notice, "1 snapshot(s)") {
		t.Fatalf("EnableCBT = %+v, %v", res, err)
	}
	if res, err := c.EnableCBT(ctx, small); err != nil || !res.AlreadyEnabled || res.Notice != "" {
		t.Fatalf("EnableCBT again = %+v, %v", res, err)
	}
	// The old snapshot has no changeId and cannot be queried.
	disks, _ := c.Disks(ctx, small, old)
	if disks[0].ChangeID != "" {
		t.Fatalf("pre-CBT snapshot has changeId %q", disks[0].ChangeID)
	}
	if _, err := c.ChangedAreas(ctx, small, old, 2000, "*"); err == nil || !strings.Contains(err.Error(), "not active") {
		t.Fatalf("query of the pre-CBT snapshot: %v", err)
	}
	if full, why := NeedFull(nil, disks[0].State(), nil); !full || !strings.Contains(why, "no previous changeId") {
		t.Fatalf("NeedFull = %v %q", full, why)
	}
	s1, d1 := snapshotDisk(t, c, small, 2000)
	if d1.ChangeID == "" {
		t.Fatal("no changeId after enabling CBT")
	}
	if _, err := c.ChangedAreas(ctx, small, s1, 2000, "*"); err != nil {
		t.Fatal(err)
	}

	multi := findVM(t, c, "lab-multi")
	res, err = c.EnableCBT(ctx, multi)
	if err != nil || !res.AlreadyEnabled || res.Notice != "" {
		t.Fatalf("EnableCBT(lab-multi) = %+v, %v", res, err)
	}
	if err := c.DisableCBT(ctx, multi); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.CBTStatus(ctx, multi); st.Enabled {
		t.Fatal("still enabled")
	}
	res, err = c.EnableCBT(ctx, multi)
	if err != nil || res.AlreadyEnabled || !strings.Contains(res.Notice, NoticeTrackingStarts) || strings.Contains(res.Notice, "snapshot(s)") {
		t.Fatalf("EnableCBT(lab-multi) after disable = %+v, %v", res, err)
	}
}

// TestChangedAreas compares the areas with the writes, aligned to the
// tracker's 64 KiB blocks, incl. zero rewrites and trims.
func TestChangedAreas(t *testing.T) {
	l := startLab(t, lab.Options{})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "lab-small")
	if _, err := c.EnableCBT(ctx, vm); err != nil {
		t.Fatal(err)
	}
	s1, d1 := snapshotDisk(t, c, vm, 2000)

	// Writes: unaligned, spanning blocks, a zero rewrite of data, a trim.
	writes := []extent.Extent{{Offset: 100, Length: 10}, {Offset: 3*block - 1, Length: 2}, {Offset: 10 * block, Length: 3 * block}}
	for i, w := range writes {
		if err := l.WriteRandom("lab-small", 2000, w.Offset, w.Length, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WriteZeroes("lab-small", 2000, 20*block, block); err != nil {
		t.Fatal(err)
	}
	if err := l.Trim("lab-small", 2000, 30*block+512, 4096); err != nil {
		t.Fatal(err)
	}
	if err := l.Write("lab-small", 2000, 64*lab.MiB-1, []byte{1}); err != nil { // the last byte
		t.Fatal(err)
	}
	s2, d2 := snapshotDisk(t, c, vm, 2000)

	a, err := c.ChangedAreas(ctx, vm, s2, 2000, d1.ChangeID)
	if err != nil {
		t.Fatal(err)
	}
	want := extent.List{{Offset: 0, Length: block}, {Offset: 2 * block, Length: 2 * block}, {Offset: 10 * block, Length: 3 * block},
		{Offset: 20 * block, Length: block}, {Offset: 30 * block, Length: block}, {Offset: 64*lab.MiB - block, Length: block}}
	if !reflect.DeepEqual(a.List, want) || a.Capacity != 64*lab.MiB || a.Calls != 1 {
		t.Fatalf("ChangedAreas = %v (capacity %d, %d calls), want %v", a.List, a.Capacity, a.Calls, want)
	}
	if full, why := NeedFull(&DiskState{Key: 2000, UUID: d1.UUID, Capacity: d1.Capacity, ChangeID: d1.ChangeID}, d2.State(), nil); full {
		t.Fatalf("NeedFull: %s", why)
	}

	// Nothing changed since s2.
	s3, _ := snapshotDisk(t, c, vm, 2000)
	if a, err := c.ChangedAreas(ctx, vm, s3, 2000, d2.ChangeID); err != nil || len(a.List) != 0 {
		t.Fatalf("no change: %v %v", a.List, err)
	}
	// Older snapshots can still be queried against older changeIds.
	if a2, err := c.ChangedAreas(ctx, vm, s2, 2000, d1.ChangeID); err != nil || !reflect.DeepEqual(a2.List, want) {
		t.Fatalf("query of s2 again: %v %v", a2.List, err)
	}

	// The plugin's one call.
	d, q, err := c.QueryChanges(ctx, Query{VM: "moref=" + vm.Moref, Snapshot: s2, File: "[LocalDS_0] lab-small/disk1.vmdk", ChangeID: d1.ChangeID})
	if err != nil || d.Key != 2000 || !reflect.DeepEqual(q.List, want) {
		t.Fatalf("QueryChanges = %+v %v %v", d, q.List, err)
	}
	if _, _, err := c.QueryChanges(ctx, Query{VM: vm.Moref, ChangeID: "*"}); err == nil {
		t.Fatal("QueryChanges without a snapshot accepted")
	}
	_ = s1
}

// TestChangedAreasAll: "*" gives the allocated areas of the snapshot,
// rounded out to blocks.
func TestChangedAreasAll(t *testing.T) {
	l := startLab(t, lab.Options{})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "lab-multi")
	s, _ := snapshotDisk(t, c, vm, 2002)
	if err := l.WriteRandom("lab-multi", 2002, 47*lab.MiB, lab.MiB, 9); err != nil { // after the snapshot
		t.Fatal(err)
	}
	a, err := c.ChangedAreas(ctx, vm, s, 2002, AllAreas)
	if err != nil {
		t.Fatal(err)
	}
	frozen, _ := l.SnapshotPath("lab-multi", 2002, s)
	want := extent.RoundOut(allocated(t, frozen), block, 48*lab.MiB)
	if !reflect.DeepEqual(a.List, want) || a.List.Bytes() == 0 || a.List.Bytes() >= 48*lab.MiB {
		t.Fatalf("* = %v, want %v", a.List, want)
	}
}

func allocated(t testing.TB, path string) extent.List {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var out []extent.Extent
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		hole, _ := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		out = append(out, extent.Extent{Offset: uint64(data), Length: uint64(hole - data)})
		off = hole
	}
	return extent.Normalize(out)
}

// TestChangedAreasPaging: 5000 scattered 64 KiB writes take more than one
// call with the default 2000 areas per call.
func TestChangedAreasPaging(t *testing.T) {
	l := startLab(t, lab.Options{VMs: []lab.VMSpec{{Name: "big", CBT: true, Disks: []lab.DiskSpec{{Capacity: 1024 * lab.MiB}}}}})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "big")
	_, d1 := snapshotDisk(t, c, vm, 2000)

	nblocks := uint64(1024 * lab.MiB / block)
	r := rand.New(rand.NewPCG(1, 2))
	var writes []extent.Extent
	used := map[uint64]bool{}
	buf := make([]byte, block)
	for len(writes) < 5000 {
		b := r.Uint64N(nblocks/2) * 2 // even blocks only: never adjacent, so 5000 areas
		if used[b] {
			continue
		}
		used[b] = true
		buf[0] = byte(b)
		if err := l.Write("big", 2000, b*block, buf); err != nil {
			t.Fatal(err)
		}
		writes = append(writes, extent.Extent{Offset: b * block, Length: block})
	}
	s2, _ := snapshotDisk(t, c, vm, 2000)
	a, err := c.ChangedAreas(ctx, vm, s2, 2000, d1.ChangeID)
	if err != nil {
		t.Fatal(err)
	}
	want := extent.Normalize(writes)
	if len(want) != 5000 || !reflect.DeepEqual(a.List, want) {
		t.Fatalf("got %d areas, want %d", len(a.List), len(want))
	}
	if a.Calls < 3 {
		t.Fatalf("%d calls for 5000 areas with %d per call", a.Calls, l.PageLimit())
	}
}

// TestChangedAreasWindows: a server answering in 1 MiB windows, most of
// them empty: an empty window is not the end.
func TestChangedAreasWindows(t *testing.T) {
	l := startLab(t, lab.Options{MaxWindow: lab.MiB})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "lab-multi")
	_, d1 := snapshotDisk(t, c, vm, 2000)
	if err := l.WriteRandom("lab-multi", 2000, 31*lab.MiB+5, 10, 1); err != nil {
		t.Fatal(err)
	}
	s2, _ := snapshotDisk(t, c, vm, 2000)
	a, err := c.ChangedAreas(ctx, vm, s2, 2000, d1.ChangeID)
	if err != nil {
		t.Fatal(err)
	}
	if want := (extent.List{{Offset: 31 * lab.MiB, Length: block}}); !reflect.DeepEqual(a.List, want) || a.Calls != 32 {
		t.Fatalf("areas %v in %d calls, want %v in 32", a.List, a.Calls, want)
	}
}

// TestInvalidChangeIDs: a changeId from before a reset, and one with a
// wrong UUID, fail clearly; NeedFull says why the next backup is full.
func TestInvalidChangeIDs(t *testing.T) {
	l := startLab(t, lab.Options{})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "lab-multi")
	_, d1 := snapshotDisk(t, c, vm, 2000)
	_ = l.WriteRandom("lab-multi", 2000, 0, 10, 1)
	s2, d2 := snapshotDisk(t, c, vm, 2000)

	wrong := "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1"
	_, err := c.ChangedAreas(ctx, vm, s2, 2000, wrong)
	if err == nil || !strings.Contains(err.Error(), "not valid for disk 2000") || !strings.Contains(err.Error(), "full backup") {
		t.Fatalf("wrong UUID: %v", err)
	}
	if _, err := c.ChangedAreas(ctx, vm, s2, 2000, "garbage"); err == nil || !strings.Contains(err.Error(), "changeId") {
		t.Fatalf("malformed changeId: %v", err)
	}

	notice, err := c.ResetCBT(ctx, vm)
	if err != nil || !strings.Contains(notice, NoticeTrackingStarts) {
		t.Fatalf("ResetCBT = %q, %v", notice, err)
	}
	if snaps, _ := c.Snapshots(ctx, vm); len(snaps) != 2 {
		t.Fatalf("ResetCBT left snapshots: %+v", snaps)
	}
	s3, d3 := snapshotDisk(t, c, vm, 2000)
	_, err = c.ChangedAreas(ctx, vm, s3, 2000, d1.ChangeID)
	if err == nil || !strings.Contains(err.Error(), "reset or enabled again") {
		t.Fatalf("changeId from before the reset: %v", err)
	}
	if _, err := c.ChangedAreas(ctx, vm, s2, 2000, d1.ChangeID); err == nil || !strings.Contains(err.Error(), "reset or disabled after snapshot") {
		t.Fatalf("snapshot from before the reset: %v", err)
	}
	full, why := NeedFull(&DiskState{Key: 2000, UUID: d2.UUID, Capacity: d2.Capacity, ChangeID: d2.ChangeID}, d3.State(), nil)
	if !full || !strings.Contains(why, "CBT was reset") {
		t.Fatalf("NeedFull after reset = %v %q", full, why)
	}
	full, why = NeedFull(&DiskState{Key: 2000, UUID: d2.UUID, Capacity: d2.Capacity, ChangeID: d2.ChangeID}, d2.State(), err)
	if !full || !strings.Contains(why, "QueryChangedDiskAreas failed") {
		t.Fatalf("NeedFull after a query fault = %v %q", full, why)
	}
}

// TestStartOffsetPastEnd is what the loop must never send: the lab answers
// InvalidArgument like vSphere.
func TestStartOffsetPastEnd(t *testing.T) {
	l := startLab(t, lab.Options{})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "lab-multi")
	s, d := snapshotDisk(t, c, vm, 2001)
	snap := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s}
	for _, off := range []int64{int64(d.Capacity), int64(d.Capacity) + 1} {
		req := types.QueryChangedDiskAreas{This: vm.Reference(), Snapshot: &snap, DeviceKey: 2001, StartOffset: off, ChangeId: "*"}
		_, err := methods.QueryChangedDiskAreas(ctx, c.Vim25(), &req)
		if err == nil || !soap.IsSoapFault(err) {
			t.Fatalf("startOffset %d: %v", off, err)
		}
		if _, ok := soap.ToSoapFault(err).VimFault().(types.InvalidArgument); !ok {
			t.Fatalf("startOffset %d: fault %T, want InvalidArgument", off, soap.ToSoapFault(err).VimFault())
		}
	}
}

// TestRelogin: when the session is terminated, the next call logs in again
// once and succeeds.
func TestRelogin(t *testing.T) {
	l := startLab(t, lab.Options{})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "lab-small")

	us, err := session.NewManager(c.Vim25()).UserSession(ctx)
	if err != nil || us == nil {
		t.Fatalf("UserSession: %v %v", us, err)
	}
	admin := connect(t, l)
	if err := session.NewManager(admin.Vim25()).TerminateSession(ctx, []string{us.Key}); err != nil {
		t.Fatal(err)
	}
	s, err := c.CreateSnapshot(ctx, vm, "after-terminate", "", false, false)
	if err != nil {
		t.Fatalf("call after the session was terminated: %v", err)
	}
	if c.rt.relogin != 1 {
		t.Fatalf("%d logins again, want 1", c.rt.relogin)
	}
	if err := c.RemoveSnapshot(ctx, s); err != nil {
		t.Fatal(err)
	}
	us2, _ := session.NewManager(c.Vim25()).UserSession(ctx)
	if us2 == nil || us2.Key == us.Key {
		t.Fatalf("new session %v", us2)
	}
}

func TestKeepAlive(t *testing.T) {
	l := startLab(t, lab.Options{VMs: []lab.VMSpec{}})
	cfg := labConfig(l)
	cfg.KeepAlive = 100 * time.Millisecond
	c, err := Connect(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.rt.mu.Lock()
	first := c.rt.last
	c.rt.mu.Unlock()
	time.Sleep(400 * time.Millisecond)
	c.rt.mu.Lock()
	last := c.rt.last
	c.rt.mu.Unlock()
	if !last.After(first) {
		t.Fatal("no keep-alive call while idle")
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestInjectedFaults(t *testing.T) {
	l := startLab(t, lab.Options{})
	c := connect(t, l)
	ctx := context.Background()
	vm := findVM(t, c, "lab-multi")
	if err := l.InjectFault("CreateSnapshot", "lab-multi", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx, vm, "x", "", false, false); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("injected CreateSnapshot fault: %v", err)
	}
	s, d := snapshotDisk(t, c, vm, 2000)
	if err := l.InjectFault("QueryChangedDiskAreas", vm.Moref, 1); err != nil {
		t.Fatal(err)
	}
	_, err := c.ChangedAreas(ctx, vm, s, 2000, d.ChangeID)
	if err == nil {
		t.Fatal("no injected query fault")
	}
	if full, why := NeedFull(&DiskState{Key: 2000, UUID: d.UUID, Capacity: d.Capacity, ChangeID: d.ChangeID}, d.State(), err); !full || !strings.Contains(why, "injected") {
		t.Fatalf("NeedFull = %v %q", full, why)
	}
}
