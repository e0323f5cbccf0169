package plugin

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/vddk"
)

// memDisk is an in-memory Disk whose allocation is given explicitly; it
// records the writes and flushes it gets.
type memDisk struct {
	data     []byte
	alloc    extent.List
	closed   bool
	readOnly bool
	writes   []extent.Extent
	flushes  int
}

func (d *memDisk) Size() uint64 { return uint64(len(d.data)) }
func (d *memDisk) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(d.data).ReadAt(p, off)
}
func (d *memDisk) WriteAt(p []byte, off int64) (int, error) {
	if d.readOnly {
		return 0, errors.New("read-only")
	}
	d.writes = append(d.writes, extent.Extent{Offset: uint64(off), Length: uint64(len(p))})
	return copy(d.data[off:], p), nil
}
func (d *memDisk) Flush() error   { d.flushes++; return nil }
func (d *memDisk) ReadOnly() bool { return d.readOnly }
func (d *memDisk) Allocated(off, length uint64) (extent.List, error) {
	return d.alloc.Clip(off, length), nil
}
func (d *memDisk) Close() error { d.closed = true; return nil }

type memBackend struct {
	disk    *memDisk
	creates int
	opens   int
}

func (b *memBackend) Check(*Config) error  { return nil }
func (b *memBackend) Start(*Config) error  { return nil }
func (b *memBackend) Create(*Config) error { b.creates++; return nil }
func (b *memBackend) Open(_ *Config, ro bool) (Disk, error) {
	b.opens++
	b.disk.readOnly = ro
	b.disk.closed = false
	return b.disk, nil
}
func (b *memBackend) Stop() {}

const mib = 1 << 20

func configure(t *testing.T, kv ...string) *Config {
	t.Helper()
	var c Config
	for i := 0; i < len(kv); i += 2 {
		if err := c.Set(kv[i], kv[i+1]); err != nil {
			t.Fatalf("Set(%s, %s): %v", kv[i], kv[i+1], err)
		}
	}
	return &c
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad-areas")
	os.WriteFile(bad, []byte("0 512\n# comment\n\n1024 x\n"), 0o644)
	for _, tc := range []struct {
		kv   []string
		want string
	}{
		{nil, "missing parameter: file"},
		{[]string{"file", "/d.vmdk", "server", "vc", "user", "u", "password", "p"}, "missing parameter: vm"},
		// Any remote parameter asks for a remote connection, as in
		// nbdkit-vddk-plugin; an empty password counts as given.
		{[]string{"file", "/d.vmdk", "thumbprint", "x"}, "remote connection requested (by thumbprint=), missing parameter: server"},
		{[]string{"file", "/d.vmdk", "port", "444"}, "(by port=), missing parameter: server"},
		{[]string{"file", "/d.vmdk", "nfchostport", "902"}, "(by nfchostport=), missing parameter: server"},
		{[]string{"file", "/d.vmdk", "cookie", "c"}, "(by cookie=), missing parameter: server"},
		{[]string{"file", "/d.vmdk", "password", ""}, "(by password=), missing parameter: server"},
		{[]string{"file", "/d.vmdk", "vm", "moref=vm-1", "server", "vc", "user", "u"}, "missing parameter: password"},
		{[]string{"file", "/d.vmdk", "create", "true"}, "needs create-size="},
		{[]string{"file", "[ds] a.vmdk", "server", "vc", "user", "u", "password", "", "vm", "moref=vm-1", "create", "true", "create-size", "1024"}, "can only create local VMDK files"},
		{[]string{"file", "/d.vmdk", "create", "true", "create-size", "1024", "snapshot", "snapshot-1"}, "the export is read-only: snapshot=snapshot-1"},
		{[]string{"file", dir, "create", "true", "create-size", "1024"}, "already exists"},
		{[]string{"file", "/d", "changed-areas", bad, "single-link", "true"}, "single-link=true cannot serve an incremental export"},
		{[]string{"file", "[ds] a.vmdk", "server", "vc", "user", "u", "password", "p", "vm", "moref=vm-1", "changeid", "*", "snapshot", "snapshot-1", "thumbprint", "xx"}, "not a SHA-1 thumbprint"},
		{[]string{"file", "[ds] a.vmdk", "server", "vc", "user", "u", "password", "p", "vm", "[ds] vm/vm.vmx?dcPath=DC&dsName=ds", "changeid", "*", "snapshot", "snapshot-1",
			"thumbprint", "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd"}, "needs vm=moref="},
		{[]string{"file", "[ds] a.vmdk", "server", "vc", "user", "u", "password", "p", "vm", "moref=vm-1", "changeid", "*", "snapshot", "snapshot-1",
			"thumbprint", "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd", "cookie", "c"}, "drop cookie="},
		{[]string{"file", "[ds] a/b.vmdk"}, "names a datastore"},
		{[]string{"file", "rel.img"}, "absolute path"},
		{[]string{"file", "/d", "changeid", "52 3c/4"}, "needs a server"},
		{[]string{"file", "/d", "changed-areas", bad}, "line 4: bad length"},
		{[]string{"file", "/d", "changed-areas", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"file", "[ds] a.vmdk", "server", "vc", "user", "u", "password", "p", "vm", "moref=vm-1", "changeid", "*"}, "needs snapshot="},
		{[]string{"file", "[ds] a.vmdk", "server", "vc", "user", "u", "password", "p", "vm", "moref=vm-1", "changeid", "*", "snapshot", "snapshot-1"}, "needs thumbprint="},
	} {
		c := configure(t, tc.kv...)
		err := c.Complete()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Complete(%q) = %v, want an error containing %q", tc.kv, err, tc.want)
		}
	}
}

