package vddk

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Several Disks read concurrently, and several goroutines share one Disk;
// under FAKEVDDK_STRICT=1 the fake aborts the process if two calls ever
// overlap on one handle or two opens/closes overlap. With ReadAsync (the
// default) and with Read only (FAKEVDDK_NO_ASYNC=1: ReadAsync answers
// VIX_E_NOT_SUPPORTED and each Disk falls back to Read).
func TestConcurrentReads(t *testing.T) {
	for _, mode := range []string{"async", "sync"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "sync" {
				t.Setenv("FAKEVDDK_NO_ASYNC", "1")
			}
			testConcurrentReads(t, mode, 4, 3)
		})
	}
}

// Many goroutines share ONE Disk: every read correct, no overlapping
// call, and with ReadAsync many reads in flight at once.
func TestConcurrentReadsOneDisk(t *testing.T) {
	for _, mode := range []string{"async", "sync"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "sync" {
				t.Setenv("FAKEVDDK_NO_ASYNC", "1")
			}
			testConcurrentReads(t, mode, 1, 16)
		})
	}
}

func testConcurrentReads(t *testing.T, mode string, ndisks, perDisk int) {
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
	for range ndisks { // concurrent opens are serialised by the package
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
	if len(disks) != ndisks {
		t.Fatal("opens failed")
	}

	errs := make(chan error, ndisks*perDisk)
	for g := range ndisks * perDisk {
		d := disks[g%len(disks)]
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
					errs <- fmt.Errorf("ReadAt(%d, %d) = %d, %v", n, off, got, err)
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
	lines := log()
	if v := grepLines(lines, "FAKEVDDK_VIOLATION"); len(v) > 0 {
		t.Errorf("the fake saw overlapping calls: %q", v)
	}
	async, sync := grepLines(lines, "VixDiskLib_ReadAsync "), grepLines(lines, "VixDiskLib_Read ")
	closes := grepLines(lines, "VixDiskLib_Close ")
	if len(closes) != ndisks {
		t.Fatalf("Close calls: %q", closes)
	}
	switch mode {
	case "async":
		if len(sync) != 0 || len(async) < ndisks*perDisk*150 {
			t.Errorf("%d ReadAsync and %d Read calls, want only ReadAsync", len(async), len(sync))
		}
		if n := len(grepLines(lines, "VixDiskLib_Wait ")); n != ndisks {
			t.Errorf("%d Wait calls, want one per Disk before Close", n)
		}
		for _, l := range closes {
			var handle, inflight, max int
			if _, err := fmt.Sscanf(l, "VixDiskLib_Close handle=%d inflight=%d maxinflight=%d", &handle, &inflight, &max); err != nil {
				t.Fatalf("%q: %v", l, err)
			}
			if inflight != 0 {
				t.Errorf("Close with %d reads in flight: %q", inflight, l)
			}
			if max < 2 {
				t.Errorf("at most %d read in flight on one handle, want several: %q", max, l)
			}
		}
	case "sync":
		// One ReadAsync answered VIX_E_NOT_SUPPORTED per Disk, or a few
		// when goroutines raced to it; all the rest went to Read.
		for _, l := range async {
			if !strings.Contains(l, " result=6 ") {
				t.Errorf("ReadAsync with FAKEVDDK_NO_ASYNC: %q", l)
			}
		}
		if len(async) < ndisks || len(async) > ndisks*perDisk*3 || len(sync) < ndisks*perDisk*150 {
			t.Errorf("%d ReadAsync and %d Read calls, want Read after one refused ReadAsync per Disk", len(async), len(sync))
		}
	}
}

// With ReadAsync, reads of one Disk overlap in time: 64 reads of 20 ms
// of latency each (FAKEVDDK_READ_LATENCY_US, which reads in flight
// share) from 16 goroutines take about 160 ms with the fake's 8 threads,
// and at least 1.28 s if serialised (sleeps never end early); the limit
// sits between the two.
func TestAsyncReadsInFlight(t *testing.T) {
	t.Setenv("FAKEVDDK_STRICT", "1")
	t.Setenv("FAKEVDDK_READ_LATENCY_US", "20000")
	t.Setenv("FAKEVDDK_ASYNC_THREADS", "8")
	path := writeFile(t, t.TempDir(), "disk.raw", 1<<20, map[int64][]byte{0: randomBytes(31, 1<<20)})
	img := fileImage(t, path)
	_, d := openLocal(t, path)
	var wg sync.WaitGroup
	start := time.Now()
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			for i := range 4 {
				off := int64(g*4+i) * 4096
				if _, err := d.ReadAt(p, off); err != nil || !bytes.Equal(p, img[off:off+4096]) {
					t.Errorf("ReadAt at %d: %v or wrong data", off, err)
				}
			}
		}()
	}
	wg.Wait()
	if el := time.Since(start); el > 1000*time.Millisecond {
		t.Errorf("64 reads of 20 ms on one Disk took %v: reads are not in flight together", el)
	}
}

// Different Disks really read in parallel: with 4 ms per Read, 4 disks ×
// 40 reads take about 160 ms in parallel and at least 640 ms if
// serialised; the limit sits between the two.
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
	if el := time.Since(start); el > 560*time.Millisecond {
		t.Errorf("4 disks × 40 reads of 4 ms took %v: reads of different disks are serialised", el)
	}
}

// FAKEVDDK_FAIL_READ_AFTER=N: the N+1-th Read or ReadAsync of the process
// fails, and the error carries the fake's text (fetched in the completion
// callback for ReadAsync).
func TestFailReadAfter(t *testing.T) {
	for _, env := range [][]string{
		{"FAKEVDDK_FAIL_READ_AFTER=2"},
		{"FAKEVDDK_FAIL_READ_AFTER=2", "FAKEVDDK_FAIL_READ_COUNT=2"},
		{"FAKEVDDK_FAIL_READ_AFTER=2", "FAKEVDDK_NO_ASYNC=1"},
	} {
		out, err := runChild(t, "TestChildFailRead", env...)
		if err != nil || !strings.Contains(out, "--- PASS: TestChildFailRead") {
			t.Fatalf("child with %q: %v\n%s", env, err, out)
		}
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
