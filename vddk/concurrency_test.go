package vddk

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Several Disks read concurrently, and several goroutines share one Disk;
// under FAKEVDDK_STRICT=1 the fake aborts the process if two calls ever
// overlap on one handle or two opens/closes overlap.
func TestConcurrentReads(t *testing.T) {
	t.Setenv("FAKEVDDK_STRICT", "1")
	t.Setenv("FAKEVDDK_READ_DELAY_US", "100")
	log := callLog(t)
	const size = 4 << 20
	path := writeFile(t, t.TempDir(), "disk.raw", size, map[int64][]byte{0: randomBytes(30, size)})
	img := fileImage(t, path)

	c, err := testLib.Connect(ConnectParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var disks []Disk
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 { // concurrent opens are serialised by the package
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := c.Open(path, 0)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			disks = append(disks, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(disks) != 4 {
		t.Fatal("opens failed")
	}

	errs := make(chan error, 16)
	for g := range 12 {
		d := disks[g%len(disks)] // three goroutines per Disk
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			for range 150 {
				off := r.Int63n(size)
				n := 1 + r.Intn(200000)
				p := make([]byte, n)
				got, err := d.ReadAt(p, off)
				want := min(int64(n), size-off)
				if int64(got) != want || (err != nil && want == int64(n)) {
					errs <- err
					return
				}
				if !bytes.Equal(p[:got], img[off:off+want]) {
					errs <- errors.New("data differs")
					return
				}
				if r.Intn(10) == 0 {
					if _, err := d.Allocated(uint64(off), 1<<20); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, d := range disks {
		wg.Add(1)
		go func() { defer wg.Done(); d.Close() }()
	}
	wg.Wait()
	if v := grepLines(log(), "FAKEVDDK_VIOLATION"); len(v) > 0 {
		t.Errorf("the fake saw overlapping calls: %q", v)
	}
}

// Different Disks really read in parallel: with 4 ms per Read, 4 disks ×
// 40 reads take about 160 ms in parallel and 640 ms if serialised.
func TestDisksReadInParallel(t *testing.T) {
	t.Setenv("FAKEVDDK_READ_DELAY_US", "4000")
	path := writeFile(t, t.TempDir(), "disk.raw", 1<<20, nil)
	c, err := testLib.Connect(ConnectParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	start := time.Now()
	for range 4 {
		d, err := c.Open(path, 0)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			for range 40 {
				d.ReadAt(p, 0)
			}
		}()
	}
	wg.Wait()
	if el := time.Since(start); el > 450*time.Millisecond {
		t.Errorf("4 disks × 40 reads of 4 ms took %v: reads of different disks are serialised", el)
	}
}

// The check behind TestConcurrentReads works: calls that bypass the Disk
// mutex make the strict fake abort.
func TestStrictDetectsOverlap(t *testing.T) {
	out, err := runChild(t, "TestChildOverlap", "FAKEVDDK_STRICT=1", "FAKEVDDK_READ_DELAY_US=100000")
	if err == nil || !strings.Contains(out, "calls on one VixDiskLibHandle must not overlap") ||
		!strings.Contains(out, "aborting (FAKEVDDK_STRICT is set)") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestChildOverlap(t *testing.T) {
	if !isChild() {
		t.Skip("run by TestStrictDetectsOverlap")
	}
	path := writeFile(t, t.TempDir(), "disk.raw", 1<<20, nil)
	_, dd := openLocal(t, path)
	d := dd.(*disk)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, SectorSize)
			d.read(0, 1, unsafePointer(buf)) // no d.mu: overlapping on purpose
		}()
	}
	wg.Wait()
	t.Fatal("the strict fake did not abort")
}

// FAKEVDDK_FAIL_READ_AFTER=N: the N+1-th Read of the process fails.
func TestFailReadAfter(t *testing.T) {
	out, err := runChild(t, "TestChildFailRead", "FAKEVDDK_FAIL_READ_AFTER=2")
	if err != nil || !strings.Contains(out, "--- PASS: TestChildFailRead") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	out, err = runChild(t, "TestChildFailRead", "FAKEVDDK_FAIL_READ_AFTER=2", "FAKEVDDK_FAIL_READ_COUNT=2")
	if err != nil || !strings.Contains(out, "--- PASS: TestChildFailRead") {
		t.Fatalf("child with count 2: %v\n%s", err, out)
	}
}

func TestChildFailRead(t *testing.T) {
	if !isChild() {
		t.Skip("run by TestFailReadAfter")
	}
	count := 1
	if os.Getenv("FAKEVDDK_FAIL_READ_COUNT") == "2" {
		count = 2
	}
	path := writeFile(t, t.TempDir(), "disk.raw", 1<<20, nil)
	_, d := openLocal(t, path)
	p := make([]byte, 4096)
	for i := 1; i <= 2+count+1; i++ {
		_, err := d.ReadAt(p, 0)
		fail := i > 2 && i <= 2+count
		var e *Error
		switch {
		case fail && (!errors.As(err, &e) || e.Code != CodeFail || !strings.Contains(e.Text, "injected")):
			t.Fatalf("read %d: %v, want the injected VIX_E_FAIL", i, err)
		case !fail && err != nil:
			t.Fatalf("read %d: %v", i, err)
		}
	}
}