func TestSetErrors(t *testing.T) {
	for _, tc := range []struct{ key, value, want string }{
		{"nosuch", "1", `unknown parameter "nosuch"`},
		{"port", "70000", "not a TCP port"},
		{"thumbprint", "", "empty value"},
		{"vm", "moref=", "expected vm=moref=vm-42"},
		{"transports", "nbd:carrier-pigeon", `unknown transport mode "carrier-pigeon"`},
		{"compression", "gzip", "not one of"},
		{"disk-key", "-1", "not a device key"},
		{"file", "", "empty value"},
		{"single-link", "maybe", "not a boolean"},
		{"create-size", "1000", "multiple of 512"},
		{"create-size", "0", "greater than zero"},
		{"create-type", "qcow2", `"qcow2" is not one of monolithic-flat, monolithic-sparse, split-flat`},
		{"create-adapter-type", "nvme", "not one of ide, scsi-buslogic, scsi-lsilogic"},
		{"create-hwversion", "esx99", "or a number"},
		{"create-hwversion", "0", "not a virtual hardware version"},
	} {
		var c Config
		err := c.Set(tc.key, tc.value)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), tc.key+":") && tc.key != "nosuch" {
			t.Errorf("Set(%s=%s) = %v, want error containing %q", tc.key, tc.value, err, tc.want)
		}
	}
	// The thumbprint goes to VDDK as given; vm= keeps any vmxSpec.
	c := configure(t, "vm", "moref=vm-42", "thumbprint", "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd")
	if c.VM != "vm-42" || c.VMXSpec != "moref=vm-42" || c.Thumbprint != "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd" {
		t.Fatalf("got vm %q %q thumbprint %q", c.VM, c.VMXSpec, c.Thumbprint)
	}
	if c := configure(t, "vm", "vm-7"); c.VM != "vm-7" || c.VMXSpec != "moref=vm-7" {
		t.Errorf("bare moref: %q %q", c.VM, c.VMXSpec)
	}
	if c := configure(t, "vm", "[ds] vm/vm.vmx?dcPath=DC&dsName=ds"); c.VM != "" || c.VMXSpec != "[ds] vm/vm.vmx?dcPath=DC&dsName=ds" {
		t.Errorf("vmx path spec: %q %q", c.VM, c.VMXSpec)
	}
}

