package lab

import (
	"bytes"
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/extent"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

func startLab(t testing.TB, opts Options) *Lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(l.Close)
	return l
}

func login(t testing.TB, l *Lab) *govmomi.Client {
	t.Helper()
	ctx := context.Background()
	u := l.URL()
	u.User = url.UserPassword(User, Password)
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	t.Cleanup(func() { _ = c.Logout(context.Background()) })
	return c
}

func readRange(t testing.TB, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDefaultLab(t *testing.T) {
	l := startLab(t, Options{})
	vms := l.VMs()
	if len(vms) != 2 || vms[0].Name != "lab-small" || vms[1].Name != "lab-multi" {
		t.Fatalf("VMs = %+v", vms)
	}
	if len(vms[0].Disks) != 1 || len(vms[1].Disks) != 3 || vms[1].Disks[2].Key != 2002 {
		t.Fatalf("disks = %+v", vms)
	}
	for _, v := range vms {
		for _, d := range v.Disks {
			st, err := os.Stat(d.Path)
			if err != nil || uint64(st.Size()) != d.Capacity {
				t.Fatalf("%s: %v size %d, want %d", d.Path, err, st.Size(), d.Capacity)
			}
			// FAKEVDDK_ROOT mapping: [ds] a/b.vmdk -> root/ds/a/b-flat.vmdk
			want := filepath.Join(l.DatastoreRoot(), Datastore, strings.TrimPrefix(strings.TrimSuffix(d.FileName, ".vmdk"), "["+Datastore+"] ")+"-flat.vmdk")
			if want != d.Path {
				t.Fatalf("flat path %s, want %s", d.Path, want)
			}
			alloc, err := allocatedAreas(d.Path)
			if err != nil || alloc.Bytes() == 0 || alloc.Bytes() >= d.Capacity {
				t.Fatalf("%s: allocated %d of %d bytes (%v): want data and holes", d.Path, alloc.Bytes(), d.Capacity, err)
			}
		}
	}
	if st, err := os.Stat(l.PasswordFile()); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("password file: %v %v", err, st.Mode())
	}
	if !strings.HasPrefix(l.URL().String(), "https://127.0.0.1:") || strings.Count(l.Thumbprint(), ":") != 19 {
		t.Fatalf("URL %s thumbprint %s", l.URL(), l.Thumbprint())
	}
	dir := l.Dir()
	l.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("lab dir %s left behind: %v", dir, err)
	}
}

func TestInitialDataDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 16*MiB); err != nil {
			t.Fatal(err)
		}
		if err := fillInitialData(p, 16*MiB, 8*MiB, 42); err != nil {
			t.Fatal(err)
		}
	}
	x, _ := os.ReadFile(a)
	y, _ := os.ReadFile(b)
	if !bytes.Equal(x, y) {
		t.Fatal("same seed, different data")
	}
	alloc, _ := allocatedAreas(a)
	if alloc.Bytes() != 8*MiB || alloc[0].Offset != 0 {
		t.Fatalf("allocated %v (%d bytes), want 8 MiB starting at 0", alloc, alloc.Bytes())
	}
}

// TestSnapshotFreeze: a snapshot's frozen file keeps the content of the
// snapshot time; removal (also removeChildren and RemoveAllSnapshots)
// deletes the frozen files.
func TestSnapshotFreeze(t *testing.T) {
	t.Run("copy", func(t *testing.T) { testSnapshotFreeze(t, false) })
	t.Run("links", func(t *testing.T) { testSnapshotFreeze(t, true) })
}

