package qemu

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/nbd"
)

const mib = 1 << 20

func requireQemu(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-nbd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian package qemu-utils)", tool)
		}
	}
}

// serve starts qemu-nbd on image and connects to it.
func serve(t *testing.T, image string, opts ServeOptions) (*Server, *nbd.Handle) {
	t.Helper()
	srv, err := ServeNBD(context.Background(), image, opts)
	if err != nil {
		t.Fatal(err)
	}
	h, err := nbd.Dial(srv.URI())
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); srv.Close() })
	return srv, h
}

func closeAll(t *testing.T, srv *Server, h *nbd.Handle) {
	t.Helper()
	if err := h.Flush(0); err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// TestChain builds base ← top through qemu-nbd and checks what each tool
// reports: zero writes into an overlay make zero clusters that hide the
// backing file, the map tells the layers apart, convert follows the chain,
// commit and rebase keep the content.
func TestChain(t *testing.T) {
	requireQemu(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	const size = 4 * mib
	want := make([]byte, size)

	if err := CreateImage(ctx, base, size, ""); err != nil {
		t.Fatal(err)
	}
	if err := CreateImage(ctx, base, size, ""); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("creating over an existing image: got %v, want an error", err)
	}
	srv, h := serve(t, base, ServeOptions{})
	for _, w := range []struct {
		off int
		b   []byte
	}{{0, fill(0xaa, 256<<10)}, {2 * mib, fill(0xbb, 64<<10)}} {
		if err := h.Pwrite(w.b, uint64(w.off), 0); err != nil {
			t.Fatal(err)
		}
		copy(want[w.off:], w.b)
	}
	closeAll(t, srv, h)

	// The overlay names its backing file relative to its own directory.
	if err := CreateImage(ctx, top, size, "base.qcow2"); err != nil {
		t.Fatal(err)
	}
	info, err := Info(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if info.BackingFilename != "base.qcow2" || info.VirtualSize != size || info.Format != "qcow2" || info.ClusterSize != 64<<10 {
		t.Fatalf("info: %+v", info)
	}

	srv, h = serve(t, top, ServeOptions{Discard: true})
	if err := h.Zero(64<<10, 0, 0); err != nil { // over backing data: must hide it
		t.Fatal(err)
	}
	copy(want[0:], make([]byte, 64<<10))
	if err := h.Trim(64<<10, 128<<10, 0); err != nil { // a trim must not expose it either
		t.Fatal(err)
	}
	copy(want[128<<10:], make([]byte, 64<<10))
	if err := h.Pwrite(fill(0xcc, 512), 3*mib+512, 0); err != nil {
		t.Fatal(err)
	}
	copy(want[3*mib+512:], fill(0xcc, 512))
	got := make([]byte, size)
	if err := h.Pread(got, 0, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the overlay does not read back what was written")
	}
	closeAll(t, srv, h)

	m, err := Map(ctx, top, MapOptions{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	var own []MapEntry
	for _, e := range m {
		if e.Depth != 0 {
			t.Fatalf("NoBacking map has depth %d: %+v", e.Depth, e)
		}
		if e.Present {
			e.Offset = nil
			own = append(own, e)
		}
	}
	wantOwn := []MapEntry{
		{Start: 0, Length: 64 << 10, Present: true, Zero: true},
		{Start: 128 << 10, Length: 64 << 10, Present: true, Zero: true},
		{Start: 3 * mib, Length: 64 << 10, Present: true, Data: true},
	}
	if !reflect.DeepEqual(own, wantOwn) {
		t.Fatalf("own allocation:\n got %+v\nwant %+v", own, wantOwn)
	}
	m, err = Map(ctx, top, MapOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if m[0].Depth != 0 || m[1].Depth != 1 || !m[1].Data {
		t.Fatalf("chain map: %+v", m)
	}

	raw := filepath.Join(dir, "top.raw")
	if err := Convert(ctx, top, raw, ConvertOptions{SrcFormat: "qcow2", OutFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(raw); !bytes.Equal(b, want) {
		t.Fatal("convert: the raw image differs")
	}

	// Commit keeps the top intact (-d) and makes base read like it.
	if err := Commit(ctx, top, base); err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{top, base} {
		out := img + ".raw"
		if err := Convert(ctx, img, out, ConvertOptions{SrcFormat: "qcow2"}); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(out); !bytes.Equal(b, want) {
			t.Fatalf("after commit, %s differs", img)
		}
	}
	// A safe rebase onto nothing copies what the top lacks: the image
	// becomes standalone with the same content.
	if err := Rebase(ctx, top, "", false); err != nil {
		t.Fatal(err)
	}
	if info, _ := Info(ctx, top); info.BackingFilename != "" {
		t.Fatalf("after rebase, backing %q", info.BackingFilename)
	}
	os.Remove(base)
	if err := Convert(ctx, top, raw+"2", ConvertOptions{SrcFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(raw + "2"); !bytes.Equal(b, want) {
		t.Fatal("after a safe rebase the standalone image differs")
	}

	res, err := Check(ctx, top)
	if err != nil || !res.OK() {
		t.Fatalf("check: %+v %v", res, err)
	}
}

// TestPinned: images are created 0600; Info and a pinned map open an image
// alone (its backing file may be missing); a pinned chain reads through
// the files named, not through the header's backing file.
func TestPinned(t *testing.T) {
	requireQemu(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "a.qcow2")
	other := filepath.Join(dir, "other.qcow2")
	top := filepath.Join(dir, "b.qcow2")
	for _, p := range []string{base, other} {
		if err := CreateImage(ctx, p, mib, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := CreateImage(ctx, top, mib, "a.qcow2"); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(top); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("created image mode: %v %v", fi.Mode(), err)
	}
	qio := func(img, cmd string) {
		if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", cmd, img).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io %s: %v %s", cmd, err, out)
		}
	}
	qio(base, "write -P 0x11 0 64k")
	qio(other, "write -P 0x22 0 64k")
	// Through the header: base's data; pinned to other: other's data.
	raw := filepath.Join(dir, "out.raw")
	if err := Convert(ctx, top, raw, ConvertOptions{Backing: []string{other}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(raw); len(b) != mib || b[0] != 0x22 {
		t.Fatalf("pinned convert read %x, want other's 0x22", b[:1])
	}
	m, err := Map(ctx, top, MapOptions{Backing: []string{base}})
	if err != nil || len(m) == 0 || m[0].Depth != 1 || !m[0].Data {
		t.Fatalf("pinned map: %+v %v", m, err)
	}
	os.Remove(base)
	// Info alone does not need the backing file, and reports the header's.
	if info, err := Info(ctx, top); err != nil || info.BackingFilename != "a.qcow2" || info.Format != "qcow2" {
		t.Fatalf("info: %+v %v", info, err)
	}
	if _, err := Map(ctx, top, MapOptions{NoBacking: true}); err != nil {
		t.Fatal(err)
	}
}

func TestMissingTool(t *testing.T) {
	tools := &Tools{Runner: LocalRunner{}, QemuImg: "qemu-img-not-installed", QemuNBD: "qemu-nbd-not-installed"}
	ctx := context.Background()
	dir := t.TempDir()
	for _, err := range []error{
		tools.CreateImage(ctx, filepath.Join(dir, "x.qcow2"), mib, ""),
		func() error { _, err := tools.ServeNBD(ctx, filepath.Join(dir, "x.qcow2"), ServeOptions{}); return err }(),
	} {
		var tm *ToolMissingError
		if !errors.As(err, &tm) || !strings.Contains(err.Error(), "qemu-utils") || !strings.Contains(err.Error(), "not-installed") {
			t.Fatalf("got %v, want an error naming the tool and qemu-utils", err)
		}
	}
}

func TestServeErrors(t *testing.T) {
	requireQemu(t)
	ctx := context.Background()
	dir := t.TempDir()
	_, err := ServeNBD(ctx, filepath.Join(dir, "missing.qcow2"), ServeOptions{ReadOnly: true})
	var ee *ExitError
	if !errors.As(err, &ee) || !strings.Contains(err.Error(), "missing.qcow2") {
		t.Fatalf("got %v, want qemu-nbd's error naming the file", err)
	}
}

func TestServeLifecycle(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "x.qcow2")
	if err := CreateImage(context.Background(), img, mib, ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := ServeNBD(ctx, img, ServeOptions{ReadOnly: true, SocketDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Dir(srv.Socket()))
	if err != nil || fi.Mode().Perm() != 0o700 || filepath.Dir(filepath.Dir(srv.Socket())) != dir {
		t.Fatalf("socket directory %s: %v %v", filepath.Dir(srv.Socket()), fi.Mode(), err)
	}
	// Several clients at once, and the server outlives them (persistent).
	for i := 0; i < 2; i++ {
		a, err := nbd.Dial(srv.URI())
		if err != nil {
			t.Fatal(err)
		}
		b, err := nbd.Dial(srv.URI())
		if err != nil {
			t.Fatal(err)
		}
		if ro, _ := a.IsReadOnly(); !ro {
			t.Fatal("export is not read-only")
		}
		a.Close()
		b.Close()
	}
	// Cancelling the context stops it; Close then reports no error.
	cancel()
	select {
	case <-srv.proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("qemu-nbd still runs after cancel")
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(srv.Socket())); !os.IsNotExist(err) {
		t.Fatal("socket directory not removed")
	}

	// A server killed behind our back is reported by Close.
	srv, err = ServeNBD(context.Background(), img, ServeOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.proc.Signal(os.Kill)
	<-srv.proc.Done()
	if err := srv.Close(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Close after SIGKILL: got %v", err)
	}
}

func TestRunCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := LocalRunner{}.Run(ctx, "sleep", "10")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("got %v after %s", err, time.Since(start))
	}
	_, err = LocalRunner{}.Run(context.Background(), "sh", "-c", "echo oops >&2; exit 3")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 || !strings.Contains(err.Error(), "oops") {
		t.Fatalf("got %v", err)
	}
}

// recorder is a Runner that records commands instead of running them: the
// shape a remote runner plugs into.
type recorder struct {
	calls [][]string
	out   []byte
}

func (r *recorder) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	r.calls = append(r.calls, append([]string{name}, args...))
	return r.out, nil
}
func (r *recorder) Start(string, ...string) (Process, error) { return nil, errors.New("no") }
func (r *recorder) MkdirTemp(string, string) (string, error) { return "", errors.New("no") }
func (r *recorder) RemoveAll(string) error                   { return nil }
func (r *recorder) DialUnix(context.Context, string) (net.Conn, error) {
	return nil, errors.New("no")
}

func TestRunnerArgs(t *testing.T) {
	r := &recorder{}
	tools := New(r)
	ctx := context.Background()
	tools.CreateImage(ctx, "/r/vm/b-disk1.qcow2", 1<<30, "a-disk1.qcow2")
	tools.Commit(ctx, "/r/top.qcow2", "/r/base.qcow2")
	tools.Rebase(ctx, "/r/top.qcow2", "", true)
	tools.Convert(ctx, "/r/top.qcow2", "/out/x.raw", ConvertOptions{SrcFormat: "qcow2"})
	umask := []string{"sh", "-c", privateUmask} // files created 0600
	want := [][]string{
		append(umask, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "a-disk1.qcow2", "-F", "qcow2", "/r/vm/b-disk1.qcow2", "1073741824"),
		{"qemu-img", "commit", "-q", "-f", "qcow2", "-d", "-b", "/r/base.qcow2", "/r/top.qcow2"},
		{"qemu-img", "rebase", "-q", "-f", "qcow2", "-u", "-b", "", "/r/top.qcow2"},
		append(umask, "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", "/r/top.qcow2", "/out/x.raw"),
	}
	if !reflect.DeepEqual(r.calls, want) {
		t.Fatalf("calls:\n got %q\nwant %q", r.calls, want)
	}
}

func TestURIEscape(t *testing.T) {
	s := &Server{socket: "/tmp/a b/nbd.sock"}
	if got, want := s.URI(), "nbd+unix:///?socket=/tmp/a%20b/nbd.sock"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}
