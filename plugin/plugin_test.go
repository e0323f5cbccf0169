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
)

// memDisk is an in-memory Disk whose allocation is given explicitly.
type memDisk struct {
	data   []byte
	alloc  extent.List
	closed bool
}

func (d *memDisk) Size() uint64 { return uint64(len(d.data)) }
func (d *memDisk) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(d.data).ReadAt(p, off)
}
func (d *memDisk) Allocated(off, length uint64) (extent.List, error) {
	return d.alloc.Clip(off, length), nil
}
func (d *memDisk) Close() error { d.closed = true; return nil }

type memBackend struct{ disk *memDisk }

func (b *memBackend) Check(*Config) error        { return nil }
func (b *memBackend) Start(*Config) error        { return nil }
func (b *memBackend) Open(*Config) (Disk, error) { return b.disk, nil }
func (b *memBackend) Stop()                      {}

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
		{"thumbprint", "AB:CD", "not a SHA-1 thumbprint"},
		{"vm", "name=foo", "expected moref="},
		{"transports", "nbd:carrier-pigeon", `unknown transport mode "carrier-pigeon"`},
		{"compression", "gzip", "not one of"},
		{"disk-key", "-1", "not a device key"},
		{"file", "", "empty value"},
	} {
		var c Config
		err := c.Set(tc.key, tc.value)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), tc.key+":") && tc.key != "nosuch" {
			t.Errorf("Set(%s=%s) = %v, want error containing %q", tc.key, tc.value, err, tc.want)
		}
	}
	c := configure(t, "vm", "moref=vm-42", "thumbprint", "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd")
	if c.VM != "vm-42" || c.Thumbprint != "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD" {
		t.Fatalf("got vm %q thumbprint %q", c.VM, c.Thumbprint)
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
	p := New(&memBackend{disk}, func(ctx context.Context, c *Config) (extent.List, error) {
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
	h, err := p.Open()
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
	h, err := p.Open()
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
	if _, err := p.Open(); err == nil || !strings.Contains(err.Error(), "extends past the end") {
		t.Fatalf("Open = %v, want past-the-end error", err)
	}
	if !disk.closed {
		t.Fatal("disk left open after a failed open")
	}
}

func TestChangeQueryErrorAndCache(t *testing.T) {
	calls := 0
	p := New(&memBackend{&memDisk{data: make([]byte, mib)}}, func(ctx context.Context, c *Config) (extent.List, error) {
		calls++
		if calls == 1 {
			return nil, errors.New("QueryChangedDiskAreas: fault")
		}
		return extent.List{{Offset: 0, Length: 512}}, nil
	})
	p.Config = Config{File: "[ds] a.vmdk", Server: "vc", ChangeID: "52 3c/7", Snapshot: "snapshot-1"}
	if _, err := p.Open(); err == nil || !strings.Contains(err.Error(), "changeid=52 3c/7") {
		t.Fatalf("Open = %v, want the query error naming the changeid", err)
	}
	for range 3 {
		if _, err := p.Open(); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 2 {
		t.Fatalf("query called %d times, want 2 (failed once, then cached)", calls)
	}
}