func testSnapshotFreeze(t *testing.T, links bool) {
	l := startLab(t, Options{SnapshotLinks: links})
	ctx := context.Background()
	flat, _ := l.DiskPath("lab-small", 2000)
	before := bytes.Repeat([]byte("A"), 4096)
	after := bytes.Repeat([]byte("B"), 4096)
	if err := l.Write("lab-small", 2000, 40*MiB, before); err != nil {
		t.Fatal(err)
	}
	s1, err := l.CreateSnapshot(ctx, "lab-small", "s1")
	if err != nil {
		t.Fatal(err)
	}
	// With links, taking the snapshot copied nothing: the frozen file is
	// the flat file until the guest writes.
	if sameFile(t, flat, s1.Disks[0].Path) != links {
		t.Fatalf("frozen file is the flat file: %v, want %v", !links, links)
	}
	if err := l.Write("lab-small", 2000, 40*MiB, after); err != nil {
		t.Fatal(err)
	}
	if sameFile(t, flat, s1.Disks[0].Path) {
		t.Fatal("the write did not give the disk a file of its own")
	}
	frozen, err := l.SnapshotPath("lab-small", 2000, s1.Moref)
	if err != nil || frozen != s1.Disks[0].Path || !strings.HasSuffix(frozen, "disk1-"+s1.Moref+"-flat.vmdk") {
		t.Fatalf("SnapshotPath = %s, %v (info %+v)", frozen, err, s1)
	}
	if got := readRange(t, frozen, 40*MiB, 4096); !bytes.Equal(got, before) {
		t.Fatal("frozen file does not hold the content at snapshot time")
	}
	if got := readRange(t, flat, 40*MiB, 4096); !bytes.Equal(got, after) {
		t.Fatal("flat file does not hold the latest write")
	}
	fa, _ := allocatedAreas(frozen)
	if st, _ := os.Stat(frozen); uint64(st.Size()) != 64*MiB || fa.Bytes() > 30*MiB {
		t.Fatalf("frozen file size %d, allocated %d: want the capacity and sparse", st.Size(), fa.Bytes())
	}

	// A chain s1 <- s2 <- s3; remove s2 with its children, then all.
	s2, _ := l.CreateSnapshot(ctx, "lab-small", "s2")
	s3, _ := l.CreateSnapshot(ctx, "lab-small", "s3")
	c := login(t, l)
	req := types.RemoveSnapshot_Task{This: types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s2.Moref}, RemoveChildren: true}
	res, err := methods.RemoveSnapshot_Task(ctx, c.Client, &req)
	if err != nil {
		t.Fatal(err)
	}
	if err := object.NewTask(c.Client, res.Returnval).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []SnapshotInfo{s2, s3} {
		if _, err := os.Stat(s.Disks[0].Path); !os.IsNotExist(err) {
			t.Fatalf("frozen file of %s still there after removeChildren: %v", s.Moref, err)
		}
	}
	if _, err := os.Stat(frozen); err != nil {
		t.Fatalf("frozen file of s1 gone: %v", err)
	}
	// With links, s2 and s3 were links to the flat file: it is still
	// there, and the next write leaves s4's frozen content alone.
	if got := readRange(t, flat, 40*MiB, 4096); !bytes.Equal(got, after) {
		t.Fatal("removing snapshots changed the disk")
	}
	s4, _ := l.CreateSnapshot(ctx, "lab-small", "s4")
	if err := l.Write("lab-small", 2000, 40*MiB, before); err != nil {
		t.Fatal(err)
	}
	if got := readRange(t, s4.Disks[0].Path, 40*MiB, 4096); !bytes.Equal(got, after) {
		t.Fatal("a write changed the frozen content of s4")
	}
	if !links {
		// A copy is isolated even from writes made to the flat file
		// directly (docs/lab.md, LIMITS).
		f, err := os.OpenFile(flat, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteAt(bytes.Repeat([]byte("C"), 4096), 40*MiB)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := readRange(t, s4.Disks[0].Path, 40*MiB, 4096); !bytes.Equal(got, after) {
			t.Fatal("a direct write changed the frozen content of s4")
		}
	}
	vm, _ := l.VM("lab-small")
	task, err := object.NewVirtualMachine(c.Client, types.ManagedObjectReference{Type: "VirtualMachine", Value: vm.Moref}).RemoveAllSnapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{frozen, s4.Disks[0].Path} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("frozen file %s still there after RemoveAllSnapshots: %v", p, err)
		}
	}
	if len(l.t.snaps) != 0 {
		t.Fatalf("tracker still knows snapshots %v", l.t.snaps)
	}
}

