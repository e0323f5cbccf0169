package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/lab"
)

// These tests check that jobs touch only what is theirs (snapshots, VM
// locks), survive a closed stdout, and say what an interrupt kept. The
// snapshots are counted through the vSphere API (the lab), never through
// sendense's own bookkeeping.

// job is a sendense process started in the background.
type job struct {
	cmd            *exec.Cmd
	stdout, stderr string // files
	done           chan struct{}
	code           int
}

func (b *backupLab) start(env []string, args ...string) *job {
	b.t.Helper()
	dir := b.t.TempDir()
	j := &job{cmd: b.cmd(env, args...), stdout: filepath.Join(dir, "stdout"), stderr: filepath.Join(dir, "stderr"), done: make(chan struct{})}
	out, _ := os.Create(j.stdout)
	errf, _ := os.Create(j.stderr)
	j.cmd.Stdout, j.cmd.Stderr = out, errf
	if err := j.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	go func() {
		err := j.cmd.Wait()
		out.Close()
		errf.Close()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			j.code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				j.code = 128 + int(ws.Signal())
			}
		} else if err != nil {
			j.code = -1
		}
		close(j.done)
	}()
	b.t.Cleanup(func() {
		select {
		case <-j.done:
		default:
			j.cmd.Process.Kill()
			<-j.done
		}
	})
	return j
}

// wait waits for the job's end and returns its exit status and stderr.
func (j *job) wait(t *testing.T) (int, string) {
	t.Helper()
	select {
	case <-j.done:
	case <-time.After(3 * time.Minute):
		t.Fatal("the job did not end")
	}
	b, _ := os.ReadFile(j.stderr)
	return j.code, string(b)
}

func (j *job) output() string {
	b, _ := os.ReadFile(j.stdout)
	return string(b)
}

// vmSnapshots lists vm's snapshots through the vSphere API.
func (b *backupLab) vmSnapshots(vm string) []cbt.Snapshot {
	b.t.Helper()
	ctx := context.Background()
	v, err := b.client.FindVM(ctx, vm)
	if err != nil {
		b.t.Fatal(err)
	}
	snaps, err := b.client.Snapshots(ctx, v)
	if err != nil {
		b.t.Fatal(err)
	}
	return snaps
}

// userSnapshot takes a snapshot the way an administrator would.
func (b *backupLab) userSnapshot(vm, name, description string) string {
	b.t.Helper()
	ctx := context.Background()
	v, err := b.client.FindVM(ctx, vm)
	if err != nil {
		b.t.Fatal(err)
	}
	s, err := b.client.CreateSnapshot(ctx, v, name, description, false, false)
	if err != nil {
		b.t.Fatal(err)
	}
	return s
}

