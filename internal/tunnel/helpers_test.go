package tunnel

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sendense/capture/internal/nbdtest"
	"github.com/sendense/capture/internal/sshtest"
)

// testLogger sends the tunnel's log to t.Log until the test ends, and
// keeps it for assertions.
type testLogger struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
	buf  bytes.Buffer
}

func newTestLogger(t testing.TB) (*slog.Logger, *testLogger) {
	l := &testLogger{t: t}
	t.Cleanup(func() {
		l.mu.Lock()
		l.done = true
		l.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

func (l *testLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if !l.done {
		l.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func (l *testLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// config is a Config that reaches s with its user key and known_hosts.
func config(t testing.TB, s *sshtest.Server) Config {
	logger, _ := newTestLogger(t)
	return Config{
		Host:       s.Host,
		Port:       s.Port,
		User:       s.User,
		KeyFile:    s.UserKeyFile,
		KnownHosts: s.KnownHostsFile,
		Logger:     logger,
	}
}

// viaProxy returns a Config that reaches s through a new Proxy (whose
// address is in the known_hosts file too).
func viaProxy(t testing.TB, s *sshtest.Server) (Config, *sshtest.Proxy) {
	t.Helper()
	p := sshtest.StartProxy(t, s.Addr())
	cfg := config(t, s)
	cfg.Port = p.Port()
	cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	if err := s.WriteKnownHosts(cfg.KnownHosts, s.Addr(), p.Addr); err != nil {
		t.Fatal(err)
	}
	return cfg, p
}

// dial dials cfg and closes the Tunnel in t.Cleanup.
func dial(t testing.TB, cfg Config) *Tunnel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tn, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	return tn
}

// echoServer serves an echo on ln until the test ends.
func echoServer(t testing.TB, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// unixEcho starts an echo server on a unix socket (the "remote" side is
// this machine) and returns its path.
func unixEcho(t testing.TB) string {
	sock := filepath.Join(t.TempDir(), "echo.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	return sock
}

// tcpEcho starts an echo server on a loopback port and returns host:port.
func tcpEcho(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	return ln.Addr().String()
}

// checkEcho sends n bytes through a connection to path and checks they
// come back.
func checkEcho(t testing.TB, path string, n int) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := randomBytes(n)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		errc <- err
	}()
	got := make([]byte, n)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("echo write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echo: data differs")
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	f, _ := os.Open("/dev/urandom")
	defer f.Close()
	io.ReadFull(f, b)
	return b
}

// nbdkit starts nbdkit on a unix socket for the test and returns the
// socket once it accepts connections.
func nbdkit(t testing.TB, args ...string) string {
	t.Helper()
	sock, _ := nbdtest.NBDKit(t, args...)
	return sock
}

// waitFor polls cond until it holds or fails the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processGone says whether no process has a command line containing s.
func processGone(s string) bool {
	out, _ := exec.Command("pgrep", "-f", s).Output()
	return len(bytes.TrimSpace(out)) == 0
}
