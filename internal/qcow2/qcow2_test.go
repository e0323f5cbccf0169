package qcow2

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func requireQemu(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian package qemu-utils)", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func open(t *testing.T, path string) *Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	im, err := Open(f)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return im
}

func readAt(path string) func(int64, int) ([]byte, error) {
	return func(off int64, n int) ([]byte, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		b := make([]byte, n)
		k, err := f.ReadAt(b, off)
		if k > 0 {
			err = nil
		}
		return b[:k], err
	}
}

// TestChain reads a chain of three images — data, zero clusters over
// data, partial clusters, discarded clusters, a zero cluster hiding the
// backing file, a v2 base — and compares every byte with what qemu-img
// convert reads, and the data extents with qemu-img map.
func TestChain(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2"), filepath.Join(dir, "c.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", a, "8M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x12 3M 200k", "-c", "write -P 0x13 7M 1M", a)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x21 4k 4k", "-c", "write -z 128k 64k", "-c", "write -P 0x22 5M 64k", b)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", c)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x31 3M 4k", "-c", "write -z 7M 64k", "-c", "write -P 0x32 7M 512", "-c", "discard 5M 64k", c)
	want := filepath.Join(dir, "want.raw")
	run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", c, want)
	wantData, _ := os.ReadFile(want)

	ch := Chain{open(t, c), open(t, b), open(t, a)}
	if err := ch.Check(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, ch.Size())
	if err := ch.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wantData) {
		t.Fatal("the chain reads other data than qemu-img convert")
	}
	// Unaligned reads across clusters and layers.
	for _, r := range [][2]uint64{{4000, 70000}, {3<<20 - 100, 300}, {7<<20 + 500, 65536}, {8<<20 - 1, 1}} {
		p := make([]byte, r[1])
		if err := ch.ReadAt(p, r[0]); err != nil || !bytes.Equal(p, wantData[r[0]:r[0]+r[1]]) {
			t.Fatalf("read %d+%d: %v", r[0], r[1], err)
		}
	}
	if err := ch.ReadAt(make([]byte, 2), 8<<20-1); err == nil {
		t.Fatal("a read beyond the size succeeded")
	}
	m, err := ch.Map()
	if err != nil {
		t.Fatal(err)
	}
	var pos uint64
	for _, e := range m {
		if e.Offset != pos {
			t.Fatalf("map not contiguous: %+v", m)
		}
		if !e.Data && !bytes.Equal(wantData[e.Offset:e.Offset+e.Length], make([]byte, e.Length)) {
			t.Fatalf("extent %+v is not zero", e)
		}
		pos += e.Length
	}
	if pos != 8<<20 {
		t.Fatalf("map covers %d bytes", pos)
	}
	// The image alone: the backing file's clusters read as zeroes.
	alone := Chain{ch[0]}
	p := make([]byte, 64<<10)
	if err := alone.ReadAt(p, 0); err != nil || p[0] != 0 {
		t.Fatalf("alone: %v %x", err, p[0])
	}
	if err := alone.ReadAt(p, 3<<20); err != nil || p[0] != 0x31 || p[4096] != 0x12 {
		t.Fatalf("alone, a partial cluster: %v %x %x", err, p[0], p[4096])
	}
}

// TestUnsupported: compressed clusters and extended L2 entries are left
// to QEMU.
func TestUnsupported(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	raw, comp, ext := filepath.Join(dir, "r.raw"), filepath.Join(dir, "comp.qcow2"), filepath.Join(dir, "ext.qcow2")
	os.WriteFile(raw, bytes.Repeat([]byte("sendense"), 1<<17), 0o600)
	run(t, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, comp)
	im := open(t, comp)
	if err := (Chain{im}).ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("compressed: %v", err)
	}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", ext, "1M")
	f, _ := os.Open(ext)
	defer f.Close()
	if _, err := Open(f); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("extended L2: %v", err)
	}
}

// TestHeader: what the header would make QEMU open is seen without it.
func TestHeader(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	top, df, raw := filepath.Join(dir, "b.qcow2"), filepath.Join(dir, "df.qcow2"), filepath.Join(dir, "x.raw")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "-u", top, "1M")
	h, err := ReadHeader(readAt(top))
	if err != nil || h.BackingFile != "a.qcow2" || h.BackingFormat != "qcow2" || h.Size != 1<<20 || h.ClusterSize() != 64<<10 || h.ExternalData() || h.Corrupt() {
		t.Fatalf("header: %+v %v", h, err)
	}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"), df, "1M")
	if h, err := ReadHeader(readAt(df)); err != nil || !h.ExternalData() || h.DataFile == "" {
		t.Fatalf("data file header: %+v %v", h, err)
	}
	os.WriteFile(raw, make([]byte, 4096), 0o600)
	if _, err := ReadHeader(readAt(raw)); !errors.Is(err, ErrNotQcow2) {
		t.Fatalf("raw file: %v", err)
	}
	os.WriteFile(raw, []byte("QFI\xfb"), 0o600)
	if _, err := ReadHeader(readAt(raw)); err == nil {
		t.Fatal("a truncated header was accepted")
	}
}

// TestBounds: an image whose tables or data clusters lie beyond the end
// of its file (truncated) is refused; the whole image passes.
func TestBounds(t *testing.T) {
	requireQemu(t)
	path := filepath.Join(t.TempDir(), "a.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "8M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", "-c", "write -P 9 6M 64k", path)
	check := func() error {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fi, _ := f.Stat()
		hdr, err := ReadHeader(func(off int64, n int) ([]byte, error) {
			b := make([]byte, n)
			k, _ := f.ReadAt(b, off)
			return b[:k], nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return Bounds(f, hdr, uint64(fi.Size()))
	}
	if err := check(); err != nil {
		t.Fatalf("whole image: %v", err)
	}
	fi, _ := os.Stat(path)
	for _, size := range []int64{fi.Size() - 64<<10, 512 << 10, 512} {
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		if err := check(); err == nil || !bytes.Contains([]byte(err.Error()), []byte("truncated")) {
			t.Errorf("truncated to %d bytes: %v", size, err)
		}
	}
}
