package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/nbd"
	"github.com/sendense/capture/internal/nbdtest"
	"github.com/sendense/capture/internal/sshtest"
)

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"qemu-img", "info", "/a/b.qcow2"}, "qemu-img info /a/b.qcow2"},
		{[]string{""}, "''"},
		{[]string{"a b"}, "'a b'"},
		{[]string{"it's"}, `'it'\''s'`},
		{[]string{"$HOME", "`x`", "a;b", "*"}, `'$HOME' '` + "`x`" + `' 'a;b' '*'`},
		{[]string{"key=value,x:y@z%1+2"}, "key=value,x:y@z%1+2"},
	} {
		if got := ShellQuote(tc.args...); got != tc.want {
			t.Errorf("ShellQuote(%q) = %s, want %s", tc.args, got, tc.want)
		}
	}
}

func TestRun(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	ctx := context.Background()

	stdout, stderr, err := tn.Run(ctx, "echo out; echo err >&2", nil)
	if err != nil || string(stdout) != "out\n" || string(stderr) != "err\n" {
		t.Fatalf("Run: %q %q %v", stdout, stderr, err)
	}

	// Arguments survive quoting exactly.
	args := []string{"a b", "it's", "$HOME", "", "x\ny", `\`}
	stdout, _, err = tn.Run(ctx, ShellQuote(append([]string{"printf", "[%s]"}, args...)...), nil)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, a := range args {
		fmt.Fprintf(&want, "[%s]", a)
	}
	if string(stdout) != want.String() {
		t.Errorf("quoted arguments: got %q, want %q", stdout, want.String())
	}

	// Exit status and stderr in the error.
	_, _, err = tn.Run(ctx, "echo oops >&2; exit 3", nil)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Status != 3 || strings.TrimSpace(ee.Stderr) != "oops" {
		t.Fatalf("failing command: %#v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "exit status 3") || !strings.Contains(msg, "oops") || !strings.Contains(msg, s.Addr()) {
		t.Errorf("error text %q", msg)
	}
	_, _, err = tn.Run(ctx, ShellQuote("no-such-command-xyz"), nil)
	if !errors.As(err, &ee) || ee.Status != 127 {
		t.Errorf("missing command: %v", err)
	}

	// Standard input.
	in := randomBytes(3 << 20)
	stdout, _, err = tn.Run(ctx, "cat", bytes.NewReader(in))
	if err != nil || !bytes.Equal(stdout, in) {
		t.Fatalf("cat with stdin: %d bytes, %v", len(stdout), err)
	}
	// Without stdin the command reads /dev/null.
	stdout, _, err = tn.Run(ctx, "wc -c", nil)
	if err != nil || strings.TrimSpace(string(stdout)) != "0" {
		t.Fatalf("wc -c without stdin: %q %v", stdout, err)
	}
}

func TestRunCancelKillsRemote(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	marker := fmt.Sprintf("sleep 1001.%d", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := tn.Run(ctx, marker, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled Run: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled Run returned after %v", d)
	}
	waitFor(t, 10*time.Second, "remote sleep to die", func() bool { return processGone("^" + marker) })

	// With stdin: the kill closes the session, so the command sees EOF.
	r, w := io.Pipe() // never written: the command waits for input
	defer w.Close()
	dir := t.TempDir()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	start = time.Now()
	_, _, err = tn.Run(ctx2, ShellQuote("sh", "-c", "cat >/dev/null; touch "+dir+"/eof"), r)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled Run with stdin: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled Run with stdin returned after %v", d)
	}
	waitFor(t, 10*time.Second, "the command to see EOF", func() bool {
		_, err := os.Stat(dir + "/eof")
		return err == nil
	})
}

func TestStartDiesWithTunnel(t *testing.T) {
	s := sshtest.Start(t)
	ctx := context.Background()

	// Close, and a connection that is cut: both end the remote command.
	for _, how := range []string{"close", "cut", "kill"} {
		t.Run(how, func(t *testing.T) {
			cfg, p := viaProxy(t, s)
			tn := dial(t, cfg)
			marker := fmt.Sprintf("sleep 1003.%d%d", os.Getpid(), len(how))
			pattern := "^" + marker
			proc, err := tn.Start(ctx, marker, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "remote sleep to start", func() bool { return !processGone(pattern) })
			switch how {
			case "close":
				tn.Close()
			case "cut":
				p.Cut()
			case "kill":
				proc.Kill()
			}
			select {
			case <-proc.Done():
			case <-time.After(15 * time.Second):
				t.Fatal("Process.Done not closed")
			}
			if proc.Wait() == nil {
				t.Error("Wait returned nil for a killed command")
			}
			waitFor(t, 15*time.Second, "remote sleep to die", func() bool { return processGone(pattern) })
		})
	}
}

func TestStartSignal(t *testing.T) {
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	proc, err := tn.Start(context.Background(), "trap 'echo got-term >&2; exit 7' TERM; while :; do sleep 0.1; done", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := proc.Signal(os.Interrupt); err != nil { // SIGINT
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	select {
	case <-proc.Done():
		// A non-interactive shell may exit on SIGINT; fine.
	default:
	}
	proc.Kill()
	var ee *ExitError
	if err := proc.Wait(); err == nil || errors.As(err, &ee) && ee.Status == 0 {
		t.Fatalf("Wait after Kill: %v", err)
	}
}

// TestRemoteQemuNBD is the lead's use: qemu-nbd started on the "control
// plane" through the tunnel, served through a forward, and gone after
// Close.
func TestRemoteQemuNBD(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd is not installed")
	}
	s := sshtest.Start(t)
	tn := dial(t, config(t, s))
	ctx := context.Background()
	dir := t.TempDir()
	img, sock := filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "qemu-nbd.sock")
	if _, _, err := tn.Run(ctx, ShellQuote("qemu-img", "create", "-q", "-f", "qcow2", img, "16M"), nil); err != nil {
		t.Fatal(err)
	}
	proc, err := tn.Start(ctx, ShellQuote("qemu-nbd", "--persistent", "--shared=4", "-f", "qcow2", "-k", sock, img), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := nbdtest.WaitUnix(sock, 10*time.Second); err != nil {
		t.Fatalf("qemu-nbd: %v (%s)", err, proc.Stderr())
	}
	f, err := tn.ForwardUnix(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	h, err := nbd.Dial(f.URI())
	if err != nil {
		t.Fatalf("%v (qemu-nbd: %s)", err, proc.Stderr())
	}
	data := randomBytes(1 << 20)
	if err := h.Pwrite(data, 4<<20, 0); err != nil {
		t.Fatal(err)
	}
	h.Flush(0)
	got := make([]byte, len(data))
	if err := h.Pread(got, 4<<20, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	h.Close()
	tn.Close()
	select {
	case <-proc.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("qemu-nbd still running after Close")
	}
	waitFor(t, 10*time.Second, "qemu-nbd to exit", func() bool { return processGone("^qemu-nbd .*" + sock) })
	// The image holds the data.
	out, err := exec.Command("qemu-img", "compare", "-q", "-f", "qcow2", img, img).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare: %v %s", err, out)
	}
}
