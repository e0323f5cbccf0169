// Package nbdtest starts real NBD servers (nbdkit) for tests.
package nbdtest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// NBDKit starts "nbdkit -f -U SOCKET args..." for the test, waits until
// it accepts connections and returns the socket path and its URI. The
// server is killed when the test ends; the test is skipped if nbdkit is
// not installed.
func NBDKit(t testing.TB, args ...string) (sock, uri string) {
	t.Helper()
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Skip("nbdkit is not installed")
	}
	sock = filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command("nbdkit", append([]string{"--exit-with-parent", "-f", "-U", sock}, args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := WaitUnix(sock, 10*time.Second); err != nil {
		t.Fatalf("nbdkit %v: %v", args, err)
	}
	return sock, "nbd+unix:///?socket=" + sock
}

// WaitUnix waits until the unix socket at path accepts a connection (its
// file appears at bind(), before listen()).
func WaitUnix(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
