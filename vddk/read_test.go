package vddk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

func TestReadAt(t *testing.T) {
	// 1 MiB + 1000 bytes: the last sector is partial (488 bytes past EOF
	// read as zeroes).
	const fileSize = 1<<20 + 1000
	path := writeFile(t, t.TempDir(), "disk.raw", fileSize, map[int64][]byte{0: randomBytes(1, fileSize)})
	_, d := openLocal(t, path)
	img := fileImage(t, path)
	size := int64(len(img))
	if d.Size() != uint64(size) || size != 1<<20+1024 {
		t.Fatalf("Size = %d, want %d", d.Size(), size)
	}

	for _, tc := range []struct {
		name     string
		off, len int64
	}{
		{"first sector", 0, 512},
		{"aligned 4 KiB", 4096, 4096},
		{"aligned large", 512, 1 << 19},
		{"whole disk", 0, size},
		{"odd head", 1, 511},
		{"odd in one sector", 100, 10},
		{"crosses one boundary", 511, 2},
		{"odd both ends", 700, 5000},
		{"odd head aligned end", 1000, 1048},
		{"aligned head odd end", 2048, 1001},
		{"odd, sector-sized", 3, 512},
		{"last partial sector", fileSize - 200, 200},
		{"beyond file EOF, inside disk", fileSize - 10, 500},
		{"up to the end", size - 1536, 1536},
		{"past the end, aligned", size - 1024, 4096},
		{"past the end, odd", size - 77, 1000},
		{"one byte at the end", size - 1, 1},
		{"at the end", size, 10},
		{"beyond the end", size + 5000, 10},
		{"empty", 12345, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := bytes.Repeat([]byte{0xAA}, int(tc.len))
			n, err := d.ReadAt(p, tc.off)
			want := int64(0)
			if tc.off < size {
				want = min(tc.len, size-tc.off)
			}
			if int64(n) != want {
				t.Fatalf("ReadAt(%d bytes at %d) n = %d, want %d (err %v)", tc.len, tc.off, n, want, err)
			}
			if tc.len > 0 && want < tc.len {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("short read error = %v, want io.EOF", err)
				}
			} else if err != nil {
				t.Fatalf("ReadAt error = %v", err)
			}
			if want > 0 && !bytes.Equal(p[:n], img[tc.off:tc.off+want]) {
				t.Fatalf("ReadAt(%d bytes at %d): data differs from the file", tc.len, tc.off)
			}
			if !bytes.Equal(p[n:], bytes.Repeat([]byte{0xAA}, int(tc.len)-n)) {
				t.Fatalf("ReadAt wrote past n")
			}
		})
	}
	if tail := img[fileSize:]; !bytes.Equal(tail, make([]byte, len(tail))) {
		t.Fatal("padding of the image is not zero")
	}
	if _, err := d.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("ReadAt at a negative offset succeeded")
	}
}

func TestReadAtCallsAndAllocations(t *testing.T) {
	for _, mode := range []string{"async", "sync"} {
		t.Run(mode, func(t *testing.T) {
			fn := "VixDiskLib_ReadAsync "
			if mode == "sync" {
				t.Setenv("FAKEVDDK_NO_ASYNC", "1")
				fn = "VixDiskLib_Read "
			}
			path := writeFile(t, t.TempDir(), "disk.raw", 1<<20, map[int64][]byte{0: randomBytes(2, 1<<20)})
			log := callLog(t)
			_, d := openLocal(t, path)
			buf := make([]byte, 256<<10)
			if _, err := d.ReadAt(buf, 4096); err != nil {
				t.Fatal(err)
			}
			if _, err := d.ReadAt(buf[:5000], 700); err != nil {
				t.Fatal(err)
			}
			var reads []string
			for _, l := range grepLines(log(), fn) {
				if !strings.Contains(l, " result=6 ") { // the refused ReadAsync of "sync"
					reads = append(reads, l)
				}
			}
			want := []string{
				" start=8 num=512 ",                                      // aligned: one call, straight
				" start=1 num=1 ", " start=2 num=9 ", " start=11 num=1 ", // head, middle, tail
			}
			if len(reads) != 4 {
				t.Fatalf("%s calls = %q, want 4", fn, reads)
			}
			for i, w := range want {
				if !strings.Contains(reads[i], w) {
					t.Errorf("read call %d = %q, want %q", i, reads[i], w)
				}
			}

			t.Setenv("FAKEVDDK_LOG", "")
			allocs := testing.AllocsPerRun(100, func() {
				if _, err := d.ReadAt(buf, 65536); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("aligned ReadAt allocates %.1f times per call, want 0", allocs)
			}
		})
	}
}

func TestClosed(t *testing.T) {
	path := writeFile(t, t.TempDir(), "disk.raw", 8192, nil)
	c, d := openLocal(t, path)
	d2, err := c.Open(path, OpenUnbuffered)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := d.ReadAt(make([]byte, 512), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
	if _, err := d.Allocated(0, 512); err == nil {
		t.Error("Allocated after Close succeeded")
	}
	// Closing the connection closes d2 too.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.ReadAt(make([]byte, 512), 0); err == nil {
		t.Error("ReadAt after Connection.Close succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Connection.Close: %v", err)
	}
	if _, err := c.Open(path, 0); err == nil {
		t.Error("Open on a closed connection succeeded")
	}
}

// BenchmarkReadAt compares Disk.ReadAt through the fake VDDK with
// os.File.ReadAt on the same file (256 KiB requests, like nbdcopy).
func BenchmarkReadAt(b *testing.B) {
	const size = 64 << 20
	path := writeFile(b, b.TempDir(), "bench.raw", size, map[int64][]byte{0: randomBytes(40, size)})
	buf := make([]byte, 256<<10)
	b.Run("vddk", func(b *testing.B) {
		_, d := openLocal(b, path)
		b.SetBytes(int64(len(buf)))
		for i := 0; b.Loop(); i++ {
			if _, err := d.ReadAt(buf, int64(i*len(buf))%size); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("file", func(b *testing.B) {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.SetBytes(int64(len(buf)))
		for i := 0; b.Loop(); i++ {
			if _, err := f.ReadAt(buf, int64(i*len(buf))%size); err != nil {
				b.Fatal(err)
			}
		}
	})
}
