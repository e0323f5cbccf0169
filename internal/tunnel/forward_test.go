package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sendense/capture/internal/nbd"
	"github.com/sendense/capture/internal/sshtest"
)

func TestForwardUnixEcho(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	f, err := tn.ForwardUnix(context.Background(), unixEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(f.Socket())
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, want 0700", st.Mode().Perm())
	}
	if want := "nbd+unix:///?socket=" + f.Socket(); f.URI() != want {
		t.Errorf("URI %q, want %q", f.URI(), want)
	}
	// Several connections at once, each its own channel, one large.
	var wg sync.WaitGroup
	for i, n := range []int{1, 1000, 70000, 3 << 20} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			checkEcho(t, f.Socket(), n)
		}()
		_ = i
	}
	wg.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("private directory left after Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestForwardTCPEcho(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	f, err := tn.ForwardTCP(context.Background(), tcpEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	checkEcho(t, f.Socket(), 1<<20)
}

func TestForwardHalfClose(t *testing.T) {
	// A server that reads to EOF and then answers: half-close must cross
	// the tunnel both ways.
	sock := filepath.Join(t.TempDir(), "wc.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, c)
			c.Write([]byte(strings.Repeat("x", int(n%1000))))
			c.Close()
		}
	}()
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	f, err := tn.ForwardUnix(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("unix", f.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(make([]byte, 100123))
	c.(*net.UnixConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || len(got) != 123 {
		t.Fatalf("got %d bytes, %v; want 123 and EOF", len(got), err)
	}
}

func TestForwardRefusedChannel(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	missing := filepath.Join(t.TempDir(), "nothing.sock")
	f, err := tn.ForwardUnix(context.Background(), missing)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("unix", f.Socket())
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read from a refused forward: %d, %v; want EOF", n, err)
	}
	c.Close()
	err = f.Err()
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "could not connect") {
		t.Fatalf("Forward.Err() = %v; want the socket path and 'could not connect'", err)
	}
	// The tunnel itself is fine.
	if tn.Err() != nil {
		t.Fatal(tn.Err())
	}
	if _, err := tn.DialUnix(context.Background(), missing); err == nil {
		t.Fatal("DialUnix to a missing socket succeeded")
	}
}

func TestDialUnixDeadline(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	c, err := tn.DialUnix(context.Background(), unixEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	buf := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if _, err := c.Read(buf); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	c2, err := tn.DialTCP(context.Background(), tcpEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte("tcp"))
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c2, buf[:3]); err != nil || string(buf[:3]) != "tcp" {
		t.Fatalf("tcp echo: %q %v", buf[:3], err)
	}
}

// TestForwardNBD drives an NBD server on the "remote" side through the
// forward with our libnbd binding and with nbdcopy.
func TestForwardNBD(t *testing.T) {
	s := sshtest.Start(t)
	cfg := config(t, s)
	cfg.Connections = 2
	tn := dial(t, cfg)
	f, err := tn.ForwardUnix(context.Background(), nbdkit(t, "memory", "64M"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	h, err := nbd.Dial(f.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	size, err := h.Size()
	if err != nil || size != 64<<20 {
		t.Fatalf("size %d, %v", size, err)
	}
	want := randomBytes(4 << 20)
	if err := h.Pwrite(want, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := h.Pread(got, 1<<20, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("NBD data read back through the tunnel differs")
	}

	// nbdcopy (4 connections, many requests in flight) both ways.
	if _, err := exec.LookPath("nbdcopy"); err != nil {
		t.Skip("nbdcopy is not installed")
	}
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src"), filepath.Join(dir, "back")
	if err := os.WriteFile(src, randomBytes(64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{src, f.URI()}, {f.URI(), back}} {
		if out, err := exec.Command("nbdcopy", args...).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy %v: %v: %s", args, err, out)
		}
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(back)
	if !bytes.Equal(a, b) {
		t.Fatal("nbdcopy round trip through the tunnel differs")
	}
}

func TestCloseTunnelClosesForwards(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	f, err := tn.ForwardUnix(context.Background(), unixEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", f.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tn.Close()
	if _, err := os.Stat(filepath.Dir(f.Socket())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("forward directory left after Tunnel.Close: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection through a closed tunnel still open")
	}
	if !errors.Is(tn.Err(), ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", tn.Err())
	}
	select {
	case <-tn.Done():
	default:
		t.Error("Done not closed after Close")
	}
	if _, err := tn.ForwardUnix(context.Background(), "/x"); !errors.Is(err, ErrClosed) {
		t.Errorf("ForwardUnix on a closed tunnel: %v", err)
	}
}

func TestConnectionsSpread(t *testing.T) {
	s := sshtest.Start(t)
	cfg := config(t, s)
	cfg.Connections = 3
	tn := dial(t, cfg)
	if n := len(s.SessionPIDs()); n != 3 {
		t.Errorf("%d sshd sessions, want 3", n)
	}
	f, err := tn.ForwardUnix(context.Background(), unixEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			checkEcho(t, f.Socket(), 256<<10)
		}()
	}
	wg.Wait()
}

func TestRateLimit(t *testing.T) {
	// A sink behind the tunnel that counts what it receives.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		received <- n
	}()
	s := sshtest.Start(t)
	cfg := config(t, s)
	const rate, total = 4 << 20, 12 << 20 // 3 s
	cfg.Rate = rate
	tn := dial(t, cfg)
	f, err := tn.ForwardTCP(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := net.Dial("unix", f.Socket())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Write(make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	var n int64
	select {
	case n = <-received:
	case <-time.After(30 * time.Second):
		t.Fatal("sink did not finish")
	}
	elapsed := time.Since(start)
	c.Close()
	if n != total {
		t.Fatalf("sink got %d bytes, want %d", n, total)
	}
	got := float64(total) / elapsed.Seconds()
	t.Logf("%d MiB in %v: %.2f MiB/s (limit %d MiB/s)", total>>20, elapsed, got/(1<<20), rate>>20)
	if got > rate*1.10 || got < rate*0.80 {
		t.Errorf("throughput %.2f MiB/s, want within -20%%/+10%% of %d MiB/s", got/(1<<20), rate>>20)
	}
}
