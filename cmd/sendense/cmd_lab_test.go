package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/lab"
)

func TestLabOptionsCheck(t *testing.T) {
	for _, tc := range []struct {
		opts labOptions
		bad  string
	}{
		{labOptions{Listen: "127.0.0.1:0", BlockSize: "64K", PageLimit: 2000}, ""},
		{labOptions{Listen: "127.0.0.1:0", BlockSize: "1M", PageLimit: 1}, ""},
		{labOptions{Listen: "127.0.0.1:0", BlockSize: "3K", PageLimit: 1}, "--block-size"},
		{labOptions{Listen: "127.0.0.1:0", BlockSize: "256", PageLimit: 1}, "--block-size"},
		{labOptions{Listen: "127.0.0.1:0", BlockSize: "64K", PageLimit: 0}, "--page-limit"},
		{labOptions{Listen: "nope", BlockSize: "64K", PageLimit: 1}, "--listen"},
	} {
		err := tc.opts.Check()
		if (tc.bad == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.bad)) {
			t.Errorf("Check(%+v) = %v, want error %q", tc.opts, err, tc.bad)
		}
	}
}

func TestShellQuote(t *testing.T) {
	in := `it's a "path" with $x`
	out, err := exec.Command("sh", "-c", "printf %s "+shellQuote(in)).Output()
	if err != nil || string(out) != in {
		t.Fatalf("shellQuote round trip: %q %v", out, err)
	}
}

func TestRunLab(t *testing.T) {
	dir := t.TempDir()
	env := filepath.Join(dir, "lab.env")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readyc := make(chan labReady, 1)
	opts := labOptions{Env: env, Dir: filepath.Join(dir, "lab"), Listen: "127.0.0.1:0", BlockSize: "64K", PageLimit: 2000,
		ready:      func(r labReady) { readyc <- r },
		executable: func() (string, error) { return "/opt/sendense/build/sendense", nil }}
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- runLab(ctx, opts, globalOptions{}, &stdout, &stderr) }()
	var r labReady
	select {
	case r = <-readyc:
	case err := <-done:
		t.Fatalf("runLab: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("lab not ready")
	}

	banner := stdout.String()
	for _, want := range []string{"SIMULATOR", r.URL, lab.User, r.PasswordFile, r.Thumbprint, "/opt/sendense/build/fakevddk", r.DatastoreRoot, "lab-multi"} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	// The env file, sourced by a shell.
	out, err := exec.Command("sh", "-c", `. "$1" && echo "$SENDENSE_VCENTER_URL|$SENDENSE_VCENTER_USER|$SENDENSE_VCENTER_THUMBPRINT|$SENDENSE_VDDK_LIBDIR|$FAKEVDDK_ROOT|$SENDENSE_LAB_SOCKET" && cat "$SENDENSE_VCENTER_PASSWORD_FILE"`, "sh", env).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{r.URL, lab.User, r.Thumbprint, "/opt/sendense/build/fakevddk", r.DatastoreRoot, r.Socket}, "|") + "\n" + lab.Password + "\n"
	if string(out) != want {
		t.Fatalf("env file gives %q, want %q", out, want)
	}
	if st, err := os.Stat(r.PasswordFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("password file mode: %v %v", st.Mode(), err)
	}

	copts := labClientOptions{Socket: r.Socket}
	call := func(req lab.Request) string {
		t.Helper()
		var b bytes.Buffer
		if err := runLabClient(ctx, copts, globalOptions{}, &b, req); err != nil {
			t.Fatalf("%s: %v", req.Op, err)
		}
		return b.String()
	}
	if out := call(lab.Request{Op: lab.OpDisks, VM: "lab-small"}); !strings.HasPrefix(out, "2000\t67108864\t"+r.DatastoreRoot) {
		t.Fatalf("disks: %q", out)
	}
	if out := call(lab.Request{Op: lab.OpWrite, VM: "lab-small", Key: 2000, Offset: 0, Length: 4096, Seed: 1}); !strings.Contains(out, "wrote 4096 bytes") {
		t.Fatalf("write: %q", out)
	}
	var b bytes.Buffer
	if err := runLabClient(ctx, copts, globalOptions{JSON: true}, &b, lab.Request{Op: lab.OpVMs}); err != nil || !strings.Contains(b.String(), `"message_type":"summary"`) {
		t.Fatalf("--json vms: %s %v", b.String(), err)
	}
	if err := runLabClient(ctx, copts, globalOptions{}, &b, lab.Request{Op: lab.OpWrite, VM: "nope", Key: 2000, Length: 1}); err == nil {
		t.Fatal("write to an unknown VM accepted")
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("runLab: %v", err)
	}
	for _, p := range []string{env, r.Socket, r.PasswordFile, r.DatastoreRoot} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after the lab stopped: %v", p, err)
		}
	}
	if err := runLabClient(context.Background(), copts, globalOptions{}, &b, lab.Request{Op: lab.OpVMs}); err == nil || !strings.Contains(err.Error(), "is `sendense lab` running") {
		t.Fatalf("client with the lab stopped: %v", err)
	}
}

func TestLabCommandLine(t *testing.T) {
	var stdout, stderr bytes.Buffer
	t.Setenv("SENDENSE_LAB_SOCKET", "")
	if code := run(context.Background(), []string{"lab", "write", "lab-small", "2000", "0", "1"}, &stdout, &stderr); code != exitUsage ||
		!strings.Contains(stderr.String(), "SENDENSE_LAB_SOCKET") {
		t.Fatalf("no socket: exit %d, %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"lab", "write", "--socket", "/nonexistent", "lab-small", "x", "0", "1"}, &stdout, &stderr); code != exitUsage {
		t.Fatalf("bad key: exit %d, %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"lab", "cbt", "--socket", "/nonexistent", "lab-small", "maybe"}, &stdout, &stderr); code != exitUsage {
		t.Fatalf("bad cbt state: exit %d, %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"lab", "vms", "--socket", "/nonexistent"}, &stdout, &stderr); code != exitError ||
		!strings.Contains(stderr.String(), "control socket") {
		t.Fatalf("no lab: exit %d, %s", code, stderr.String())
	}
}
