package tests

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/capture/internal/lab"
)

// mountExport is an "export" line of mount --json.
type mountExport struct {
	Type     string `json:"message_type"`
	Disk     int32  `json:"disk"`
	Capacity uint64 `json:"capacity"`
	URI      string `json:"uri"`
	Writable bool   `json:"writable"`
	Backup   string `json:"backup"`
}

// mounted is a running sendense mount.
type mounted struct {
	cmd     *exec.Cmd
	exports map[int32]mountExport
	stderr  *strings.Builder
}

// mount starts sendense mount --json with args and waits for "ready".
func (b *backupLab) mount(env []string, args ...string) *mounted {
	b.t.Helper()
	cmd := b.cmd(env, append([]string{"mount", "--json"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.t.Fatal(err)
	}
	m := &mounted{cmd: cmd, exports: map[int32]mountExport{}, stderr: &strings.Builder{}}
	cmd.Stderr = m.stderr
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var e mountExport
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			b.t.Fatalf("mount: %q: %v", sc.Text(), err)
		}
		if e.Type == "export" {
			m.exports[e.Disk] = e
		}
		if e.Type == "ready" {
			go func() {
				for sc.Scan() {
				}
			}()
			return m
		}
	}
	cmd.Wait()
	b.t.Fatalf("mount %s ended before serving: %s", strings.Join(args, " "), m.stderr)
	return nil
}

// stop interrupts the mount and checks it ends with exit 0.
func (m *mounted) stop(t *testing.T) {
	t.Helper()
	m.cmd.Process.Signal(syscall.SIGINT)
	if err := m.cmd.Wait(); err != nil {
		t.Fatalf("mount after SIGINT: %v\n%s", err, m.stderr)
	}
}

// nbdcopyTo copies the export at uri into a new file and returns it.
func nbdcopyTo(t *testing.T, dir, uri string) string {
	t.Helper()
	dst := filepath.Join(dir, fmt.Sprintf("copy-%d.raw", time.Now().UnixNano()))
	run(t, "nbdcopy", uri, dst)
	return dst
}

// repoDigest is the path, size and modification time of every file of
// the repository: what mount must never change.
func repoDigest(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && !strings.HasSuffix(p, ".lock") {
			fmt.Fprintf(&b, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
		}
		return nil
	})
	return b.String()
}

