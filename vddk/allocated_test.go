package vddk

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/sendense/capture/internal/extent"
)

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// seekDataMap is what SEEK_DATA/SEEK_HOLE say about path: its data
// ranges, in bytes.
func seekDataMap(t *testing.T, path string) extent.List {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var out []extent.Extent
	fd := int(f.Fd())
	for pos := int64(0); pos < st.Size(); {
		d, err := syscall.Seek(fd, pos, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA: %v", err)
		}
		h, err := syscall.Seek(fd, d, seekHole)
		if err != nil {
			t.Fatalf("SEEK_HOLE: %v", err)
		}
		out = append(out, extent.Extent{Offset: uint64(d), Length: uint64(h - d)})
		pos = h
	}
	return extent.Normalize(out)
}

func TestAllocated(t *testing.T) {
	// Not a multiple of 64 KiB (nor of 512): data at the start, in the
	// middle across a chunk boundary, and in the last partial chunk.
	const size = 10<<20 + 3*512 + 100
	path := writeFile(t, t.TempDir(), "sparse.raw", size, map[int64][]byte{
		0:                 randomBytes(3, 1000),
		3<<20 + 65536 - 7: randomBytes(4, 100),
		7 << 20:           randomBytes(5, 200000),
		size - 200:        randomBytes(6, 200),
	})
	log := callLog(t)
	_, d := openLocal(t, path)
	if !d.CanQueryAllocated() {
		t.Fatal("CanQueryAllocated = false with the fake")
	}
	want := extent.RoundOut(seekDataMap(t, path), chunkBytes, d.Size())
	if len(want) < 4 {
		t.Fatalf("the filesystem does not keep %s sparse: %v", path, want)
	}
	got, err := d.Allocated(0, d.Size())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Allocated(0, size) = %v, want %v", got, want)
	}
	if g, _ := d.Allocated(0, 1<<62); !reflect.DeepEqual(g, want) {
		t.Errorf("Allocated past the end = %v, want %v", g, want)
	}

	for _, r := range []struct{ off, len uint64 }{
		{1, 10}, {100, 65536}, {65536, 65536}, {3<<20 + 1, 70000}, {3 << 20, 4 << 20},
		{7<<20 + 12345, 1}, {d.Size() - 1, 1}, {d.Size() - 70000, 70000}, {5 << 20, 1 << 20}, {d.Size(), 10},
	} {
		got, err := d.Allocated(r.off, r.len)
		if err != nil {
			t.Fatal(err)
		}
		w := want.Clip(r.off, min(r.len, d.Size()-min(r.off, d.Size())))
		if len(got) != 0 || len(w) != 0 {
			if !reflect.DeepEqual(got, w) {
				t.Errorf("Allocated(%d, %d) = %v, want %v", r.off, r.len, got, w)
			}
		}
	}

	// Every query was whole chunks of 128 sectors inside the capacity.
	whole := d.Size() / SectorSize / chunkSectors * chunkSectors
	for _, l := range grepLines(log(), "VixDiskLib_QueryAllocatedBlocks ") {
		var h, start, num, chunk, blocks, res uint64
		if _, err := fmt.Sscanf(l, "VixDiskLib_QueryAllocatedBlocks handle=%d start=%d num=%d chunk=%d blocks=%d result=%d",
			&h, &start, &num, &chunk, &blocks, &res); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if chunk != chunkSectors || start%chunk != 0 || num%chunk != 0 || start+num > whole || res != 0 {
			t.Errorf("bad query: %s", l)
		}
	}
}

func TestAllocatedTail(t *testing.T) {
	// The final partial chunk cannot be queried (VDDK rejects ranges past
	// the capacity): it is reported allocated even when it is a hole.
	const size = 2*chunkBytes + 4096
	path := writeFile(t, t.TempDir(), "tail.raw", size, map[int64][]byte{0: []byte("x")})
	_, d := openLocal(t, path)
	got, err := d.Allocated(0, size)
	want := extent.List{{Offset: 0, Length: chunkBytes}, {Offset: 2 * chunkBytes, Length: 4096}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Allocated = %v, %v; want %v", got, err, want)
	}

	// A disk smaller than one chunk: everything is the tail.
	small := writeFile(t, t.TempDir(), "small.raw", 1000, nil)
	_, d2 := openLocal(t, small)
	got, err = d2.Allocated(0, 1<<20)
	if err != nil || !reflect.DeepEqual(got, extent.List{{Offset: 0, Length: 1024}}) {
		t.Fatalf("Allocated(small) = %v, %v", got, err)
	}
}

func TestAllocatedLarge(t *testing.T) {
	// 40 GiB sparse: more than 512×1024 chunks, so two calls.
	const size = 40 << 30
	path := writeFile(t, t.TempDir(), "big.raw", size, map[int64][]byte{
		0:            []byte("start"),
		33<<30 + 512: []byte("middle"),
		size - 1:     []byte("e"),
	})
	log := callLog(t)
	_, d := openLocal(t, path)
	got, err := d.Allocated(0, size)
	if err != nil {
		t.Fatal(err)
	}
	want := extent.RoundOut(seekDataMap(t, path), chunkBytes, size)
	if !reflect.DeepEqual(got, want) || len(want) != 3 {
		t.Fatalf("Allocated = %v, want %v (3 extents)", got, want)
	}
	var queries []string
	for _, l := range grepLines(log(), "VixDiskLib_QueryAllocatedBlocks ") {
		if !strings.Contains(l, " num=128 ") { // skip Open's probe
			queries = append(queries, l)
		}
	}
	const callSectors = maxChunks * chunkSectors // 32 GiB
	if len(queries) != 2 ||
		!strings.Contains(queries[0], fmt.Sprintf(" start=0 num=%d chunk=128 ", callSectors)) ||
		!strings.Contains(queries[1], fmt.Sprintf(" start=%d num=%d chunk=128 ", callSectors, size/SectorSize-callSectors)) {
		t.Fatalf("queries = %q", queries)
	}
	// A range inside the second call only.
	if got, _ := d.Allocated(34<<30, 1<<30); len(got) != 0 {
		t.Errorf("Allocated(34 GiB, 1 GiB) = %v, want nothing", got)
	}
}

func TestNoQueryAllocated(t *testing.T) {
	t.Setenv("FAKEVDDK_NO_QUERY_ALLOCATED", "1")
	path := writeFile(t, t.TempDir(), "sparse.raw", 1<<20, map[int64][]byte{0: []byte("x")})
	_, d := openLocal(t, path)
	if d.CanQueryAllocated() {
		t.Error("CanQueryAllocated with FAKEVDDK_NO_QUERY_ALLOCATED=1")
	}
	got, err := d.Allocated(1000, 1<<30)
	if err != nil || !reflect.DeepEqual(got, extent.List{{Offset: 1000, Length: 1<<20 - 1000}}) {
		t.Fatalf("Allocated = %v, %v; want everything", got, err)
	}
}
