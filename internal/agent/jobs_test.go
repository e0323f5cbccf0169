package agent

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/lockfile"
)

// TestBackupJobs: with max_concurrent_backups = 1 a second job queues;
// progress advances and completes; a second start for a busy VM is a
// 409; an incremental without a previous backup says why it is full;
// cancelling mid-copy leaves no snapshot and no restore point; the list,
// health, cbt-status and metrics reflect it all.
func TestBackupJobs(t *testing.T) {
	e := newEnv(t, []lab.VMSpec{webVM, dbVM})
	a := e.start()
	// Slow reads (20 ms per 256 KiB request) so that progress can be seen.
	t.Setenv("FAKEVDDK_READ_DELAY_US", "20000")

	first := a.startJob(map[string]any{"vm_path": "/DC0/vm/web", "backup_type": "full"})
	second := a.startJob(map[string]any{"vm_path": "/DC0/vm/prod/db", "backup_type": "incremental"})
	a.wait(first, time.Minute, func(v JobView) bool { return v.State == StateRunning })
	if v := a.progress(second); v.State != StateQueued || v.Phase != "queued" {
		t.Fatalf("second job while the first runs: %+v", v)
	}
	var h Health
	a.get("/api/v1/health", http.StatusOK, &h)
	if h.Performance.ActiveJobs != 1 || h.Performance.QueuedJobs != 1 {
		t.Fatalf("health while a job runs and one queues: %+v", h.Performance)
	}
	// One job per VM at a time, whatever the VM is called.
	for _, spec := range []string{"/DC0/vm/web", "web", h2moref(t, a, "/DC0/vm/web"), "/DC0/vm/prod/db"} {
		code, body := a.do("POST", "/api/v1/backup/start", map[string]any{"vm_path": spec})
		if ae := errBody(t, body); code != http.StatusConflict || !strings.Contains(ae.Detail, "DELETE /api/v1/backup/") {
			t.Fatalf("second start of %s: %d %s", spec, code, body)
		}
	}

	// Progress advances: several distinct values while copying, with a
	// rate and an ETA, then 100%.
	var seen []uint64
	var sawETA, sawRate bool
	for v := a.progress(first); v.State.Active(); v = a.progress(first) {
		if v.Phase == phaseCopying && (len(seen) == 0 || v.BytesDone > seen[len(seen)-1]) {
			seen = append(seen, v.BytesDone)
			sawETA = sawETA || v.ETASeconds != nil && *v.ETASeconds > 0
			sawRate = sawRate || v.MiBps > 0
			if v.BytesTotal != 32*mib || len(v.Disks) != 1 || v.Disks[0].Level != "full" || v.Snapshot == "" || v.BackupID == "" {
				t.Fatalf("progress while copying: %+v", v)
			}
		}
		if len(seen) > 1 && seen[len(seen)-1] < seen[len(seen)-2] {
			t.Fatalf("progress went back: %v", seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(seen) < 2 || !sawETA || !sawRate {
		t.Fatalf("progress values seen while copying: %v (eta %v, rate %v)", seen, sawETA, sawRate)
	}
	v1 := a.waitSucceeded(first)
	if v1.Percent != 100 || v1.BytesDone != 32*mib || v1.Phase != phaseDone || v1.Level != "full" || *v1.ETASeconds != 0 || v1.Disks[0].Phase != "done" {
		t.Fatalf("finished job: %+v", v1)
	}
	v2 := a.waitSucceeded(second)
	if v2.Started.Before(*v1.Finished) {
		t.Fatalf("the second job started (%v) before the first ended (%v)", v2.Started, v1.Finished)
	}
	if len(v2.Notices) == 0 || !strings.Contains(strings.Join(v2.Notices, "\n"), "incremental backup requested, but these disks were backed up in full") {
		t.Fatalf("incremental without a previous backup: notices %q", v2.Notices)
	}
	var full JobView
	a.get("/api/v1/backup/"+first, http.StatusOK, &full)
	if full.Report == nil || full.Report.BackupID != v1.BackupID || len(full.Report.Disks) != 1 || full.Report.Disks[0].BytesRead != 16*mib {
		t.Fatalf("job with its report: %+v", full.Report)
	}
	e.noSnapshots("web", "db")

	// An incremental after writes copies what changed; cbt-status shows
	// the changeId the next one starts from.
	t.Setenv("FAKEVDDK_READ_DELAY_US", "")
	if err := e.lab.WriteRandom("web", 2000, 4*mib, mib, 7); err != nil {
		t.Fatal(err)
	}
	incr := a.waitSucceeded(a.startJob(map[string]any{"vm_path": "/DC0/vm/web", "backup_type": "incremental"}))
	var ij JobView
	a.get("/api/v1/backup/"+incr.ID, http.StatusOK, &ij)
	if ij.Level != "incremental" || ij.Report.Disks[0].BytesCopied != mib || len(ij.Notices) != 0 {
		t.Fatalf("incremental: %+v %+v", ij.Job, ij.Report)
	}
	var cs CBTStatus
	a.get("/api/v1/vms/"+esc("/DC0/vm/web")+"/cbt-status", http.StatusOK, &cs)
	if !cs.Enabled || cs.LastBackupID != incr.BackupID || cs.LastChangeID == "" || cs.Disks[0].LastChangeID != cs.LastChangeID {
		t.Fatalf("cbt-status after backups: %+v", cs)
	}

	// Cancel mid-copy: the job ends canceled, the snapshot is removed and
	// no restore point is committed.
	before := e.points("web")
	t.Setenv("FAKEVDDK_READ_DELAY_US", "100000")
	c := a.startJob(map[string]any{"vm_path": "web", "backup_type": "full"})
	a.wait(c, time.Minute, func(v JobView) bool { return v.Phase == phaseCopying && v.BytesDone > 0 })
	if len(e.snapshots("web")) != 1 {
		t.Fatalf("no snapshot while copying: %v", e.snapshots("web"))
	}
	// The agent's cleanups take the orchestrator's VM lock: same file.
	lockPath, err := a.vc.svc.Load().VMLockPath(context.Background(), a.progress(c).VM.Moref)
	if err != nil {
		t.Fatal(err)
	}
	if l, ok, err := lockfile.TryLock(lockPath, true); err != nil || ok {
		if l != nil {
			l.Unlock()
		}
		t.Fatalf("the VM lock %s is not held while a backup runs (%v): vmLockPath no longer matches the orchestrator's", lockPath, err)
	}
	code, body := a.do("DELETE", "/api/v1/backup/"+c, nil)
	if code != http.StatusAccepted || !strings.Contains(string(body), `"cancel_requested":true`) {
		t.Fatalf("cancel: %d %s", code, body)
	}
	vc := a.wait(c, time.Minute, nil)
	if vc.State != StateCanceled || !strings.Contains(vc.Error, "canceled by DELETE") || vc.Finished == nil {
		t.Fatalf("canceled job: %+v", vc)
	}
	e.noSnapshots("web")
	if after := e.points("web"); len(after) != len(before) {
		t.Fatalf("restore points before the canceled job %v, after %v", before, after)
	}
	code, body = a.do("DELETE", "/api/v1/backup/"+c, nil)
	if ae := errBody(t, body); code != http.StatusConflict || ae.Message != "job already ended" {
		t.Fatalf("cancel of a canceled job: %d %s", code, body)
	}
	// A queued job is canceled at once.
	r := a.startJob(map[string]any{"vm_path": "web", "backup_type": "full"})
	q := a.startJob(map[string]any{"vm_path": "db"})
	code, body = a.do("DELETE", "/api/v1/backup/"+q, nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"state":"canceled"`) {
		t.Fatalf("cancel of a queued job: %d %s", code, body)
	}
	a.do("DELETE", "/api/v1/backup/"+r, nil)
	a.wait(r, time.Minute, nil)
	e.noSnapshots("web", "db")

	// The list, newest first, and filtered.
	var list JobList
	a.get("/api/v1/backup", http.StatusOK, &list)
	if len(list.Jobs) != 6 || list.Jobs[0].ID != q || list.Jobs[5].ID != first {
		t.Fatalf("job list: %d jobs, first %s", len(list.Jobs), list.Jobs[0].ID)
	}
	a.get("/api/v1/backup?state=succeeded&vm=web", http.StatusOK, &list)
	if len(list.Jobs) != 2 || list.Jobs[0].ID != incr.ID {
		t.Fatalf("succeeded jobs of web: %+v", list.Jobs)
	}
	a.get("/api/v1/health", http.StatusOK, &h)
	if h.LastBackup == nil || !h.LastBackup.Equal(*incr.Finished) || h.Performance.AvgThroughputMiBps <= 0 || h.Performance.QueuedJobs+h.Performance.ActiveJobs != 0 {
		t.Fatalf("health after the jobs: %+v %+v", h, h.Performance)
	}

	m := a.metrics()
	for name, want := range map[string]float64{
		`sendense_backup_jobs_total{state="succeeded"}`:                            3,
		`sendense_backup_jobs_total{state="canceled"}`:                             3,
		`sendense_backup_jobs_total{state="failed"}`:                               0,
		`sendense_backup_job_duration_seconds_count{state="succeeded"}`:            3,
		`sendense_backup_job_duration_seconds_bucket{state="succeeded",le="+Inf"}`: 3,
		`sendense_backup_jobs{state="running"}`:                                    0,
		`sendense_vcenter_up`:                                                      1,
		`sendense_backup_capacity_bytes_total`:                                     (32 + 24 + 32) * mib,
		`sendense_agent_info{version="test"}`:                                      1,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("metric %s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	for _, name := range []string{"sendense_backup_copied_bytes_total", "sendense_backup_read_bytes_total", "sendense_backup_processed_bytes_total",
		"sendense_backup_data_reduction_ratio", "sendense_backup_last_throughput_mib_per_second", "sendense_backup_reduced_bytes_total",
		`sendense_api_requests_total{code="200"}`, `sendense_api_requests_total{code="409"}`, "sendense_backup_last_success_timestamp_seconds"} {
		if m[name] <= 0 {
			t.Errorf("metric %s = %v, want > 0", name, m[name])
		}
	}
	if r := m["sendense_backup_data_reduction_ratio"]; r < 0.9 || r > 1 { // 1 MiB of 32 MiB
		t.Errorf("data reduction of the incremental: %v", r)
	}
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
}

// h2moref returns a VM's moref through the API.
func h2moref(t *testing.T, a *agent, path string) string {
	var s VMSpecs
	a.get("/api/v1/vms/"+esc(path)+"/specs", http.StatusOK, &s)
	return s.Moref
}

func (e *env) noSnapshots(vms ...string) {
	e.t.Helper()
	for _, vm := range vms {
		if s := e.snapshots(vm); len(s) != 0 {
			e.t.Fatalf("snapshots left on %s: %v", vm, s)
		}
	}
}

// metrics scrapes /metrics: sample name with labels → value. Every
// sample must follow a # TYPE line of its family.
func (a *agent) metrics() map[string]float64 {
	a.t.Helper()
	code, body := a.do("GET", "/metrics", nil)
	if code != http.StatusOK {
		a.t.Fatalf("metrics: %d %s", code, body)
	}
	out := map[string]float64{}
	typed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "# TYPE ") {
			typed[strings.Fields(line)[2]] = true
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		name, val := line[:i], line[i+1:]
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			a.t.Fatalf("metrics line %q: %v", line, err)
		}
		family, _, _ := strings.Cut(name, "{")
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base := strings.TrimSuffix(family, suf); base != family && typed[base] {
				family = base
			}
		}
		if !typed[family] {
			a.t.Fatalf("metrics sample %q without a # TYPE line", line)
		}
		out[name] = f
	}
	return out
}