// Every parameter of nbdkit-vddk-plugin 1.32 is accepted with its meaning.
func TestUpstreamParameters(t *testing.T) {
	c := configure(t, "file", "[ds] a/a.vmdk", "server", "vc", "user", "u", "password", "", "vm", "moref=vm-1",
		"cookie", "vmware_soap_session=x", "thumbprint", "12", "port", "0", "nfchostport", "902",
		"single-link", "true", "unbuffered", "on", "vimapiver", "6.7", "transports", "nbd",
		"compression", "skipz", "config", "/etc/vddk.conf", "libdir", "/opt/vddk", "noreexec", "1",
		"create-type", "vmfs-thin", "create-adapter-type", "scsi-lsilogic", "create-hwversion", "esx65")
	if err := c.Complete(); err != nil {
		t.Fatal(err)
	}
	if !c.SingleLink || !c.Unbuffered || !c.NoReexec || c.Cookie != "vmware_soap_session=x" || c.Password != "" ||
		!c.HasPassword || c.Port != 0 || c.NFCHostPort != 902 || c.CreateType != vddk.DiskVMFSThin ||
		c.CreateAdapter != vddk.AdapterSCSILSILogic || c.CreateHWVersion != vddk.HWVersionESX65 {
		t.Errorf("config = %+v", c)
	}
	// The create defaults of nbdkit-vddk-plugin.
	c = configure(t, "file", filepath.Join(t.TempDir(), "new.vmdk"), "create", "1", "create-size", "10485760", "create-hwversion", "17")
	if err := c.Complete(); err != nil {
		t.Fatal(err)
	}
	if c.CreateType != vddk.DiskMonolithicSparse || c.CreateAdapter != vddk.AdapterSCSIBusLogic || c.CreateHWVersion != 17 {
		t.Errorf("create defaults = %+v", c)
	}
	if c.Remote() || c.ForcedReadOnly() != "" {
		t.Errorf("local create: remote %v, forced read-only %q", c.Remote(), c.ForcedReadOnly())
	}
}

// Writes, flushes and zeroes reach the disk; FUA flushes; zeroing skips
// what is unallocated (it reads as zeroes already) unless single-link.
func TestWritesAndZero(t *testing.T) {
	p, disk := newTestPlugin(t, "file", "/disk.img")
	h, err := p.Open(false)
	if err != nil {
		t.Fatal(err)
	}
	if h.ReadOnly() || !strings.HasSuffix(h.Description(), ", full, writable") {
		t.Fatalf("read-only %v, description %q", h.ReadOnly(), h.Description())
	}
	if err := h.PWrite([]byte("abc"), 10, false); err != nil || string(disk.data[10:13]) != "abc" || disk.flushes != 0 {
		t.Fatalf("PWrite: %v", err)
	}
	if err := h.PWrite([]byte("fua"), 20, true); err != nil || disk.flushes != 1 {
		t.Fatalf("PWrite with FUA: %v, %d flushes", err, disk.flushes)
	}
	// [512K, 3.5M+4K): allocated [512K,1M) and [3M,3.5M) are written.
	disk.writes = nil
	if err := h.Zero(3*mib+4096, mib/2, true); err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, w := range disk.writes {
		total += w.Length
		if w.Offset < mib/2 || (w.End() > mib && w.Offset < 3*mib) || w.End() > 3*mib+mib/2 {
			t.Errorf("zero wrote %v outside the allocated blocks", w)
		}
	}
	if total != mib || disk.flushes != 2 || disk.data[mib/2] != 0 || disk.data[mib-1] != 0 {
		t.Errorf("zero wrote %d bytes (want %d), %d flushes", total, mib, disk.flushes)
	}

	p, disk = newTestPlugin(t, "file", "/disk.img", "single-link", "true")
	h, _ = p.Open(false)
	disk.writes = nil
	if err := h.Zero(2*mib, mib, false); err != nil {
		t.Fatal(err)
	}
	if len(disk.writes) != 2 || disk.writes[0].Length != mib {
		t.Errorf("single-link zero wrote %v, want all of [1M,3M)", disk.writes)
	}
	if m, _ := h.Extents(4*mib, 0); m[1].Type != extent.Hole {
		t.Errorf("single-link unallocated extent = %v, want a hole that is not zero", m[1])
	}
}