// TestChangeIDStamped: snapshot disks carry the changeId, the VM's current
// backing does not, and govmomi's own QueryChangedDiskAreas helper works.
func TestChangeIDStamped(t *testing.T) {
	l := startLab(t, Options{})
	ctx := context.Background()
	c := login(t, l)
	vmi, _ := l.VM("lab-multi") // CBT on from the start
	vmRef := types.ManagedObjectReference{Type: "VirtualMachine", Value: vmi.Moref}
	s1, err := l.CreateSnapshot(ctx, "lab-multi", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WriteRandom("lab-multi", 2001, 3*bs, bs, 1); err != nil {
		t.Fatal(err)
	}
	s2, _ := l.CreateSnapshot(ctx, "lab-multi", "s2")

	pc := property.DefaultCollector(c.Client)
	var snap mo.VirtualMachineSnapshot
	if err := pc.RetrieveOne(ctx, types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s2.Moref}, []string{"config.hardware"}, &snap); err != nil {
		t.Fatal(err)
	}
	var vm mo.VirtualMachine
	if err := pc.RetrieveOne(ctx, vmRef, []string{"config.hardware"}, &vm); err != nil {
		t.Fatal(err)
	}
	n := 0
	var disk1 *types.VirtualDisk
	for _, dev := range snap.Config.Hardware.Device {
		if vd, ok := dev.(*types.VirtualDisk); ok {
			id := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ChangeId
			want, _ := l.ChangeID(s2.Moref, vd.Key)
			if id == "" || id != want {
				t.Fatalf("snapshot disk %d changeId %q, want %q", vd.Key, id, want)
			}
			if vd.Key == 2001 {
				disk1 = vd
			}
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d disks in the snapshot", n)
	}
	for _, dev := range vm.Config.Hardware.Device {
		if vd, ok := dev.(*types.VirtualDisk); ok {
			if id := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ChangeId; id != "" {
				t.Fatalf("VM's current disk %d has changeId %q: the snapshot's hardware aliases the VM's", vd.Key, id)
			}
		}
	}

	// govmomi's helper queries with the base snapshot's changeId.
	base := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s1.Moref}
	cur := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: s2.Moref}
	info, err := object.NewVirtualMachine(c.Client, vmRef).QueryChangedDiskAreas(ctx, &base, &cur, disk1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.ChangedArea) != 1 || info.ChangedArea[0].Start != 3*bs || info.ChangedArea[0].Length != bs {
		t.Fatalf("changed areas %+v", info.ChangedArea)
	}
}

func query(ctx context.Context, c *govmomi.Client, vm, snap string, key int32, start int64, id string) (types.DiskChangeInfo, error) {
	s := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snap}
	req := types.QueryChangedDiskAreas{This: types.ManagedObjectReference{Type: "VirtualMachine", Value: vm}, Snapshot: &s,
		DeviceKey: key, StartOffset: start, ChangeId: id}
	res, err := methods.QueryChangedDiskAreas(ctx, c.Client, &req)
	if err != nil {
		return types.DiskChangeInfo{}, err
	}
	return res.Returnval, nil
}

func TestQueryFaults(t *testing.T) {
	l := startLab(t, Options{})
	ctx := context.Background()
	c := login(t, l)
	vm, _ := l.VM("lab-small")
	s0, _ := l.CreateSnapshot(ctx, "lab-small", "cbt-off")
	if _, err := query(ctx, c, vm.Moref, s0.Moref, 2000, 0, "*"); err == nil || !strings.Contains(err.Error(), "not enabled") {
		t.Fatalf("CBT off: %v", err)
	}
	if err := l.SetCBT(ctx, "lab-small", true); err != nil {
		t.Fatal(err)
	}
	if _, err := query(ctx, c, vm.Moref, s0.Moref, 2000, 0, "*"); err == nil || !strings.Contains(err.Error(), "not active") {
		t.Fatalf("snapshot from before CBT: %v", err)
	}
	s1, _ := l.CreateSnapshot(ctx, "lab-small", "s1")
	if _, err := query(ctx, c, vm.Moref, s1.Moref, 2000, 64*MiB, "*"); err == nil || !strings.Contains(err.Error(), "startOffset") {
		t.Fatalf("startOffset = capacity: %v", err)
	}
	info, err := query(ctx, c, vm.Moref, s1.Moref, 2000, 0, "*")
	if err != nil {
		t.Fatal(err)
	}
	alloc, _ := allocatedAreas(s1.Disks[0].Path)
	if got, want := areasOf(info), extent.RoundOut(alloc, bs, 64*MiB); !reflect.DeepEqual(got, want) || info.Length != 64*MiB {
		t.Fatalf("* = %v (length %d), want %v", got, info.Length, want)
	}
	if err := l.InjectFault("QueryChangedDiskAreas", "lab-small", 2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := query(ctx, c, vm.Moref, s1.Moref, 2000, 0, "*"); err == nil || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("injected fault %d: %v", i, err)
		}
	}
	if _, err := query(ctx, c, vm.Moref, s1.Moref, 2000, 0, "*"); err != nil {
		t.Fatalf("after the injected faults: %v", err)
	}
}

