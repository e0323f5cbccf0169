package tunnel

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/sshtest"
)

func TestKeepAliveDetectsStalledPeer(t *testing.T) {
	s := sshtest.Start(t)
	cfg, p := viaProxy(t, s)
	cfg.KeepAlive = KeepAlive{Interval: 250 * time.Millisecond, Count: 4}
	tn := dial(t, cfg)
	// Healthy: keepalives are answered, nothing happens.
	time.Sleep(time.Second)
	if err := tn.Err(); err != nil {
		t.Fatalf("healthy tunnel died: %v", err)
	}
	f, err := tn.ForwardUnix(context.Background(), unixEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	p.Stall() // the path goes silent; TCP stays up
	start := time.Now()
	select {
	case <-tn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("stalled peer not detected")
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("declared dead after only %v", d)
	}
	var de *DeadError
	if err := tn.Err(); !errors.As(err, &de) || !strings.Contains(err.Error(), "keepalive") || !strings.Contains(err.Error(), s.User+"@127.0.0.1:") {
		t.Fatalf("Err() = %v, want a DeadError about keepalives", err)
	}
	if _, err := os.Stat(f.Socket()); !errors.Is(err, os.ErrNotExist) {
		t.Error("forward socket left after the tunnel died")
	}
	if Permanent(tn.Err()) {
		t.Error("a dead connection is Permanent")
	}
}

func TestServerKilledDetected(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	if n := s.KillSessions(); n != 1 {
		t.Fatalf("killed %d sshd sessions, want 1", n)
	}
	select {
	case <-tn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("killed server not detected")
	}
	var de *DeadError
	if !errors.As(tn.Err(), &de) {
		t.Fatalf("Err() = %v, want a DeadError", tn.Err())
	}
}

// TestCutMidCopyAndReconnect cuts the TCP stream in the middle of an NBD
// copy: the copy fails, the tunnel reports why, and Reconnect gives a
// working tunnel on which the copy can be redone.
func TestCutMidCopyAndReconnect(t *testing.T) {
	if _, err := exec.LookPath("nbdcopy"); err != nil {
		t.Skip("nbdcopy is not installed")
	}
	s := sshtest.Start(t)
	cfg, p := viaProxy(t, s)
	cfg.Redial = Backoff{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond, Attempts: 5}
	tn := dial(t, cfg)
	remote := nbdkit(t, "memory", "64M")
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, randomBytes(64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := tn.ForwardUnix(context.Background(), remote)
	if err != nil {
		t.Fatal(err)
	}
	p.CutAfter(16 << 20)
	out, err := exec.Command("nbdcopy", src, f.URI()).CombinedOutput()
	if err == nil {
		t.Fatal("nbdcopy through a cut connection succeeded")
	}
	t.Logf("nbdcopy failed as expected: %s", strings.TrimSpace(string(out)))
	select {
	case <-tn.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("cut connection not detected")
	}
	var de *DeadError
	if !errors.As(tn.Err(), &de) {
		t.Fatalf("Err() = %v, want a DeadError", tn.Err())
	}

	tn2, err := tn.Reconnect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tn2.Close()
	f2, err := tn2.ForwardUnix(context.Background(), remote)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nbdcopy", src, f2.URI()).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy after Reconnect: %v: %s", err, out)
	}
	back := filepath.Join(t.TempDir(), "back")
	if out, err := exec.Command("nbdcopy", f2.URI(), back).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy back: %v: %s", err, out)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(back)
	if string(a) != string(b) {
		t.Fatal("data after Reconnect differs")
	}
}

func TestRedialBackoff(t *testing.T) {
	s := sshtest.Start(t)
	cfg, p := viaProxy(t, s)
	logger, logs := newTestLogger(t)
	cfg.Logger = logger
	cfg.DialTimeout = 2 * time.Second
	cfg.Redial = Backoff{Initial: 50 * time.Millisecond, Max: 100 * time.Millisecond, Attempts: 4}

	// Down for good: gives up after Attempts, each failure logged.
	p.Refuse(true)
	start := time.Now()
	_, err := Redial(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "gave up after 4 attempts") {
		t.Fatalf("Redial to a dead server: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("4 attempts with 50+100+100 ms backoff took only %v", d)
	}
	if n := strings.Count(logs.String(), "retrying"); n != 3 {
		t.Errorf("%d retries logged, want 3", n)
	}

	// Back up during the retries.
	cfg.Redial = Backoff{Initial: 100 * time.Millisecond, Max: 200 * time.Millisecond, Attempts: 20}
	go func() {
		time.Sleep(400 * time.Millisecond)
		p.Refuse(false)
	}()
	tn, err := Redial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Redial to a server that comes back: %v", err)
	}
	tn.Close()

	// Cancelled.
	p.Refuse(true)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Redial(ctx, cfg); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled Redial: %v", err)
	}
	p.Refuse(false)

	// A permanent failure is not retried.
	cfg.KnownHosts = filepath.Join(t.TempDir(), "empty")
	before := p.Accepted()
	if _, err := Redial(context.Background(), cfg); !Permanent(err) {
		t.Fatalf("Redial with an unknown host key: %v", err)
	}
	if n := p.Accepted() - before; n != 1 {
		t.Errorf("%d connections for a permanent failure, want 1", n)
	}
}
