package nbd

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/nbdtest"
)

// nbdkit starts "nbdkit -f -U SOCKET args..." for the test and returns the
// socket path and its URI.
func nbdkit(t *testing.T, args ...string) (sock, uri string) {
	t.Helper()
	return nbdtest.NBDKit(t, args...)
}

func dial(t *testing.T, uri string) *Handle {
	t.Helper()
	h, err := Dial(uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestSyncIO(t *testing.T) {
	_, uri := nbdkit(t, "memory", "size=4M")
	h := dial(t, uri)
	size, err := h.Size()
	if err != nil || size != 4<<20 {
		t.Fatalf("Size = %d, %v", size, err)
	}
	for name, f := range map[string]func() (bool, error){
		"CanZero": h.CanZero, "CanTrim": h.CanTrim, "CanFlush": h.CanFlush,
		"CanMultiConn": h.CanMultiConn, "CanBlockStatus": h.CanBlockStatus,
	} {
		if ok, err := f(); !ok || err != nil {
			t.Errorf("%s = %v, %v; want true", name, ok, err)
		}
	}
	if ro, err := h.IsReadOnly(); ro || err != nil {
		t.Errorf("IsReadOnly = %v, %v", ro, err)
	}
	if _, err := h.CanFastZero(); err != nil {
		t.Error(err)
	}
	if fd, err := h.FD(); err != nil || fd < 0 {
		t.Errorf("FD = %d, %v", fd, err)
	}
	if err := h.SetPreadInitialize(false); err != nil {
		t.Error(err)
	}

	data := bytes.Repeat([]byte("sendense"), 8192) // 64 KiB
	if err := h.Pwrite(data, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := h.Pread(got, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs from what was written")
	}
	if err := h.Zero(4096, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Trim(4096, 2<<20, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(0); err != nil {
		t.Fatal(err)
	}
	if err := h.Pread(got[:8192], 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], make([]byte, 4096)) || !bytes.Equal(got[4096:8192], data[4096:8192]) {
		t.Fatal("Zero did not zero exactly its range")
	}
}

func TestBlockStatus(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "extents")
	// 0 data, 1 hole, 2 zero, 3 hole+zero, one of each.
	os.WriteFile(list, []byte("0 64K 0\n64K 64K hole\n128K 64K zero\n192K 832K hole,zero\n"), 0o644)
	_, uri := nbdkit(t, "--filter=extentlist", "memory", "size=1M", "extentlist="+list)
	h := dial(t, uri)
	got, err := h.BlockStatus(1<<20, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	ty := func(off, n uint64, typ uint32) extent.Typed { return extent.Typed{Offset: off, Length: n, Type: typ} }
	want := []extent.Typed{ty(0, 64<<10, 0), ty(64<<10, 64<<10, 1), ty(128<<10, 64<<10, 2), ty(192<<10, 832<<10, 3)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("BlockStatus = %v, want %v", got, want)
	}
	got, err = h.BlockStatus(64<<10, 64<<10, CmdFlagReqOne)
	if err != nil || len(got) == 0 || got[0].Offset != 64<<10 || got[0].Type != extent.Hole {
		t.Fatalf("BlockStatus(REQ_ONE) = %v, %v", got, err)
	}
}

func TestNoBlockStatus(t *testing.T) {
	_, uri := nbdkit(t, "--filter=noextents", "memory", "size=1M")
	h := dial(t, uri)
	ok, err := h.CanBlockStatus()
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		// nbdkit still negotiates base:allocation and reports all data.
		got, err := h.BlockStatus(1<<20, 0, 0)
		if err != nil || got[0].Type != 0 {
			t.Fatalf("BlockStatus = %v, %v", got, err)
		}
	}
}

// pollUntil drives h until want completions have arrived.
func pollUntil(t *testing.T, h *Handle, want int) []Completion {
	t.Helper()
	var done []Completion
	deadline := time.Now().Add(10 * time.Second)
	for len(done) < want {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d commands completed", len(done), want)
		}
		if _, err := h.Poll(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		done = h.Completions(done)
	}
	return done
}

func TestAio(t *testing.T) {
	_, uri := nbdkit(t, "memory", "size=16M")
	h := dial(t, uri)
	const n, sz = 32, 256 << 10
	bufs := make([]*Buffer, n)
	for i := range bufs {
		b, err := NewBuffer(sz)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Free()
		p := b.Bytes()
		for j := range p {
			p[j] = byte(i + j)
		}
		bufs[i] = b
	}
	for i, b := range bufs {
		if err := h.AioPwrite(b, sz, uint64(i*sz), 0, uint64(1000+i)); err != nil {
			t.Fatal(err)
		}
	}
	if h.Pending() != n {
		t.Fatalf("Pending = %d, want %d", h.Pending(), n)
	}
	seen := map[uint64]bool{}
	for _, c := range pollUntil(t, h, n) {
		if c.Err != nil {
			t.Fatal(c.Err)
		}
		seen[c.Tag] = true
	}
	if len(seen) != n || !seen[1000] || !seen[1000+n-1] {
		t.Fatalf("completions %v", seen)
	}
	// Read everything back into cleared buffers, all in flight at once,
	// driving the socket with PollEvents/Notify as a multi-handle loop does.
	for i, b := range bufs {
		clear(b.Bytes())
		if err := h.AioPread(b, sz, uint64(i*sz), uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	var done []Completion
	for len(done) < n {
		fd, ev := h.PollEvents()
		if fd < 0 {
			t.Fatal("no socket to poll")
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: ev}}
		if _, err := unix.Poll(fds, 1000); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		if err := h.Notify(fds[0].Revents); err != nil {
			t.Fatal(err)
		}
		done = h.Completions(done)
	}
	for _, c := range done {
		if c.Err != nil {
			t.Fatal(c.Err)
		}
	}
	for i, b := range bufs {
		p := b.Bytes()
		if p[0] != byte(i) || p[sz-1] != byte(i+sz-1) {
			t.Fatalf("buffer %d read back wrong", i)
		}
	}
	if err := h.AioZero(sz, 0, 0, 7); err != nil {
		t.Fatal(err)
	}
	if err := h.AioFlush(0, 8); err != nil {
		t.Fatal(err)
	}
	if err := h.AioTrim(4096, uint64(sz), 0, 9); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, h, 3)
	if !bufs[0].IsZero(0) || bufs[1].IsZero(sz) {
		t.Fatal("IsZero wrong")
	}
	if err := h.Pread(bufs[0].Bytes(), 0, 0); err != nil || !bufs[0].IsZero(sz) {
		t.Fatalf("AioZero did not zero: %v", err)
	}
	if err := h.AioPread(bufs[0], sz+1, 0, 1); err == nil {
		t.Fatal("AioPread past the buffer succeeded")
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Dial("nbd+unix:///?socket=" + filepath.Join(dir, "missing.sock"))
	var ne *Error
	if !errors.As(err, &ne) || !errors.Is(err, syscall.ENOENT) || ne.Op != "nbd_connect_uri" {
		t.Fatalf("connect to a missing socket: %#v", err)
	}
	if _, err := Dial("http://example.com/"); err == nil || !strings.Contains(err.Error(), "nbd_connect_uri") {
		t.Fatalf("bad URI: %v", err)
	}

	_, uri := nbdkit(t, "--filter=error", "memory", "size=1M", "error=EIO", "error-pwrite-rate=1")
	h := dial(t, uri)
	err = h.Pwrite(make([]byte, 512), 0, 0)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("Pwrite through the error filter: %v", err)
	}
	t.Logf("message: %v", err)
	b, _ := NewBuffer(512)
	defer b.Free()
	if err := h.AioPwrite(b, 512, 0, 0, 42); err != nil {
		t.Fatal(err)
	}
	c := pollUntil(t, h, 1)
	if c[0].Tag != 42 || !errors.Is(c[0].Err, syscall.EIO) {
		t.Fatalf("aio completion: %+v", c[0])
	}

	_, ro := nbdkit(t, "-r", "memory", "size=1M")
	r := dial(t, ro)
	if v, _ := r.IsReadOnly(); !v {
		t.Fatal("read-only export not reported read-only")
	}
	if err := r.Pwrite(make([]byte, 512), 0, 0); err == nil {
		t.Fatal("write to a read-only export succeeded")
	}

	r.Close()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Size(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Size after Close: %v", err)
	}
	b.Free()
	b.Free()
}

// TestDisconnected: once the server is gone, the failing call, and any
// command issued after it (which libnbd refuses as "invalid state"), match
// ErrDisconnected; a server's error reply and a failed connect do not.
func TestDisconnected(t *testing.T) {
	if _, err := Dial("nbd+unix:///?socket=" + filepath.Join(t.TempDir(), "missing.sock")); errors.Is(err, ErrDisconnected) {
		t.Fatalf("a failed connect matches ErrDisconnected: %v", err)
	}
	_, eio := nbdkit(t, "--filter=error", "memory", "size=1M", "error=EIO", "error-pwrite-rate=1")
	if err := dial(t, eio).Pwrite(make([]byte, 512), 0, 0); err == nil || errors.Is(err, ErrDisconnected) {
		t.Fatalf("an error reply on a live connection: %v", err)
	}

	sock := filepath.Join(t.TempDir(), "nbd.sock")
	srv := exec.Command("nbdkit", "-f", "-U", sock, "memory", "size=1M")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()
	if err := nbdtest.WaitUnix(sock, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	h := dial(t, "nbd+unix:///?socket="+sock)
	if err := h.Pwrite(make([]byte, 512), 0, 0); err != nil {
		t.Fatal(err)
	}
	srv.Process.Kill()
	srv.Wait()
	err := h.Pwrite(make([]byte, 512), 0, 0)
	if !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Pwrite after the server died: %v", err)
	}
	b, _ := NewBuffer(512)
	defer b.Free()
	err = h.AioPwrite(b, 512, 0, 0, 1)
	if !errors.Is(err, ErrDisconnected) || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("AioPwrite on the dead handle: %v", err)
	}
	t.Logf("after the loss: %v", err)
}

func TestConnectUnixAndSocket(t *testing.T) {
	sock, _ := nbdkit(t, "memory", "size=2M")
	h, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.SetName("unix"); err != nil {
		t.Fatal(err)
	}
	if err := h.ConnectUnix(sock); err != nil {
		t.Fatal(err)
	}
	if n, _ := h.Size(); n != 2<<20 {
		t.Fatalf("size %d", n)
	}

	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv := os.NewFile(uintptr(fds[1]), "server")
	cmd := exec.Command("nbdkit", "-s", "memory", "size=3M")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = srv, srv, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	defer cmd.Wait()
	s, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ConnectSocket(fds[0]); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Size(); n != 3<<20 {
		t.Fatalf("size %d", n)
	}
	s.Shutdown()
	s.Close()
}