// waitSnapshots waits until vm has n snapshots and a plugin runs under
// the job (it copies).
func waitCopying(t *testing.T, b *backupLab, vm string, n int, j *job) {
	t.Helper()
	for i := 0; i < 600; i++ {
		if len(b.vmSnapshots(vm)) == n && pluginRunning(j.cmd.Process.Pid) {
			return
		}
		select {
		case <-j.done:
			code, stderr := j.wait(t)
			t.Fatalf("the job ended (exit %d) before copying: %s", code, stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("the job never started copying")
}

// waitReached waits until the job calls the paused vSphere method.
func waitReached(t *testing.T, reached <-chan struct{}, j *job, method string) {
	t.Helper()
	select {
	case <-reached:
	case <-j.done:
		code, stderr := j.wait(t)
		t.Fatalf("the job ended (exit %d) before %s: %s", code, method, stderr)
	case <-time.After(2 * time.Minute):
		t.Fatalf("the job never called %s", method)
	}
}

func names(snaps []cbt.Snapshot) string {
	var n []string
	for _, s := range snaps {
		n = append(n, s.Name)
	}
	return strings.Join(n, ", ")
}

var slowVM = lab.VMSpec{Name: "web", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: 32 * mib, Data: 8 * mib, Seed: 3}}}

// slowReads makes each read of the fake VDDK take 100 ms (one at a time).
const slowReads = "FAKEVDDK_READ_DELAY_US=100000"

// TestConcurrentBackupsOneVM: two backups of one VM, with different
// TMPDIRs and the vCenter spelt 127.0.0.1 and localhost: the second fails
// at once, naming the job that holds the VM's lock, and touches nothing;
// the first completes; the VM has at most one snapshot throughout.
func TestConcurrentBackupsOneVM(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{slowVM})
	u := b.URL()
	if u.Hostname() != "127.0.0.1" {
		t.Fatalf("the lab is at %s, not 127.0.0.1", u)
	}
	u.Host = "localhost:" + u.Port()
	repoB := filepath.Join(b.dir, "repo-b")

	var mu sync.Mutex
	most, seen := 0, 0
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() { // count the snapshots throughout, through the vSphere API
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			n := len(b.vmSnapshots("web"))
			mu.Lock()
			most, seen = max(most, n), seen+1
			mu.Unlock()
		}
	}()

	// The first backup waits in its snapshot's removal (every disk copied)
	// while the second one runs.
	reached, release := b.Pause("RemoveSnapshot")
	defer release()
	a := b.start([]string{"TMPDIR=" + t.TempDir()}, "backup", "web")
	waitReached(t, reached, a, "RemoveSnapshot")
	second := b.start([]string{"TMPDIR=" + t.TempDir(), "SENDENSE_VCENTER_URL=" + u.String(), "SENDENSE_REPOSITORY=" + repoB}, "backup", "web")
	code, stderr := second.wait(t)
	if code != 1 || !strings.Contains(stderr, "VM is busy") || !strings.Contains(stderr, "backup of web") ||
		!strings.Contains(stderr, filepath.Join(b.dir, "state", "locks")) {
		t.Fatalf("the second backup: exit %d, %s", code, stderr)
	}
	if _, err := os.Stat(repoB); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the second backup created its repository: %v", err)
	}
	if n := len(b.vmSnapshots("web")); n != 1 {
		t.Fatalf("%d snapshots while the first backup runs", n)
	}
	release()
	if code, stderr := a.wait(t); code != 0 {
		t.Fatalf("the first backup: exit %d, %s", code, stderr)
	}
	close(stop)
	<-polled
	if most != 1 || seen < 5 {
		t.Fatalf("at most %d snapshots in %d looks, want 1", most, seen)
	}
	b.noSnapshots("web")
	if ids := b.backupIDs("web"); len(ids) != 1 {
		t.Fatalf("restore points: %v", ids)
	}
}

