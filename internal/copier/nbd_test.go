package copier

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/nbdtest"
)

// server starts "nbdkit -f -U SOCKET args..." and returns its URI.
func server(t *testing.T, args ...string) string {
	t.Helper()
	_, uri := nbdtest.NBDKit(t, args...)
	return uri
}

func open(t *testing.T, uri string) *NBD {
	t.Helper()
	n, err := OpenNBD(uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func readAll(t *testing.T, n *NBD) []byte {
	t.Helper()
	p := make([]byte, n.Size())
	for off := 0; off < len(p); off += 16 << 20 {
		if err := n.ReadAt(p[off:min(len(p), off+16<<20)], uint64(off)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestNBDCopy(t *testing.T) {
	const size = 64 << 20
	for _, tc := range []struct {
		name   string
		src    []string
		conns  int
		extent bool
	}{
		{"sparse-random multi-conn", []string{"-r", "sparse-random", "size=64M", "seed=9", "percent=30"}, 4, true},
		{"no block status", []string{"-r", "--filter=noextents", "sparse-random", "size=64M", "seed=9"}, 4, false},
		{"no multi-conn", []string{"-r", "--filter=multi-conn", "sparse-random", "size=64M", "seed=9", "multi-conn-mode=disable"}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := open(t, server(t, tc.src...))
			dst := open(t, server(t, "memory", "size=64M"))
			if !dst.CanZero() || !dst.CanMultiConn() || dst.ReadOnly() || !src.ReadOnly() {
				t.Fatal("unexpected server flags")
			}
			res, err := Copy(context.Background(), src, dst, Options{Connections: 4, Requests: 16, Checksum: true, HashChunks: true})
			if err != nil {
				t.Fatal(err)
			}
			want := readAll(t, src)
			got := readAll(t, dst)
			if !bytes.Equal(got, want) {
				t.Fatal("destination differs from the source")
			}
			if res.Connections != tc.conns || res.SHA256 != sum(want) {
				t.Fatalf("connections %d, checksum %s", res.Connections, res.SHA256)
			}
			if !tc.extent && res.BytesRead != size {
				t.Fatalf("read %d of %d bytes without block status", res.BytesRead, size)
			}
			if tc.extent && res.BytesRead >= size/2 {
				t.Fatalf("read %d bytes: block status was not used", res.BytesRead)
			}
			var pos uint64
			for _, c := range res.Chunks {
				if c.Offset != pos || c.Kind == ChunkData && c.SHA256 != sum(want[c.Offset:c.Offset+c.Length]) {
					t.Fatalf("chunk %+v", c)
				}
				pos += c.Length
			}
			if pos != size || !equalList(res.Completed, extent.List{{Offset: 0, Length: size}}) {
				t.Fatalf("chunks cover %d bytes, completed %v", pos, res.Completed)
			}
		})
	}
}

func equalList(a, b extent.List) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNBDCopyWriteError(t *testing.T) {
	src := open(t, server(t, "-r", "sparse-random", "size=32M", "seed=2", "percent=80"))
	dst := open(t, server(t, "--filter=error", "memory", "size=32M", "error=ENOSPC", "error-pwrite-rate=0.3"))
	res, err := Copy(context.Background(), src, dst, Options{Requests: 8, RequestSize: 64 << 10})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
	if res == nil || res.Completed.Bytes() >= 32<<20 {
		t.Fatalf("result %+v", res)
	}
	// The connections are still usable: nothing is left in flight.
	if err := dst.Flush(); err != nil {
		t.Fatal(err)
	}
}
