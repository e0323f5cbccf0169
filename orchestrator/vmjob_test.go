package orchestrator

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/procid"
)

func TestStaleSnapshot(t *testing.T) {
	me, err := procid.Current()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	childStart, _ := procid.StartTime(child.Process.Pid)
	dead := exec.Command("true")
	dead.Run()
	deadStart := childStart // any: the pid no longer exists

	owner := func(host string, pid int, start uint64, job string, age time.Duration) *cbt.SnapshotOwner {
		return &cbt.SnapshotOwner{Format: cbt.OwnerFormat, Job: job, Host: host, Boot: me.Boot, PID: pid, PIDStart: start, Started: now.Add(-age), Version: "1"}
	}
	liveJobs.add("running-job")
	defer liveJobs.remove("running-job")
	const other = "ffffffffffffffffffffffffffffffff"
	for _, tc := range []struct {
		name   string
		sn     cbt.Snapshot
		remove bool
		why    string
	}{
		{"not a job's name", cbt.Snapshot{Name: "before-upgrade", Owner: owner(me.Host, dead.Process.Pid, deadStart, "j", 0)}, false, ""},
		{"no marker", cbt.Snapshot{Name: "sendense-before-upgrade"}, false, "foreign"},
		{"this process, job running", cbt.Snapshot{Name: "sendense-1", Owner: owner(me.Host, me.PID, me.Start, "running-job", 0)}, false, "still running"},
		{"this process, job ended", cbt.Snapshot{Name: "sendense-1", Owner: owner(me.Host, me.PID, me.Start, "ended-job", 0)}, true, "has ended"},
		{"this host, live process", cbt.Snapshot{Name: "sendense-1", Owner: owner(me.Host, child.Process.Pid, childStart, "j", 0)}, false, "still running"},
		{"this host, pid reused", cbt.Snapshot{Name: "sendense-1", Owner: owner(me.Host, child.Process.Pid, childStart+7, "j", 0)}, true, "another process"},
		{"this host, dead process", cbt.Snapshot{Name: "sendense-1", Owner: owner(me.Host, dead.Process.Pid, deadStart, "j", 0)}, true, "no longer runs"},
		{"other host, young", cbt.Snapshot{Name: "sendense-1", Owner: owner(other, 1, 1, "j", time.Hour), Created: now.Add(-time.Hour)}, false, "snapshot_lease"},
		{"other host, old marker, young snapshot", cbt.Snapshot{Name: "sendense-1", Owner: owner(other, 1, 1, "j", 48*time.Hour), Created: now.Add(-time.Hour)}, false, "snapshot_lease"},
		{"other host, old", cbt.Snapshot{Name: "sendense-1", Owner: owner(other, 1, 1, "j", 25*time.Hour), Created: now.Add(-25 * time.Hour)}, true, "more than [state] snapshot_lease"},
	} {
		remove, why := staleSnapshot(tc.sn, me, now, 24*time.Hour)
		if remove != tc.remove || !strings.Contains(why, tc.why) || (tc.why == "") != (why == "") {
			t.Errorf("%s: remove=%v (%s), want %v (%s)", tc.name, remove, why, tc.remove, tc.why)
		}
	}
	old := cbt.Snapshot{Name: "sendense-1", Owner: owner(other, 1, 1, "j", 1000*time.Hour), Created: now.Add(-1000 * time.Hour)}
	if remove, why := staleSnapshot(old, me, now, 0); remove {
		t.Errorf("lease 0 removed another host's snapshot: %s", why)
	}
}