// TestSnapshotOwnership: a user's snapshot named sendense-* survives
// backups and shows as foreign; a job killed with SIGKILL leaves its
// snapshot, which the next job removes; a live job's snapshot on this
// host is never removed, even by a job that does not share its lock.
func TestSnapshotOwnership(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{slowVM})
	b.userSnapshot("web", "sendense-before-upgrade", "before the upgrade")
	b.userSnapshot("web", "sendense-crafted", `{"sendense":1,"job":"x","pid":1}`)
	young := `{"sendense":1,"job":"other-host-job","host":"ffffffffffffffffffffffffffffffff","boot":"","pid":77,"pid_start":5,"started":"` +
		time.Now().UTC().Add(-time.Hour).Format(time.RFC3339) + `","version":"0.1.0"}`
	b.userSnapshot("web", "sendense-other-host", young)
	users := "sendense-before-upgrade, sendense-crafted, sendense-other-host"

	// Backups leave them alone and say why.
	out, stderr, code := b.run(nil, "backup", "web")
	if code != 0 {
		t.Fatalf("backup: exit %d: %s", code, stderr)
	}
	if got := names(b.vmSnapshots("web")); got != users {
		t.Fatalf("snapshots after a backup: %s", got)
	}
	for _, want := range []string{`left snapshot "sendense-before-upgrade"`, "no sendense owner marker", "another host", "snapshot_lease"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the backup does not say %q:\n%s%s", want, out, stderr)
		}
	}
	info := b.mustRun("vm", "info", "--json", "web")
	var vi struct {
		Snapshots []cbt.Snapshot `json:"snapshots"`
	}
	if err := json.Unmarshal([]byte(info), &vi); err != nil {
		t.Fatal(err)
	}
	for _, s := range vi.Snapshots {
		if s.Foreign != (s.Name != "sendense-other-host") || (s.Owner != nil) != (s.Name == "sendense-other-host") {
			t.Errorf("vm info: %s: foreign %v owner %+v", s.Name, s.Foreign, s.Owner)
		}
	}
	if text := b.mustRun("vm", "info", "web"); strings.Count(text, "(foreign:") != 2 {
		t.Errorf("vm info does not show the foreign snapshots:\n%s", text)
	}

	// kill -9 (while it queries the changed blocks): the snapshot stays,
	// with the job's owner marker.
	b.write("web", 2000, 0, mib, 9)
	reached, release := b.Pause("QueryChangedDiskAreas")
	killed := b.start(nil, "backup", "web")
	waitReached(t, reached, killed, "QueryChangedDiskAreas")
	killed.cmd.Process.Kill()
	killed.wait(t)
	release() // the dead job's query: harmless
	var left *cbt.Snapshot
	for _, s := range b.vmSnapshots("web") {
		if s.Owner != nil && s.Owner.PID == killed.cmd.Process.Pid {
			left = &s
		}
	}
	if left == nil || !strings.HasPrefix(left.Name, "sendense-") || left.Owner.PIDStart == 0 || left.Owner.Boot == "" {
		t.Fatalf("the killed job's snapshot: %+v in %s", left, names(b.vmSnapshots("web")))
	}

	// A live job's snapshot: a second job that does not share the first
	// one's lock ([state] dir) must leave it alone (it fails afterwards:
	// its own snapshot is refused, it backs up into another repository).
	reached, release = b.Pause("QueryChangedDiskAreas")
	defer release()
	first := b.start(nil, "backup", "web")
	waitReached(t, reached, first, "QueryChangedDiskAreas") // the killed job's snapshot went, the first job's came
	for _, s := range b.vmSnapshots("web") {
		if s.Moref == left.Moref {
			t.Fatalf("the dead job's snapshot %s (%s) is still there: %s", left.Name, left.Moref, names(b.vmSnapshots("web")))
		}
	}
	if err := b.InjectFault("CreateSnapshot", "web", 1); err != nil {
		t.Fatal(err)
	}
	other := b.start([]string{"SENDENSE_STATE_DIR=" + t.TempDir(), "SENDENSE_REPOSITORY=" + filepath.Join(b.dir, "repo-other")}, "backup", "web")
	code, stderr = other.wait(t)
	b.ClearFaults()
	if code == 0 || !strings.Contains(stderr, "CreateSnapshot") || !strings.Contains(stderr, fmt.Sprintf("of process %d on this host is still running", first.cmd.Process.Pid)) {
		t.Fatalf("the job without the lock: exit %d: %s", code, stderr)
	}
	if n := len(b.vmSnapshots("web")); n != 4 {
		t.Fatalf("the live job's snapshot was touched: %s", names(b.vmSnapshots("web")))
	}
	release()
	if code, stderr := first.wait(t); code != 0 {
		t.Fatalf("the live job failed: exit %d: %s", code, stderr)
	}
	if got := names(b.vmSnapshots("web")); got != users {
		t.Fatalf("snapshots at the end: %s", got)
	}
	if !strings.Contains(first.output()+readFile(first.stderr), "removed stale snapshot") || !strings.Contains(readFile(first.stderr), "died") {
		t.Errorf("the job that removed the dead job's snapshot does not say so:\n%s", readFile(first.stderr))
	}
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// TestBackupClosedStdout: a backup whose output goes to `head -c 1` (the
// reader leaves at once) completes: no snapshot left, the point
// committed, exit status 0; also with stderr into the same pipe.
func TestBackupClosedStdout(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{slowVM})
	for i, redirect := range []string{"", "2>&1"} {
		b.write("web", 2000, uint64(i)*mib, mib, uint64(20+i))
		script := fmt.Sprintf(`"$0" backup --json --progress web %s | head -c 1 >/dev/null; rc=("${PIPESTATUS[@]}"); exit "${rc[0]}"`, redirect)
		cmd := exec.Command("bash", "-c", script, sendense)
		cmd.Env = append(append(os.Environ(), b.env...), "FAKEVDDK_READ_DELAY_US=20000")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("backup %s | head -c 1: %v\n%s", redirect, err, out)
		}
		b.noSnapshots("web")
		if ids := b.backupIDs("web"); len(ids) != i+1 {
			t.Fatalf("backup %s | head -c 1: restore points %v", redirect, ids)
		}
		ids := b.backupIDs("web")
		b.capture("web", ids[len(ids)-1])
	}
	b.restoreAndCompare("web", 0)
}

