package qemu

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// minorFaults is the number of minor page faults of process pid so far.
func minorFaults(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (in parentheses): state is field 3,
	// minflt field 10.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	n, err := strconv.Atoi(f[7])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// qemu-nbd keeps its request buffers in its heap (mallocTunables): 32 MiB
// written with nbdcopy's 64 requests in flight fault far fewer pages in
// than with glibc's defaults, where every request faults its buffer in.
func TestServeMallocTunables(t *testing.T) {
	requireQemu(t)
	if _, err := exec.LookPath("nbdcopy"); err != nil {
		t.Skip("nbdcopy is not installed (Debian package libnbd-bin)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	data := filepath.Join(dir, "data.raw")
	p := make([]byte, 32*mib)
	rand.Read(p)
	if err := os.WriteFile(data, p, 0o600); err != nil {
		t.Fatal(err)
	}
	// faults writes data through srv and returns the server's page faults.
	faults := func(uri string, pid int) int {
		before := minorFaults(t, pid)
		if out, err := exec.Command("nbdcopy", "--requests=64", data, uri).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy: %v: %s", err, out)
		}
		return minorFaults(t, pid) - before
	}

	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	for _, img := range []string{a, b} {
		if err := CreateImage(ctx, img, 32*mib, ""); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := ServeNBD(ctx, a, ServeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ours := faults(srv.URI(), srv.Pid())

	// The same server with glibc's defaults.
	sock := filepath.Join(dir, "b.sock")
	base, err := LocalRunner{}.Start("qemu-nbd", "--persistent", "--socket="+sock, "--cache=none", "--aio=threads", "--format=qcow2", b)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { base.Signal(syscall.SIGTERM); base.Wait() }()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 1000 {
			t.Fatal("qemu-nbd did not create its socket")
		}
		select {
		case <-base.Done():
			t.Fatalf("qemu-nbd exited: %v", base.Wait())
		default:
			syscall.Nanosleep(&syscall.Timespec{Nsec: 10e6}, nil)
		}
	}
	defaults := faults("nbd+unix:///?socket="+sock, base.Pid())
	t.Logf("page faults writing 32 MiB: %d with the tunables, %d with glibc's defaults", ours, defaults)
	if ours*3 > defaults {
		t.Fatalf("%d page faults with the tunables, %d without: the tunables did not take", ours, defaults)
	}
}
