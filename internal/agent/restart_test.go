package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/lockfile"
	"github.com/sendense/capture/internal/procid"
)

// TestRestart: an agent is killed (SIGKILL) with a job copying and one
// queued. The next agent on the same state directory marks the first
// failed ("interrupted by an agent restart") and removes its snapshot,
// runs the queued one, and the VM backs up fine afterwards.
func TestRestart(t *testing.T) {
	e := newEnv(t, []lab.VMSpec{webVM, dbVM})
	cfgPath := filepath.Join(e.dir, "child.json")
	b, _ := json.Marshal(e.cfg)
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(e.dir, "child.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), childEnv+"="+cfgPath, "FAKEVDDK_READ_DELAY_US=100000")
	child.Stdout, child.Stderr = logf, logf
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			child.Process.Kill()
			child.Wait()
		}
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("child agent log:\n%s", log)
		}
	}()
	var addr []byte
	for i := 0; ; i++ {
		if addr, err = os.ReadFile(cfgPath + ".addr"); err == nil {
			break
		}
		if i > 300 {
			t.Fatal("the child agent never listened")
		}
		time.Sleep(50 * time.Millisecond)
	}
	remote := &agent{t: t, url: "http://" + string(addr), http: &http.Client{Timeout: 30 * time.Second}}
	var id string
	for i := 0; ; i++ { // the child logs in to the lab first
		code, body := remote.do("POST", "/api/v1/backup/start", map[string]any{"vm_path": "/DC0/vm/web", "backup_type": "full"})
		if code == http.StatusAccepted {
			var r StartResponse
			json.Unmarshal(body, &r)
			id = r.JobID
			break
		}
		if code != http.StatusServiceUnavailable || i > 100 {
			t.Fatalf("start on the child: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	queued := remote.startJob(map[string]any{"vm_path": "/DC0/vm/prod/db"})
	v := remote.wait(id, time.Minute, func(v JobView) bool { return v.Phase == phaseCopying && v.BytesDone > 0 })
	if v.Snapshot == "" || len(e.snapshots("web")) != 1 {
		t.Fatalf("copying without a recorded snapshot: %+v, %v", v, e.snapshots("web"))
	}
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	killed = true
	if len(e.snapshots("web")) != 1 {
		t.Fatal("the snapshot should still be there after the kill")
	}

	a := e.start()
	got := a.wait(id, time.Minute, func(v JobView) bool { return v.SnapshotCleanup == cleanupDone })
	if got.State != StateFailed || got.Error != interruptedError || got.Finished == nil ||
		!strings.Contains(strings.Join(got.Notices, "\n"), v.Snapshot) {
		t.Fatalf("interrupted job after the restart: %+v", got)
	}
	e.noSnapshots("web")
	a.waitSucceeded(queued)
	if m := a.metrics(); m["sendense_backup_interrupted_jobs"] != 1 {
		t.Fatalf("interrupted jobs metric: %v", m["sendense_backup_interrupted_jobs"])
	}
	if p := e.points("web"); len(p) != 0 {
		t.Fatalf("the interrupted backup committed a restore point: %v", p)
	}
	after := a.waitSucceeded(a.startJob(map[string]any{"vm_path": "/DC0/vm/web"}))
	if after.Level != "full" {
		t.Fatalf("backup after the restart: %+v", after)
	}
	e.noSnapshots("web", "db")

	// The sweep after a failed or canceled job (a cancellation during
	// CreateSnapshot leaves one): snapshots of dead jobs go, under the
	// VM lock; while another process's job holds it, nothing is touched.
	// A snapshot named like a job's without an owner marker is a user's.
	ctx := context.Background()
	dead := cbt.SnapshotOwner{Format: cbt.OwnerFormat, Job: "sweep", Host: "0123456789abcdef0123456789abcdef", PID: 1, PIDStart: 1,
		Started: time.Now().Add(-48 * time.Hour), Version: "test"} // another host's, older than the lease
	if me, err := procid.Current(); err == nil {
		dead.Host, dead.Boot, dead.PID, dead.PIDStart = me.Host, me.Boot, me.PID, me.Start // this process, job ended
	}
	web, err := e.client.FindVM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CreateSnapshot(ctx, web, "sendense-20250101T000000Z", dead.Description(), false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.lab.CreateSnapshot(ctx, "web", "sendense-before-upgrade"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.lab.CreateSnapshot(ctx, "web", "operator's own"); err != nil {
		t.Fatal(err)
	}
	fake := &job{Job: Job{ID: "sweep", VM: after.VM}}
	lockPath, err := a.vc.svc.Load().VMLockPath(ctx, after.VM.Moref)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := lockfile.TryExclusive(lockPath, "a backup in another process")
	if err != nil {
		t.Fatal(err)
	}
	a.sweepSnapshots(fake)
	if len(e.snapshots("web")) != 3 || len(fake.Notices) != 0 {
		t.Fatalf("the sweep ignored the VM lock: %v %v", e.snapshots("web"), fake.Notices)
	}
	other.Unlock()
	a.sweepSnapshots(fake)
	if s := strings.Join(e.snapshots("web"), " "); strings.Contains(s, "sendense-20250101T000000Z") || !strings.Contains(s, "operator's own") ||
		!strings.Contains(s, "sendense-before-upgrade") || len(fake.Notices) != 1 {
		t.Fatalf("after the sweep: %v %v", s, fake.Notices)
	}

	// The history survives a clean restart too.
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	a = e.start()
	var list JobList
	a.get("/api/v1/backup", http.StatusOK, &list)
	if len(list.Jobs) != 3 || list.Jobs[2].ID != id || list.Jobs[2].State != StateFailed {
		t.Fatalf("history after a clean restart: %+v", list.Jobs)
	}
}
