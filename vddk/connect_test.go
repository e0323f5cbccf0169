package vddk

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const secret = "hunter2-Sekr3t"

// lab makes FAKEVDDK_ROOT with [LocalDS_0] vm/disk1.vmdk and the frozen
// content of snapshot-7 beside it; it returns the two contents.
func lab(t *testing.T) (base, snap []byte) {
	t.Helper()
	root := t.TempDir()
	t.Setenv("FAKEVDDK_ROOT", root)
	base = randomBytes(10, 256<<10)
	snap = randomBytes(11, 256<<10)
	writeFile(t, root, "LocalDS_0/vm/disk1-flat.vmdk", int64(len(base)), map[int64][]byte{0: base})
	writeFile(t, root, "LocalDS_0/vm/disk1-snapshot-7-flat.vmdk", int64(len(snap)), map[int64][]byte{0: snap})
	return base, snap
}

func remoteParams() ConnectParams {
	return ConnectParams{
		VM: "vm-42", Server: "127.0.0.1", Port: 443, User: "root", Password: secret,
		Thumbprint: "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD",
		Snapshot:   "snapshot-7", Transports: "nbd:nbdssl", ReadOnly: true,
	}
}

func readAll(t *testing.T, d Disk) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if n, err := d.ReadAt(b, 0); err != nil || n != len(b) {
		t.Fatalf("ReadAt whole disk = %d, %v", n, err)
	}
	return b
}