func TestInjectFaultSnapshots(t *testing.T) {
	l := startLab(t, Options{})
	ctx := context.Background()
	if err := l.InjectFault("CreateSnapshot", "lab-multi", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateSnapshot(ctx, "lab-small", "other VM"); err != nil {
		t.Fatalf("fault hit another VM: %v", err)
	}
	if _, err := l.CreateSnapshot(ctx, "lab-multi", "s"); err == nil || !strings.Contains(err.Error(), "injected by the Sendense lab") {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	s, err := l.CreateSnapshot(ctx, "lab-multi", "s")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.InjectFault("RemoveSnapshot_Task", "lab-multi", 1); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveSnapshot(ctx, s.Moref); err == nil {
		t.Fatal("RemoveSnapshot did not fail")
	}
	if err := l.RemoveSnapshot(ctx, s.Moref); err != nil {
		t.Fatal(err)
	}
	if err := l.InjectFault("CreateSnapshot", "no-such-vm", 1); err == nil {
		t.Fatal("fault for an unknown VM accepted")
	}
}

func TestWriteBounds(t *testing.T) {
	l := startLab(t, Options{})
	if err := l.Write("lab-small", 2000, 64*MiB-1, []byte("xy")); err == nil {
		t.Fatal("write past the end accepted")
	}
	if err := l.Write("lab-small", 2009, 0, []byte("x")); err == nil || !strings.Contains(err.Error(), "disks: 2000") {
		t.Fatalf("bad disk key: %v", err)
	}
	if err := l.Write("nope", 2000, 0, []byte("x")); err == nil || !strings.Contains(err.Error(), "lab-small") {
		t.Fatalf("bad VM: %v", err)
	}
	flat, _ := l.DiskPath("lab-small", 2000)
	if err := l.Trim("lab-small", 2000, 0, MiB); err != nil {
		t.Fatal(err)
	}
	if got := readRange(t, flat, 0, MiB); !bytes.Equal(got, make([]byte, MiB)) {
		t.Fatal("trimmed area does not read as zeros")
	}
	if alloc, _ := allocatedAreas(flat); len(alloc) > 0 && alloc[0].Offset < MiB {
		t.Fatalf("trimmed area still allocated: %v", alloc)
	}
}

func TestControlSocket(t *testing.T) {
	l := startLab(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(l.Dir(), "control.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	resp, err := Call(ctx, sock, Request{Op: OpDisks, VM: "lab-multi"})
	if err != nil || strings.Count(resp.Text, "\n") != 2 || !strings.HasPrefix(resp.Text, "2000\t33554432\t/") {
		t.Fatalf("disks: %q %v", resp.Text, err)
	}
	if _, err := Call(ctx, sock, Request{Op: OpCBT, VM: "lab-small", On: true}); err != nil {
		t.Fatal(err)
	}
	resp, err = Call(ctx, sock, Request{Op: OpSnapshot, VM: "lab-small"})
	if err != nil || !strings.HasPrefix(resp.Text, "snapshot-") || !strings.Contains(resp.Text, "\n2000\t52 ") {
		t.Fatalf("snapshot: %q %v", resp.Text, err)
	}
	snap := strings.SplitN(resp.Text, "\n", 2)[0]
	if _, err := Call(ctx, sock, Request{Op: OpWrite, VM: "lab-small", Key: 2000, Offset: bs, Length: 100, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := Call(ctx, sock, Request{Op: OpWrite, VM: "lab-small", Key: 2000, Offset: 9 * bs, Length: 100, Zero: true}); err != nil {
		t.Fatal(err)
	}
	resp, err = Call(ctx, sock, Request{Op: OpSnapshot, VM: "lab-small", Name: "two"})
	if err != nil {
		t.Fatal(err)
	}
	snap2 := strings.SplitN(resp.Text, "\n", 2)[0]
	id1, _ := l.ChangeID(snap, 2000)
	c := login(t, l)
	vm, _ := l.VM("lab-small")
	info, err := query(ctx, c, vm.Moref, snap2, 2000, 0, id1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := areasOf(info), (extent.List{{Offset: bs, Length: bs}, {Offset: 9 * bs, Length: bs}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("areas after control writes %v, want %v", got, want)
	}
	if _, err := Call(ctx, sock, Request{Op: OpFault, VM: "lab-small", Method: "CreateSnapshot", Count: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := Call(ctx, sock, Request{Op: OpSnapshot, VM: "lab-small"}); err == nil {
		t.Fatal("injected fault did not fire")
	}
	if _, err := Call(ctx, sock, Request{Op: OpRemoveSnapshot, Snapshot: snap}); err != nil {
		t.Fatal(err)
	}
	if _, err := Call(ctx, sock, Request{Op: "bogus"}); err == nil || !strings.Contains(err.Error(), "unknown control operation") {
		t.Fatalf("bogus op: %v", err)
	}
	if resp, err := Call(ctx, sock, Request{Op: OpInfo}); err != nil || !strings.Contains(string(resp.Data), `"simulator":true`) {
		t.Fatalf("info: %s %v", resp.Data, err)
	}
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	sa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(sa, sb)
}
