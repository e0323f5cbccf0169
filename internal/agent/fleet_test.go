package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/lab"
)

// TestSharedRateAndRetention: the bandwidth limit is the agent's, for all
// running jobs together, [retention] is applied to a VM's backups after
// each succeeded job, and a job whose nbdkit fails says why in nbdkit's
// words.
func TestSharedRateAndRetention(t *testing.T) {
	vm := func(name string, seed uint64) lab.VMSpec {
		return lab.VMSpec{Name: name, PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: 16 * mib, Data: 6 * mib, Seed: seed}}}
	}
	e := newEnv(t, []lab.VMSpec{vm("a", 1), vm("b", 2)})
	e.cfg.Performance.MaxConcurrentBackups = 2
	e.cfg.Copy.Rate = "4M"
	e.cfg.Retention.KeepLast = 2
	a := e.start()

	// Two full backups at once read 12 MiB: at least 3 s at 4 MiB/s for
	// the agent (1.5 s if each job had 4 MiB/s of its own).
	start := time.Now()
	ja := a.startJob(map[string]any{"vm_path": "a", "backup_type": "full"})
	jb := a.startJob(map[string]any{"vm_path": "b", "backup_type": "full"})
	a.wait(ja, time.Minute, func(v JobView) bool { return v.State == StateRunning })
	a.wait(jb, time.Minute, func(v JobView) bool { return v.State == StateRunning })
	a.waitSucceeded(ja)
	a.waitSucceeded(jb)
	if el := time.Since(start); el < 2500*time.Millisecond {
		t.Errorf("two jobs read 12 MiB in %v at a 4 MiB/s limit: the limit is not shared", el)
	}

	// Two more backups of a: after each, [retention] keep_last = 2.
	var last JobView
	for range 2 {
		last = a.waitSucceeded(a.startJob(map[string]any{"vm_path": "a"}))
	}
	if pts := e.points("a"); len(pts) != 2 {
		t.Fatalf("points of a after retention: %v", pts)
	}
	if !strings.Contains(strings.Join(last.Notices, "\n"), "retention (keep 2 last): removed 1 backup (") {
		t.Errorf("notices: %q", last.Notices)
	}
	if pts := e.points("b"); len(pts) != 1 {
		t.Errorf("retention touched b: %v", pts)
	}

	// The plugin cannot read the disks (FAKEVDDK_ROOT missing, as a VDDK
	// without its libraries): the job's error quotes it, with the hint.
	t.Setenv("FAKEVDDK_ROOT", "")
	v := a.wait(a.startJob(map[string]any{"vm_path": "b"}), 2*time.Minute, nil)
	if v.State != StateFailed || !strings.Contains(v.Error, "set FAKEVDDK_ROOT") || !strings.Contains(v.Error, "hint: FAKEVDDK_ROOT is not set") {
		t.Errorf("job with a failing plugin: %s: %s", v.State, v.Error)
	}
	e.noSnapshots("b")
}