// -r, readonly=true, a snapshot or an incremental export make a
// read-only open; create=true creates once, before the first open.
func TestReadOnlyAndCreate(t *testing.T) {
	areas := filepath.Join(t.TempDir(), "areas")
	os.WriteFile(areas, []byte("0 512\n"), 0o644)
	for _, tc := range []struct {
		kv []string
		ro bool
	}{
		{[]string{"file", "/disk.img", "readonly", "true"}, false},
		{[]string{"file", "/disk.img"}, true},
		{[]string{"file", "[ds] a.vmdk", "server", "vc", "user", "u", "password", "p", "vm", "vm-1", "snapshot", "snapshot-1"}, false},
		{[]string{"file", "/disk.img", "changed-areas", areas}, false},
	} {
		p, _ := newTestPlugin(t, tc.kv...)
		h, err := p.Open(tc.ro)
		if err != nil {
			t.Fatal(err)
		}
		if !h.ReadOnly() {
			t.Errorf("%q (nbdkit -r %v): writable", tc.kv, tc.ro)
		}
	}
	// Writable connections share one disk, closed with the last of them;
	// read-only ones each open their own.
	p, disk := newTestPlugin(t, "file", "/disk.img")
	b := p.backend.(*memBackend)
	var hs []*Handle
	for range 3 {
		h, err := p.Open(false)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	if b.opens != 1 {
		t.Errorf("3 writable connections opened the disk %d times, want once", b.opens)
	}
	for i, h := range hs {
		h.Close()
		if disk.closed != (i == 2) {
			t.Errorf("after closing %d of 3 writable connections: disk closed %v", i+1, disk.closed)
		}
	}
	if h, _ := p.Open(false); b.opens != 2 || h.ReadOnly() {
		t.Errorf("a writable connection after the last one closed: %d opens", b.opens)
	}
	p.Open(true)
	p.Open(true)
	if b.opens != 4 {
		t.Errorf("2 read-only connections: %d opens in all, want 4", b.opens)
	}

	dir := t.TempDir()
	p, _ = newTestPlugin(t, "file", filepath.Join(dir, "new.vmdk"), "create", "true", "create-size", "1048576")
	b = p.backend.(*memBackend)
	for range 3 {
		if _, err := p.Open(false); err != nil {
			t.Fatal(err)
		}
	}
	if b.creates != 1 {
		t.Errorf("created %d times, want once", b.creates)
	}
}

func TestReadChangedAreas(t *testing.T) {
	p := filepath.Join(t.TempDir(), "areas")
	os.WriteFile(p, []byte("# unsorted, overlapping\n8192 4096\n0 512  # first\n0x1000 0x1000\n100000 0\n9000 100\n"), 0o644)
	got, err := ReadChangedAreas(p)
	if err != nil {
		t.Fatal(err)
	}
	want := extent.List{{Offset: 0, Length: 512}, {Offset: 4096, Length: 8192}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// A 4 MiB disk: data in [0,1M) and [3M,3.5M), the rest unallocated.
func newTestPlugin(t *testing.T, kv ...string) (*Plugin, *memDisk) {
	t.Helper()
	disk := &memDisk{data: make([]byte, 4*mib), alloc: extent.List{{Offset: 0, Length: mib}, {Offset: 3 * mib, Length: mib / 2}}}
	for i := range disk.data[:mib] {
		disk.data[i] = byte(i)
	}
	p := New(&memBackend{disk: disk}, func(ctx context.Context, c *Config) (extent.List, error) {
		return extent.List{{Offset: 100, Length: 10}, {Offset: 2 * mib, Length: 4096}}, nil
	})
	for i := 0; i < len(kv); i += 2 {
		if err := p.Config.Set(kv[i], kv[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.ConfigComplete(); err != nil {
		t.Fatal(err)
	}
	return p, disk
}

func TestFullExtents(t *testing.T) {
	p, _ := newTestPlugin(t, "file", "/disk.img")
	h, err := p.Open(true)
	if err != nil {
		t.Fatal(err)
	}
	m, err := h.Extents(4*mib, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := extent.Map{
		{Offset: 0, Length: mib, Type: extent.Data},
		{Offset: mib, Length: 2 * mib, Type: extent.Hole | extent.Zero},
		{Offset: 3 * mib, Length: mib / 2, Type: extent.Data},
		{Offset: 3*mib + mib/2, Length: mib / 2, Type: extent.Hole | extent.Zero},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("full map = %v, want %v", m, want)
	}
	// A window past the end is clipped.
	if m, _ := h.Extents(8*mib, 3*mib); m[len(m)-1].End() != 4*mib {
		t.Fatalf("map not clipped to the disk: %v", m)
	}
}

func TestIncrementalExtents(t *testing.T) {
	areas := filepath.Join(t.TempDir(), "areas")
	// changed: [512K,1.5M) straddles data and hole; [3.25M,3.25M+100) is
	// inside data (rounded out to a sector); [3.75M,4M) is unallocated.
	os.WriteFile(areas, []byte("524288 1048576\n3407872 100\n3932160 262144\n"), 0o644)
	p, _ := newTestPlugin(t, "file", "/disk.img", "changed-areas", areas)
	h, err := p.Open(true)
	if err != nil {
		t.Fatal(err)
	}
	m, err := h.Extents(4*mib, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := extent.Map{
		{Offset: 0, Length: mib / 2, Type: extent.Hole},
		{Offset: mib / 2, Length: mib / 2, Type: extent.Data},
		{Offset: mib, Length: mib / 2, Type: extent.Hole | extent.Zero},
		{Offset: mib + mib/2, Length: 3407872 - (mib + mib/2), Type: extent.Hole},
		{Offset: 3407872, Length: 512, Type: extent.Data},
		{Offset: 3407872 + 512, Length: 3932160 - 3407872 - 512, Type: extent.Hole},
		{Offset: 3932160, Length: 262144, Type: extent.Hole | extent.Zero},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("incremental map =\n%v\nwant\n%v", m, want)
	}
	// A window inside an unchanged region is one hole.
	if m, _ := h.Extents(4096, 2*mib); !reflect.DeepEqual(m, extent.Map{{Offset: 2 * mib, Length: 4096, Type: extent.Hole}}) {
		t.Fatalf("unchanged window = %v", m)
	}
	// Reads return the true data whatever the extents say.
	buf := make([]byte, 300)
	if err := h.PRead(buf, 1000); err != nil || buf[0] != byte(1000%256) {
		t.Fatalf("PRead = %v, %d", err, buf[0])
	}
}

func TestChangedAreaPastEnd(t *testing.T) {
	areas := filepath.Join(t.TempDir(), "areas")
	os.WriteFile(areas, []byte("4194000 4096\n"), 0o644)
	p, disk := newTestPlugin(t, "file", "/disk.img", "changed-areas", areas)
	if _, err := p.Open(true); err == nil || !strings.Contains(err.Error(), "extends past the end") {
		t.Fatalf("Open = %v, want past-the-end error", err)
	}
	if !disk.closed {
		t.Fatal("disk left open after a failed open")
	}
}

func TestChangeQueryErrorAndCache(t *testing.T) {
	calls := 0
	p := New(&memBackend{disk: &memDisk{data: make([]byte, mib)}}, func(ctx context.Context, c *Config) (extent.List, error) {
		calls++
		if calls == 1 {
			return nil, errors.New("QueryChangedDiskAreas: fault")
		}
		return extent.List{{Offset: 0, Length: 512}}, nil
	})
	p.Config = Config{File: "[ds] a.vmdk", Server: "vc", ChangeID: "52 3c/7", Snapshot: "snapshot-1"}
	if _, err := p.Open(true); err == nil || !strings.Contains(err.Error(), "changeid=52 3c/7") {
		t.Fatalf("Open = %v, want the query error naming the changeid", err)
	}
	for range 3 {
		if _, err := p.Open(true); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 2 {
		t.Fatalf("query called %d times, want 2 (failed once, then cached)", calls)
	}
}