// TestMount: a two-point chain of a multi-disk VM is served read-only
// (every disk byte-identical to the backup, via nbdcopy and cmp), then
// writable (writes visible through the export, the repository untouched,
// the next mount sees the point again); a bad listen address, TCP off
// loopback without TLS and a damaged image are refused.
func TestMount(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{multiDiskVM})
	r1 := b.backup("db")
	b.write("db", 2000, 3*mib, 2*mib, 99)
	r2 := b.backup("db")

	// Read-only: every disk of the older point, and of the latest.
	for _, id := range []string{r1.BackupID, r2.BackupID} {
		m := b.mount(nil, "db", "--backup", id)
		if len(m.exports) != 3 {
			t.Fatalf("mount %s: %d exports, want 3", id, len(m.exports))
		}
		for key, want := range b.expected["db"][id] {
			e := m.exports[key]
			if e.Writable || e.Backup != id || !strings.HasPrefix(e.URI, "nbd+unix:///") {
				t.Fatalf("export %+v", e)
			}
			info := run(t, "nbdinfo", "--json", e.URI)
			if !strings.Contains(info, `"is_read_only": true`) {
				t.Fatalf("disk %d is not read-only:\n%s", key, info)
			}
			run(t, "cmp", want, nbdcopyTo(t, b.dir, e.URI))
		}
		m.stop(t)
	}

	// Writable, one disk, on loopback TCP.
	before := repoDigest(t, b.repo)
	port := freePort(t)
	m := b.mount(nil, "db", "--disk", "2000", "--writable", "--listen", fmt.Sprintf("tcp:127.0.0.1:%d", port))
	e := m.exports[2000]
	if len(m.exports) != 1 || !e.Writable || e.URI != fmt.Sprintf("nbd://127.0.0.1:%d/2000", port) {
		t.Fatalf("export %+v", e)
	}
	pattern := filepath.Join(b.dir, "pattern")
	os.WriteFile(pattern, []byte(strings.Repeat("sendense", 8192)), 0o600) // 64 KiB
	run(t, "nbdcopy", pattern, e.URI)
	got := nbdcopyTo(t, b.dir, e.URI)
	run(t, "cmp", "-n", "65536", pattern, got)
	run(t, "cmp", "-i", "65536", b.expected["db"][r2.BackupID][2000], got)
	m.stop(t)
	if after := repoDigest(t, b.repo); after != before {
		t.Fatalf("a writable mount changed the repository:\n%s\nbefore:\n%s", after, before)
	}
	m = b.mount(nil, "db", "--disk", "2000")
	run(t, "cmp", b.expected["db"][r2.BackupID][2000], nbdcopyTo(t, b.dir, m.exports[2000].URI))
	m.stop(t)

	// TLS: nbds:// with the CA works, plain NBD is refused.
	tlsDir := filepath.Join(b.dir, "tls")
	writeTLSDir(t, tlsDir)
	port = freePort(t)
	m = b.mount(nil, "db", "--disk", "2001", "--listen", fmt.Sprintf("tcp:127.0.0.1:%d", port), "--tls-creds", tlsDir)
	e = m.exports[2001]
	if e.URI != fmt.Sprintf("nbds://127.0.0.1:%d/2001", port) {
		t.Fatalf("export %+v", e)
	}
	run(t, "cmp", b.expected["db"][r2.BackupID][2001], nbdcopyTo(t, b.dir, e.URI+"?tls-certificates="+tlsDir))
	if out, err := exec.Command("nbdinfo", fmt.Sprintf("nbd://127.0.0.1:%d/2001", port)).CombinedOutput(); err == nil {
		t.Errorf("a plain NBD client read a TLS export:\n%s", out)
	}
	m.stop(t)

	// Refused.
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"db", "--listen", "tcp:0.0.0.0:10809"}, 2, "needs TLS"},
		{[]string{"db", "--listen", "bogus"}, 2, "unix:PATH or tcp:HOST:PORT"},
		{[]string{"db", "--disk", "2042"}, 1, "has no disk 2042"},
		{[]string{"db", "--listen", "unix:" + pattern}, 1, "the file exists"},
	} {
		out, errOut, code := b.run(nil, append([]string{"mount"}, c.args...)...)
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("mount %v: exit %d, want %d with %q:\n%s%s", c.args, code, c.code, c.msg, out, errOut)
		}
	}
	// A missing image of the chain: nothing is served.
	matches, _ := filepath.Glob(filepath.Join(b.repo, "*", r1.BackupID+"-disk2001.qcow2"))
	if len(matches) != 1 {
		t.Fatalf("the full's image of disk 2001: %v", matches)
	}
	os.Remove(matches[0])
	if out, errOut, code := b.run(nil, "mount", "db", "--disk", "2001"); code != 1 || !strings.Contains(errOut, "cannot be opened") {
		t.Errorf("mount of a damaged chain: exit %d:\n%s%s", code, out, errOut)
	}
}

// freePort is a TCP port free on loopback a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	out := run(t, "python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
	var p int
	fmt.Sscan(out, &p)
	return p
}

// TestMountSSH: a point of an ssh:// repository is served on this machine
// through the tunnel, read-only and writable, byte-identical.
func TestMountSSH(t *testing.T) {
	b := startRemoteLab(t, []lab.VMSpec{{Name: "web", PowerOn: true, Disks: []lab.DiskSpec{
		{Capacity: 16 * mib, Data: 4 * mib, Seed: 31}}}})
	r1 := b.backup("web")
	b.write("web", 2000, 8*mib, 1*mib, 32)
	b.backup("web")
	before := repoDigest(t, b.repo)
	for _, extra := range [][]string{{"--backup", r1.BackupID}, {"--backup", r1.BackupID, "--writable"}} {
		m := b.mount(nil, append([]string{"web"}, extra...)...)
		run(t, "cmp", b.expected["web"][r1.BackupID][2000], nbdcopyTo(t, b.dir, m.exports[2000].URI))
		m.stop(t)
	}
	if after := repoDigest(t, b.repo); after != before {
		t.Fatalf("mount changed the repository")
	}
}

// writeTLSDir writes a CA and a server certificate for 127.0.0.1 signed
// by it into dir, in QEMU's layout (ca-cert.pem, server-cert.pem,
// server-key.pem).
func writeTLSDir(t *testing.T, dir string) {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	pemFile := func(name, typ string, der []byte) {
		b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sendense test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	caCert, _ := x509.ParseCertificate(caDER)
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	pemFile("ca-cert.pem", "CERTIFICATE", caDER)
	pemFile("server-cert.pem", "CERTIFICATE", srvDER)
	pemFile("server-key.pem", "PRIVATE KEY", keyDER)
}
