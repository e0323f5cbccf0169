package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/qemu"
)

// TestReplicationJob: a start request with "target" runs a replication
// through the orchestrator: full, then incremental in place; the target
// equals the disk each time and the report names the state file.
func TestReplicationJob(t *testing.T) {
	e := newEnv(t, []lab.VMSpec{{Name: "dr", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: 16 * lab.MiB, Data: 4 * lab.MiB, Seed: 5}}}})
	t.Setenv("XDG_STATE_HOME", filepath.Join(e.dir, "state-home"))
	target := filepath.Join(e.dir, "target.raw")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(target, 16*lab.MiB); err != nil {
		t.Fatal(err)
	}
	srv, err := qemu.ServeNBD(context.Background(), target, qemu.ServeOptions{Format: "raw", SocketDir: e.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	e.cfg.API.AllowedTargets = []string{srv.URI()}
	a := e.start()
	a.waitVCenter()
	flat, err := e.lab.DiskPath("dr", 2000)
	if err != nil {
		t.Fatal(err)
	}
	var last string
	for i, want := range []string{"full", "incremental"} {
		if i > 0 {
			if err := e.lab.WriteRandom("dr", 2000, 8*lab.MiB, 256<<10, 9); err != nil {
				t.Fatal(err)
			}
		}
		id := a.startJob(map[string]any{"vm_path": "/DC0/vm/dr", "target": srv.URI()})
		v := a.waitSucceeded(id)
		last = id
		if v.Kind != KindReplicate || v.Level != want {
			t.Fatalf("job %d: kind %s level %s, want replicate %s", i, v.Kind, v.Level, want)
		}
		if out, err := exec.Command("cmp", flat, target).CombinedOutput(); err != nil {
			t.Fatalf("the target differs from the disk after the %s replication: %s", want, out)
		}
	}
	var full JobView
	a.get("/api/v1/backup/"+last, 200, &full)
	if full.Report == nil || full.Report.StateFile == "" {
		t.Fatalf("no state file in the report: %+v", full.Report)
	}
	e.noSnapshots("dr")
}
