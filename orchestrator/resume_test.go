package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/nbd"
	"github.com/sendense/capture/internal/nbdtest"
)

// cuttingProxy forwards a unix socket to target and, if cutAfter > 0,
// closes every connection once that many bytes went client→server.
func cuttingProxy(t *testing.T, target string, cutAfter int64) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "proxy.sock")
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
			s, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			var once sync.Once
			closeBoth := func() { once.Do(func() { c.Close(); s.Close() }) }
			var sent atomic.Int64
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, werr := s.Write(buf[:n]); werr != nil {
							break
						}
						if cutAfter > 0 && sent.Add(int64(n)) > cutAfter {
							break
						}
					}
					if err != nil {
						break
					}
				}
				closeBoth()
			}()
			go func() { io.Copy(c, s); closeBoth() }()
		}
	}()
	return "nbd+unix:///?socket=" + sock
}

// destinationArgs serve the copies' destination. One thread per
// connection: nbdkit 1.32 can abort ("raw_send_socket: Assertion `sock >=
// 0' failed") when a client vanishes while several threads of its
// connection are replying, which is what these tests do on purpose.
var destinationArgs = []string{"-t", "1", "memory", "size=64M"}

// TestCopyResumesAfterConnectionLoss: the destination connection is cut
// after 24 MiB of a 64 MiB copy; the copy reconnects, flushes, resumes
// from what completed, and the destination equals the source without the
// whole disk being copied again.
func TestCopyResumesAfterConnectionLoss(t *testing.T) {
	resumeFirstDelay = 0
	_, srcURI := nbdtest.NBDKit(t, "-r", "pattern", "size=64M")
	dstSock, _ := nbdtest.NBDKit(t, destinationArgs...)
	cut := cuttingProxy(t, dstSock, 24<<20)
	j := &vmJob{vm: &cbt.VM{Name: "test"}, rep: nopReporter{}}
	reconnects := 0
	res, err := j.copyResumable(context.Background(), srcURI, cut, copier.Options{Requests: 4, RequestSize: 1 << 20, Checksum: true},
		func(ctx context.Context) (string, error) {
			reconnects++
			return cuttingProxy(t, dstSock, 0), nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if reconnects != 1 {
		t.Fatalf("%d reconnections, want 1", reconnects)
	}
	if res.BytesWritten >= 64<<20+24<<20 || res.BytesWritten < 64<<20 {
		t.Fatalf("wrote %d bytes in all: the copy restarted from zero or lost data", res.BytesWritten)
	}
	src, _ := copier.OpenNBD(srcURI)
	defer src.Close()
	want, err := copier.Checksum(context.Background(), src, copier.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.SHA256 != want {
		t.Fatalf("destination SHA-256 %s, source %s", res.SHA256, want)
	}
	t.Logf("wrote %d MiB for a 64 MiB disk after one cut at 24 MiB; notices: %v", res.BytesWritten>>20, j.notices)

	// Without reconnect, the loss is an error.
	cut2 := cuttingProxy(t, dstSock, 8<<20)
	if _, err := j.copyResumable(context.Background(), srcURI, cut2, copier.Options{Requests: 4, RequestSize: 1 << 20}, nil); err == nil || !isConnectionLoss(err) {
		t.Fatalf("a cut without reconnect: %v", err)
	}
}

// TestCopyGivesUpAfterRetryBudget: a destination whose every connection
// breaks, or that cannot be reached again, ends the copy with the
// connection error once the reconnections allowed are spent, not with a
// copy that hangs or claims success.
func TestCopyGivesUpAfterRetryBudget(t *testing.T) {
	defer func(a int, d time.Duration) { resumeAttempts, resumeFirstDelay = a, d }(resumeAttempts, resumeFirstDelay)
	resumeAttempts, resumeFirstDelay = 2, 0
	_, srcURI := nbdtest.NBDKit(t, "-r", "pattern", "size=64M")
	dstSock, _ := nbdtest.NBDKit(t, destinationArgs...)
	j := &vmJob{vm: &cbt.VM{Name: "test"}, rep: nopReporter{}}
	for _, tc := range []struct {
		name      string
		reconnect Reconnector
	}{
		{"every connection cut", func(ctx context.Context) (string, error) { return cuttingProxy(t, dstSock, 4<<20), nil }},
		{"unreachable", func(ctx context.Context) (string, error) { return "", io.ErrClosedPipe }},
	} {
		calls := 0
		reconnect := func(ctx context.Context) (string, error) { calls++; return tc.reconnect(ctx) }
		res, err := j.copyResumable(context.Background(), srcURI, cuttingProxy(t, dstSock, 4<<20),
			copier.Options{Requests: 4, RequestSize: 1 << 20}, reconnect)
		if err == nil {
			t.Fatalf("%s: the copy succeeded: %+v", tc.name, res)
		}
		if !isConnectionLoss(err) || !strings.Contains(err.Error(), "gave up after 2 reconnections") {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if calls != 2 {
			t.Fatalf("%s: %d reconnections, want 2", tc.name, calls)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}

// TestIsConnectionLoss: what counts as a broken connection (and so is
// resumed) and what is the server's answer on a live one (and is not).
func TestIsConnectionLoss(t *testing.T) {
	for _, tc := range []struct {
		err  error
		loss bool
	}{
		{&nbd.Error{Op: "nbd_aio_pwrite", Msg: "nbd_aio_pwrite: invalid state: CLOSED: the handle must be connected with the server", Errno: syscall.EINVAL, Disconnected: true}, true},
		{&nbd.Error{Op: "nbd_aio_command_completed", Msg: "write: command failed", Errno: syscall.ENOTCONN}, true},
		{&nbd.Error{Op: "nbd_pwrite", Msg: "recv: server disconnected unexpectedly"}, true},
		{&nbd.Error{Op: "nbd_pwrite", Msg: "write: command failed", Errno: syscall.EIO}, false},
		{&nbd.Error{Op: "nbd_pwrite", Msg: "invalid argument", Errno: syscall.EINVAL}, false},
		{errors.New("destination is read-only"), false},
	} {
		err := fmt.Errorf("write to the destination at offset 4194304: %w", tc.err)
		if got := isConnectionLoss(err); got != tc.loss {
			t.Errorf("isConnectionLoss(%v) = %v, want %v", err, got, tc.loss)
		}
	}
}