// TestBackupSIGINTPhases: SIGINT at each phase of a backup. Before the
// commit, nothing is kept: exit 130, "snapshot … removed, nothing kept",
// no snapshot, no new point; after it, the point stays and the exit
// status is 0 with "backup … was committed before the interrupt".
func TestBackupSIGINTPhases(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{slowVM})
	b.backup("web") // the phases below are those of an incremental
	for _, tc := range []struct {
		phase string
		pause string // a vSphere call the job waits in when the signal comes
		code  int
		want  string
	}{
		{"login", "Login", 130, "interrupted before connecting to vCenter: nothing kept"},
		{"snapshot", "CreateSnapshot", 130, "interrupted: snapshot snapshot-"},
		{"changed blocks", "QueryChangedDiskAreas", 130, "interrupted: snapshot snapshot-"},
		{"copying", "", 130, "interrupted: snapshot snapshot-"},
		{"snapshot removal", "RemoveSnapshot", 130, "interrupted: snapshot snapshot-"},
		{"logout, after the commit", "Logout", 0, "was committed before the interrupt"},
	} {
		t.Run(strings.ReplaceAll(tc.phase, " ", "_"), func(t *testing.T) {
			b.t = t
			before := b.backupIDs("web")
			b.write("web", 2000, 4*mib, 4*mib, uint64(len(before))) // 4 MiB: copying takes a while with slow reads
			env := []string{}
			var release func()
			var reached <-chan struct{}
			if tc.pause != "" {
				reached, release = b.Pause(tc.pause)
				defer release()
			} else {
				env = append(env, slowReads)
			}
			j := b.start(env, "backup", "web")
			if tc.pause != "" {
				waitReached(t, reached, j, tc.pause)
			} else {
				waitCopying(t, b, "web", 1, j)
			}
			j.cmd.Process.Signal(syscall.SIGINT)
			if release != nil {
				time.Sleep(200 * time.Millisecond) // the signal is handled while the call waits
				release()
			}
			code, stderr := j.wait(t)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("SIGINT during %s: exit %d, want %d and %q:\n%s", tc.phase, code, tc.code, tc.want, stderr)
			}
			if strings.Contains(stderr, "context canceled") {
				t.Errorf("the message is Go's, not ours: %s", stderr)
			}
			t.Logf("SIGINT during %s: exit %d: %s", tc.phase, code, strings.TrimSpace(stderr))
			b.noSnapshots("web")
			after := b.backupIDs("web")
			if tc.code == 0 {
				if len(after) != len(before)+1 {
					t.Fatalf("the committed backup is not listed: %v", after)
				}
				b.capture("web", after[len(after)-1])
				b.restoreAndCompare("web", 1)
			} else if strings.Join(after, " ") != strings.Join(before, " ") {
				t.Fatalf("restore points changed: %v -> %v", before, after)
			}
		})
	}
}