func TestRemoteSnapshot(t *testing.T) {
	base, snap := lab(t)
	t.Setenv("FAKEVDDK_PASSWORD", secret)
	t.Setenv("FAKEVDDK_THUMBPRINT", "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd")
	log := callLog(t)
	testLogs.reset()
	SetTrace(TraceAll)
	defer SetTrace(TraceOff)

	c, err := testLib.Connect(remoteParams())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Close()
	d, err := c.Open("[LocalDS_0] vm/disk1.vmdk", OpenCompressionSkipZ)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if got := readAll(t, d); !bytes.Equal(got, snap) {
		t.Error("with snapshot-7 the disk does not show the snapshot's content")
	}
	if m := d.TransportMode(); m != "nbd" {
		t.Errorf("TransportMode = %q, want nbd (first of transports)", m)
	}
	d.Close()
	c.Close()

	// Without a snapshot (or with one that froze nothing): the base disk.
	for _, s := range []string{"", "snapshot-99"} {
		p := remoteParams()
		p.Snapshot, p.Transports = s, ""
		c2, err := testLib.Connect(p)
		if err != nil {
			t.Fatal(err)
		}
		d2, err := c2.Open("[LocalDS_0] vm/disk1.vmdk", 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, d2); !bytes.Equal(got, base) {
			t.Errorf("snapshot %q: the disk does not show the base content", s)
		}
		if m := d2.TransportMode(); m != "nbdssl" {
			t.Errorf("TransportMode = %q, want nbdssl", m)
		}
		c2.Close()
	}

	lines := log()
	root := os.Getenv("FAKEVDDK_ROOT")
	for _, want := range []string{
		"VixDiskLib_ConnectEx vmxSpec=moref=vm-42 server=127.0.0.1 port=443 nfcHostPort=0 " +
			"thumbprint=AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD credType=1 user=root " +
			"password=<hidden> readOnly=1 snapshotRef=snapshot-7 transports=nbd:nbdssl conn=",
		"VixDiskLib_Open path=[LocalDS_0] vm/disk1.vmdk file=" +
			filepath.Join(root, "LocalDS_0/vm/disk1-snapshot-7-flat.vmdk") +
			" flags=0x44 READ_ONLY|COMPRESSION_SKIPZ conn=",
		"VixDiskLib_Open path=[LocalDS_0] vm/disk1.vmdk file=" +
			filepath.Join(root, "LocalDS_0/vm/disk1-flat.vmdk") + " flags=0x4 READ_ONLY conn=",
		"VixDiskLib_ConnectEx vmxSpec=moref=vm-42 server=127.0.0.1 port=443 nfcHostPort=0 " +
			"thumbprint=AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD credType=1 user=root " +
			"password=<hidden> readOnly=1 snapshotRef=(null) transports=(null) conn=",
		"VixDiskLib_GetTransportMode handle=",
		"VixDiskLib_Close handle=",
		"VixDiskLib_Disconnect conn=",
	} {
		if len(grepLines(lines, want)) == 0 {
			t.Errorf("no FAKEVDDK_LOG line starting %q in:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	all := strings.Join(lines, "\n") + testLogs.text()
	if strings.Contains(all, secret) {
		t.Error("the password appears in the call log or the Go log")
	}
	if !strings.Contains(testLogs.text(), "call VixDiskLib_ConnectEx(") || !strings.Contains(testLogs.text(), "password=<hidden>") {
		t.Errorf("trace lacks ConnectEx:\n%s", testLogs.text())
	}
}

func TestBadCredentials(t *testing.T) {
	lab(t)
	t.Setenv("FAKEVDDK_PASSWORD", "right")
	t.Setenv("FAKEVDDK_THUMBPRINT", remoteParams().Thumbprint)
	for _, tc := range []struct {
		name string
		edit func(*ConnectParams)
		code uint64
		is   error
		text string
	}{
		{"wrong password", func(p *ConnectParams) {}, CodeHostUserPermissions, ErrLogin,
			"Insufficient permissions in the host operating system"},
		{"no user", func(p *ConnectParams) { p.User = ""; p.Password = "right" }, CodeInvalidArg, ErrInvalidArg,
			"One of the parameters was invalid"},
		{"wrong thumbprint", func(p *ConnectParams) { p.Thumbprint = strings.Replace(p.Thumbprint, "AA:", "AB:", 1) },
			CodeSSLSecurity, ErrSSLSecurity, "SSL security error"},
		{"thumbprint without colons", func(p *ConnectParams) { p.Thumbprint = strings.ReplaceAll(p.Thumbprint, ":", "") },
			CodeSSLSecurity, ErrSSLSecurity, "SSL security error"},
		{"no thumbprint", func(p *ConnectParams) { p.Thumbprint = "" }, CodeSSLSecurity, ErrSSLSecurity, "SSL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testLogs.reset()
			SetTrace(TraceAll)
			defer SetTrace(TraceOff)
			p := remoteParams()
			tc.edit(&p)
			c, err := testLib.Connect(p)
			if err == nil {
				c.Close()
				t.Fatal("Connect succeeded")
			}
			var e *Error
			if !errors.As(err, &e) || e.Code != tc.code || !errors.Is(err, tc.is) || e.Op != "VixDiskLib_ConnectEx" {
				t.Fatalf("Connect error = %#v, want VixError %d", err, tc.code)
			}
			if !strings.Contains(err.Error(), tc.text) || !strings.HasPrefix(err.Error(), "VixDiskLib_ConnectEx: ") {
				t.Errorf("error %q lacks %q", err, tc.text)
			}
			if strings.Contains(err.Error()+testLogs.text(), secret) {
				t.Error("the password leaked into the error or the log")
			}
		})
	}

	// VDDK reports the thumbprint mismatch through its warning function.
	testLogs.reset()
	p := remoteParams()
	p.Thumbprint = "00:11"
	testLib.Connect(p)
	if !strings.Contains(testLogs.text(), "warn: VDDK: SSL: the thumbprint of 127.0.0.1 does not match") {
		t.Errorf("no VDDK warning in the log:\n%s", testLogs.text())
	}

	// Thumbprints compare case-insensitively.
	p = remoteParams()
	p.Password = "right"
	p.Thumbprint = strings.ToLower(p.Thumbprint)
	c, err := testLib.Connect(p)
	if err != nil {
		t.Fatalf("lower-case thumbprint: %v", err)
	}
	c.Close()
}

func TestRemoteWithoutRoot(t *testing.T) {
	t.Setenv("FAKEVDDK_ROOT", "")
	_, err := testLib.Connect(remoteParams())
	if !errors.Is(err, ErrCannotConnect) || !strings.Contains(err.Error(), "FAKEVDDK_ROOT") {
		t.Fatalf("Connect without FAKEVDDK_ROOT = %v", err)
	}
}

func TestOpenMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nosuch.vmdk")
	c, err := testLib.Connect(ConnectParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Open(missing, 0)
	var e *Error
	if !errors.As(err, &e) || e.VixCode() != CodeFileNotFound || !errors.Is(err, ErrFileNotFound) {
		t.Fatalf("Open of a missing file = %v, want VixError 4", err)
	}
	for _, want := range []string{"VixDiskLib_Open: ", "A file was not found", missing, "(VixError 4)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}

	// Remote: the error names the datastore path asked for.
	lab(t)
	rc, err := testLib.Connect(remoteParams())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, err = rc.Open("[LocalDS_0] vm/disk2.vmdk", 0)
	if !errors.Is(err, ErrFileNotFound) || !strings.Contains(err.Error(), "[LocalDS_0] vm/disk2.vmdk") {
		t.Errorf("remote Open of a missing disk = %v", err)
	}
	_, err = rc.Open("/local/path.vmdk", 0)
	if !errors.Is(err, ErrInvalidArg) {
		t.Errorf("remote Open of a local path = %v, want VIX_E_INVALID_ARG", err)
	}
}

func TestLocalFlatSibling(t *testing.T) {
	dir := t.TempDir()
	flat := randomBytes(20, 4096)
	writeFile(t, dir, "d-flat.vmdk", 4096, map[int64][]byte{0: flat})
	writeFile(t, dir, "d.vmdk", 100, map[int64][]byte{0: []byte("# Disk DescriptorFile")})
	_, d := openLocal(t, filepath.Join(dir, "d.vmdk"))
	if got := readAll(t, d); !bytes.Equal(got, flat) {
		t.Error("local d.vmdk does not read its -flat sibling")
	}
	if d.TransportMode() != "file" {
		t.Errorf("local TransportMode = %q, want file", d.TransportMode())
	}
}

// The fake refuses what it cannot read as a disk (a real VDDK reads
// these), rather than serve the container's bytes as the disk's content.
func TestLocalSparseRefused(t *testing.T) {
	dir := t.TempDir()
	for name, head := range map[string]string{
		"sparse.vmdk":     "KDMV",
		"esx.vmdk":        "COWD",
		"descriptor.vmdk": "# Disk DescriptorFile",
	} {
		p := writeFile(t, dir, name, 65536, map[int64][]byte{0: []byte(head)})
		c, err := testLib.Connect(ConnectParams{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Open(p, 0)
		c.Close()
		if err == nil || !strings.Contains(err.Error(), "reads only flat VMDKs") {
			t.Errorf("Open %s = %v, want the fake's refusal", name, err)
		}
	}
}
