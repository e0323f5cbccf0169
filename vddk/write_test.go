package vddk

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Writes of any alignment, from many goroutines on one Disk at once: the
// file holds exactly what was written (whole sectors straight through
// WriteAsync, partial ones read, patched and written back), with no
// overlapping call on the handle (FAKEVDDK_STRICT aborts on one).
func TestWriteAt(t *testing.T) {
	for _, mode := range []string{"async", "sync"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "sync" {
				t.Setenv("FAKEVDDK_NO_ASYNC", "1")
			}
			t.Setenv("FAKEVDDK_STRICT", "1")
			log := callLog(t)
			const size = 1 << 20
			path := writeFile(t, t.TempDir(), "disk.raw", size, nil)
			_, d := openLocal(t, path)
			if d.ReadOnly() {
				t.Fatal("a disk opened without OpenReadOnly is read-only")
			}
			want := make([]byte, size)
			var wg sync.WaitGroup
			var mu sync.Mutex
			// 64 writes covering [0, 1 MiB) without overlapping, their
			// boundaries mostly inside sectors, so that neighbours share a
			// sector (the read-modify-write must lose neither).
			bound := func(i int) int64 {
				if i%4 == 0 {
					return int64(i) * 16384
				}
				return int64(i)*16384 + int64(i*97%512)
			}
			for i := range 64 {
				off := bound(i)
				n := int(bound(i+1) - off)
				b := randomBytes(int64(100+i), n)
				copy(want[off:], b)
				wg.Add(1)
				go func() {
					defer wg.Done()
					if k, err := d.WriteAt(b, off); err != nil || k != n {
						mu.Lock()
						t.Errorf("WriteAt(%d bytes at %d) = %d, %v", n, off, k, err)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			got := make([]byte, size)
			if _, err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Error("ReadAt after the writes differs from what was written")
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			file, _ := os.ReadFile(path)
			if !bytes.Equal(file, want) {
				t.Error("the file differs from what was written")
			}
			lines := log()
			fn := "VixDiskLib_WriteAsync "
			if mode == "sync" {
				fn = "VixDiskLib_Write "
			}
			if len(grepLines(lines, fn)) == 0 || len(grepLines(lines, "VixDiskLib_Flush ")) != 1 {
				t.Errorf("want %s and one Flush in the call log:\n%s", fn, strings.Join(lines, "\n"))
			}
			if strings.Contains(strings.Join(lines, "\n"), "VIOLATION") {
				t.Errorf("overlapping calls:\n%s", strings.Join(lines, "\n"))
			}
		})
	}
}

func TestWriteErrors(t *testing.T) {
	path := writeFile(t, t.TempDir(), "disk.raw", 64<<10, nil)
	c, err := testLib.Connect(ConnectParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ro, err := c.Open(path, OpenReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.WriteAt(make([]byte, 512), 0); !errors.Is(err, ErrReadOnly) || !errors.Is(err, syscall.EPERM) {
		t.Errorf("WriteAt on a read-only disk = %v", err)
	}
	if err := ro.Flush(); err != nil {
		t.Errorf("Flush of a read-only disk = %v", err)
	}
	ro.Close()

	rw, err := c.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if _, err := rw.WriteAt(make([]byte, 1024), 64<<10-512); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("WriteAt past the end = %v", err)
	}
	if _, err := rw.WriteAt(make([]byte, 1), -1); err == nil {
		t.Error("WriteAt at -1 succeeded")
	}

	// A full datastore: VIX_E_DISK_FULL, which clients see as ENOSPC.
	t.Setenv("FAKEVDDK_FAIL_WRITE_AFTER", "0")
	full, err := c.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	_, err = full.WriteAt(make([]byte, 4096), 0)
	var e *Error
	if !errors.As(err, &e) || e.VixCode() != CodeDiskFull || e.Errno() != syscall.ENOSPC ||
		!strings.Contains(err.Error(), "VixDiskLib_WriteAsync") {
		t.Errorf("write to a full disk = %v", err)
	}
}

// The connection's readOnly wins over the open flags.
func TestReadOnlyConnection(t *testing.T) {
	log := callLog(t)
	path := writeFile(t, t.TempDir(), "disk.raw", 64<<10, nil)
	c, err := testLib.Connect(ConnectParams{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !d.ReadOnly() {
		t.Error("a disk of a read-only connection is writable")
	}
	if _, err := d.WriteAt(make([]byte, 512), 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAt = %v", err)
	}
	lines := log()
	if len(grepLines(lines, "VixDiskLib_ConnectEx vmxSpec=(null) server=(null)")) != 1 ||
		!strings.Contains(strings.Join(grepLines(lines, "VixDiskLib_ConnectEx"), ""), "readOnly=1") ||
		!strings.Contains(strings.Join(grepLines(lines, "VixDiskLib_Open "), ""), "flags=0x4 READ_ONLY") {
		t.Errorf("call log:\n%s", strings.Join(lines, "\n"))
	}
}

func TestCreate(t *testing.T) {
	log := callLog(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "new.vmdk")
	c, err := testLib.Connect(ConnectParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := CreateParams{Type: DiskMonolithicSparse, Adapter: AdapterSCSIBusLogic, HWVersion: HWVersionWorkstation5, Size: 10 << 20}
	if err := c.Create(path, p); err != nil {
		t.Fatal(err)
	}
	desc, _ := os.ReadFile(path)
	for _, want := range []string{`createType="monolithicFlat"`, `RW 20480 FLAT "new-flat.vmdk" 0`,
		`ddb.adapterType = "buslogic"`, `ddb.virtualHWVersion = "4"`, `ddb.fakevddk.createType = "monolithicSparse"`} {
		if !strings.Contains(string(desc), want) {
			t.Errorf("descriptor lacks %q:\n%s", want, desc)
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "new-flat.vmdk")); err != nil || st.Size() != 10<<20 {
		t.Errorf("flat file: %v, %v", st, err)
	}
	d, err := c.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 10<<20 {
		t.Errorf("Size = %d", d.Size())
	}
	if _, err := d.WriteAt([]byte("created"), 1<<20); err != nil {
		t.Fatal(err)
	}
	d.Close()

	// Never over an existing disk.
	if err := c.Create(path, p); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("Create over an existing disk = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "new-flat.vmdk")); !bytes.Contains(b, []byte("created")) {
		t.Error("the second Create touched the existing disk")
	}
	for _, bad := range []CreateParams{{Type: DiskMonolithicSparse, Adapter: AdapterIDE, Size: 1000}, {Type: 99, Adapter: AdapterIDE, Size: 512}} {
		if err := c.Create(filepath.Join(dir, "bad.vmdk"), bad); err == nil {
			t.Errorf("Create(%+v) succeeded", bad)
		}
	}
	if line := grepLines(log(), "VixDiskLib_Create path="+path); len(line) == 0 ||
		!strings.Contains(line[0], "type=1 adapter=2 hwVersion=4 capacity=20480 result=0") {
		t.Errorf("Create log line: %q", line)
	}

	// VDDK creates local disks only.
	lab(t)
	rc, err := testLib.Connect(ConnectParams{VM: "vm-1", Server: "vc", User: "u"})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := rc.Create("[LocalDS_0] vm/new.vmdk", p); !errors.Is(err, ErrNotSupported) {
		t.Errorf("remote Create = %v", err)
	}
}

// A session cookie logs in with VIXDISKLIB_CRED_SESSIONID (cookie, user,
// password as the key); no secret reaches the call log.
func TestCookie(t *testing.T) {
	lab(t)
	t.Setenv("FAKEVDDK_COOKIE", "vmware_soap_session=abc")
	log := callLog(t)
	p := ConnectParams{VM: "vm-1", Server: "vc", User: "u", Password: "key-pw", Cookie: "vmware_soap_session=abc"}
	c, err := testLib.Connect(p)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	p.Cookie = "vmware_soap_session=wrong"
	if _, err := testLib.Connect(p); !errors.Is(err, ErrLogin) {
		t.Errorf("wrong cookie = %v", err)
	}
	text := strings.Join(log(), "\n")
	if !strings.Contains(text, "credType=2 user=u password=<hidden> cookie=<hidden>") {
		t.Errorf("call log:\n%s", text)
	}
	if strings.Contains(text, "abc") || strings.Contains(text, "key-pw") {
		t.Errorf("a secret in the call log:\n%s", text)
	}
}

// A VDDK may return VIX_OK with a NULL connection handle: it is a handle
// like any other.
func TestNullConnection(t *testing.T) {
	t.Setenv("FAKEVDDK_NULL_CONNECTION", "1")
	path := writeFile(t, t.TempDir(), "disk.raw", 64<<10, map[int64][]byte{0: []byte("null ok")})
	c, d := openLocal(t, path)
	b := make([]byte, 7)
	if _, err := d.ReadAt(b, 0); err != nil || string(b) != "null ok" {
		t.Errorf("ReadAt = %q, %v", b, err)
	}
	d.Close()
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
}

func TestErrno(t *testing.T) {
	for _, tc := range []struct {
		code uint64
		want syscall.Errno
	}{
		{CodeDiskFull, syscall.ENOSPC}, {CodeFileReadOnly, syscall.EPERM}, {CodeHostUserPermissions, syscall.EPERM},
		{CodeInvalidArg, syscall.EINVAL}, {CodeDiskOutOfRange, syscall.EINVAL}, {CodeNotSupported, syscall.ENOTSUP},
		{CodeOutOfMemory, syscall.ENOMEM}, {CodeFileNotFound, syscall.ENOENT}, {CodeFail, syscall.EIO},
		{CodeCannotConnect, syscall.EIO}, {1<<40 | CodeDiskFull, syscall.ENOSPC},
	} {
		e := &Error{Code: tc.code}
		if got := e.Errno(); got != tc.want {
			t.Errorf("Errno(%d) = %v, want %v", tc.code, got, tc.want)
		}
		if got := fmt.Errorf("wrapped: %w", e); !errors.As(got, &e) {
			t.Error("errors.As")
		}
	}
}