// TestBackupCBTFault: a failed QueryChangedDiskAreas makes that disk full
// (the reason in the report), the other disks stay incremental, and the
// points restore exactly; --cbt-fault=fail fails instead, and the next
// backup of that disk is full.
func TestBackupCBTFault(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{{Name: "app", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{
		{Capacity: 16 * mib, Data: 4 * mib, Seed: 1}, {Capacity: 8 * mib, Data: 1 * mib, Seed: 2}}}})
	b.backup("app")
	b.write("app", 2000, 2*mib, mib, 3)
	b.write("app", 2001, 0, 64*kib, 4)
	if err := b.InjectFault("QueryChangedDiskAreas", "app", 1); err != nil {
		t.Fatal(err)
	}
	level := func(r backupReport) map[int32]string {
		m := map[int32]string{}
		for _, d := range r.Disks {
			m[d.Key] = d.Level
			if d.Level == "full" {
				m[d.Key] += ": " + d.Reason
			}
		}
		return m
	}
	r := b.backup("app")
	if l := level(r); !strings.HasPrefix(l[2000], "full: disk 2000: QueryChangedDiskAreas failed") || l[2001] != "incremental" {
		t.Fatalf("backup after a CBT fault: %v", l)
	}
	b.noSnapshots("app")

	b.write("app", 2000, 5*mib, mib, 5)
	if err := b.InjectFault("QueryChangedDiskAreas", "app", 1); err != nil {
		t.Fatal(err)
	}
	before := b.backupIDs("app")
	_, stderr, code := b.run(nil, "backup", "--cbt-fault=fail", "app")
	if code != 1 || !strings.Contains(stderr, "QueryChangedDiskAreas") || !strings.Contains(stderr, "--cbt-fault") {
		t.Fatalf("--cbt-fault=fail: exit %d: %s", code, stderr)
	}
	b.noSnapshots("app")
	if after := b.backupIDs("app"); len(after) != len(before) {
		t.Fatalf("--cbt-fault=fail kept a point: %v", after)
	}
	if l := level(b.backup("app")); !strings.HasPrefix(l[2000], "full: disk 2000: QueryChangedDiskAreas failed") || l[2001] != "incremental" {
		t.Fatalf("the backup after --cbt-fault=fail: %v", l)
	}
	b.restoreAndCompare("app", 0)
}

// TestChildEnvironment: the variable [vcenter] password_env names is in
// no child's environment (nbdkit, qemu-nbd), though sendense reads it.
func TestChildEnvironment(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{slowVM})
	cfg := filepath.Join(b.dir, "password-env.toml")
	os.WriteFile(cfg, []byte("[vcenter]\npassword_env = \"SENDENSE_TEST_VC_PASSWORD\"\n[cbt]\nauto_enable = true\n"), 0o600)
	j := b.start([]string{"SENDENSE_CONFIG=" + cfg, "SENDENSE_VCENTER_PASSWORD_FILE=", "SENDENSE_TEST_VC_PASSWORD=" + lab.Password, slowReads}, "backup", "web")
	waitCopying(t, b, "web", 1, j)
	kids := strings.Fields(run(t, "pgrep", "-P", fmt.Sprint(j.cmd.Process.Pid)))
	seen := map[string]bool{}
	for _, pid := range kids {
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		env, err := os.ReadFile("/proc/" + pid + "/environ")
		if err != nil {
			continue
		}
		seen[strings.TrimSpace(string(comm))] = true
		if !strings.Contains(string(env), "FAKEVDDK_ROOT=") {
			t.Fatalf("%s's environment does not look inherited", comm)
		}
		if strings.Contains(string(env), "SENDENSE_TEST_VC_PASSWORD") || strings.Contains(string(env), lab.Password) {
			t.Errorf("the password variable is in %s's environment", comm)
		}
	}
	if !seen["nbdkit"] || !seen["qemu-nbd"] {
		t.Fatalf("children seen: %v", seen)
	}
	if code, stderr := j.wait(t); code != 0 {
		t.Fatalf("backup with password_env: exit %d: %s", code, stderr)
	}
}
