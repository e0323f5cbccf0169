package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/lab"
)

// backupLab runs the lab in-process and the real sendense CLI against it.
type backupLab struct {
	*lab.Lab
	t      *testing.T
	dir    string
	repo   string
	env    []string
	client *cbt.Client
	// expected[vm][backup id][disk key] is a copy of the disk's content
	// at that backup.
	expected map[string]map[string]map[int32]string
}

func startBackupLab(t *testing.T, vms []lab.VMSpec) *backupLab {
	t.Helper()
	return startBackupLabWith(t, lab.Options{VMs: vms})
}

// startBackupLabWith is startBackupLab with more of the lab's options.
func startBackupLabWith(t *testing.T, opts lab.Options) *backupLab {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	opts.Dir = filepath.Join(dir, "lab")
	l, err := lab.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	c, err := cbt.Connect(ctx, cbt.Config{Server: l.URL().String(), User: lab.User, Password: lab.Password, Thumbprint: l.Thumbprint()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	b := &backupLab{Lab: l, t: t, dir: dir, repo: filepath.Join(dir, "repo"), client: c,
		expected: map[string]map[string]map[int32]string{}}
	cfg := filepath.Join(dir, "sendense.toml")
	os.WriteFile(cfg, []byte("[cbt]\nauto_enable = true\n[backup]\nmax_concurrent_disks = 2\n"), 0o600)
	b.env = []string{
		"SENDENSE_CONFIG=" + cfg,
		"SENDENSE_VCENTER_URL=" + l.URL().String(),
		"SENDENSE_VCENTER_USER=" + lab.User,
		"SENDENSE_VCENTER_PASSWORD_FILE=" + l.PasswordFile(),
		"SENDENSE_VCENTER_THUMBPRINT=" + l.Thumbprint(),
		"SENDENSE_VDDK_LIBDIR=" + fakeVDDK,
		"SENDENSE_REPOSITORY=" + b.repo,
		"FAKEVDDK_ROOT=" + l.DatastoreRoot(),
		"SENDENSE_STATE_DIR=" + filepath.Join(dir, "state"),
	}
	return b
}

// cmd returns the sendense command with the lab's environment.
func (b *backupLab) cmd(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(sendense, args...)
	cmd.Env = append(append(os.Environ(), b.env...), env...)
	return cmd
}

// run runs sendense and returns stdout, stderr and the exit status.
func (b *backupLab) run(env []string, args ...string) (string, string, int) {
	b.t.Helper()
	cmd := b.cmd(env, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		b.t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func (b *backupLab) mustRun(args ...string) string {
	b.t.Helper()
	out, errOut, code := b.run(nil, args...)
	if code != 0 {
		b.t.Fatalf("sendense %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// backupReport is the "summary" line of backup --json.
type backupReport struct {
	BackupID string      `json:"backup_id"`
	Level    string      `json:"level"`
	Phases   []phaseTime `json:"phases"`
	Disks    []struct {
		Key         int32       `json:"key"`
		Level       string      `json:"level"`
		Reason      string      `json:"reason"`
		BytesCopied uint64      `json:"bytes_copied"`
		Phases      []phaseTime `json:"phases"`
	} `json:"disks"`
}

type phaseTime struct {
	Phase   string  `json:"phase"`
	Seconds float64 `json:"seconds"`
}

// phaseNames are the names of the phases, in order.
func phaseNames(ps []phaseTime) string {
	var names []string
	for _, p := range ps {
		names = append(names, p.Phase)
	}
	return strings.Join(names, " ")
}

// digestScript is the reference implementation of the disk digest in
// docs/repository.md.
const digestScript = `
import hashlib, sys
outer = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while block := f.read(262144):
        outer.update(hashlib.sha256(block).digest())
print(outer.hexdigest())
`

// checkDigests checks the disk digest the manifest of full backup id of
// vm records against the reference script run on the expected content.
func (b *backupLab) checkDigests(vm, id string) {
	b.t.Helper()
	matches, _ := filepath.Glob(filepath.Join(b.repo, "*", id+".json"))
	if len(matches) != 1 {
		b.t.Fatalf("no single manifest of backup %s: %v", id, matches)
	}
	var m struct {
		Version int `json:"version"`
		Disks   []struct {
			Key    int32  `json:"key"`
			Blocks string `json:"blocks_sha256"`
		} `json:"disks"`
	}
	raw, err := os.ReadFile(matches[0])
	if err != nil || json.Unmarshal(raw, &m) != nil || m.Version != 2 {
		b.t.Fatalf("manifest %s: version %d, %v", matches[0], m.Version, err)
	}
	for _, d := range m.Disks {
		want := strings.TrimSpace(run(b.t, "python3", "-c", digestScript, b.expected[vm][id][d.Key]))
		if d.Blocks != want {
			b.t.Errorf("disk %d: blocks_sha256 %q, the reference script computes %s", d.Key, d.Blocks, want)
		}
	}
}

// backup backs vm up, records the disks' content as the expected content
// of the new point, and returns the report.
func (b *backupLab) backup(vm string, extra ...string) backupReport {
	b.t.Helper()
	out := b.mustRun(append([]string{"backup", "--json", vm}, extra...)...)
	var r backupReport
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Contains(line, `"message_type":"summary"`) {
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				b.t.Fatal(err)
			}
		}
	}
	if r.BackupID == "" {
		b.t.Fatalf("no summary in backup output:\n%s", out)
	}
	b.capture(vm, r.BackupID)
	return r
}

// capture copies vm's disks as the expected content of backup id. Nothing
// writes to the disks between a backup's snapshot and this copy.
func (b *backupLab) capture(vm, id string) {
	b.t.Helper()
	info, err := b.VM(vm)
	if err != nil {
		b.t.Fatal(err)
	}
	if b.expected[vm] == nil {
		b.expected[vm] = map[string]map[int32]string{}
	}
	b.expected[vm][id] = map[int32]string{}
	for _, d := range info.Disks {
		flat, err := b.DiskPath(vm, d.Key)
		if err != nil {
			b.t.Fatal(err)
		}
		dst := filepath.Join(b.dir, fmt.Sprintf("expected-%s-%s-%d", vm, id, d.Key))
		run(b.t, "cp", "--sparse=always", flat, dst)
		b.expected[vm][id][d.Key] = dst
	}
}

// restoreAndCompare restores the last n (all if 0) recorded points of vm
// and compares each disk with its expected content.
func (b *backupLab) restoreAndCompare(vm string, n int) {
	b.t.Helper()
	ids := b.backupIDs(vm)
	if len(ids) == 0 {
		b.t.Fatalf("no backups of %s", vm)
	}
	if n > 0 && n < len(ids) {
		ids = ids[len(ids)-n:]
	}
	for _, id := range ids {
		want := b.expected[vm][id]
		if want == nil {
			b.t.Fatalf("backup %s of %s was not expected (a failed backup committed a point?)", id, vm)
		}
		to := filepath.Join(b.dir, "restore-"+id)
		os.RemoveAll(to)
		b.mustRun("restore", vm, "--backup", id, "--to", to)
		for key, exp := range want {
			matches, _ := filepath.Glob(filepath.Join(to, fmt.Sprintf("*disk%d.raw", key)))
			if len(matches) != 1 {
				b.t.Fatalf("restore of %s %s: no single image of disk %d in %s", vm, id, key, to)
			}
			run(b.t, "cmp", exp, matches[0])
		}
		os.RemoveAll(to)
	}
}

// backupIDs lists the restore points of vm, oldest first.
func (b *backupLab) backupIDs(vm string) []string {
	b.t.Helper()
	out, errOut, code := b.run(nil, "list", "--json", vm)
	if code != 0 {
		if strings.Contains(errOut, "no backups") || strings.Contains(out, "no backups") {
			return nil
		}
		b.t.Fatalf("list %s: exit %d: %s", vm, code, errOut)
	}
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m struct {
			Type string `json:"message_type"`
			ID   string `json:"id"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Type == "backup" {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// snapshots returns the names of vm's snapshots.
func (b *backupLab) snapshots(vm string) []string {
	b.t.Helper()
	var names []string
	for _, s := range b.vmSnapshots(vm) {
		names = append(names, s.Name)
	}
	return names
}

func (b *backupLab) noSnapshots(vm string) {
	b.t.Helper()
	if s := b.snapshots(vm); len(s) != 0 {
		b.t.Fatalf("snapshots left on %s: %v", vm, s)
	}
}

func (b *backupLab) write(vm string, key int32, off, length uint64, seed uint64) {
	b.t.Helper()
	if err := b.WriteRandom(vm, key, off, length, seed); err != nil {
		b.t.Fatal(err)
	}
}

var multiDiskVM = lab.VMSpec{Name: "db", PowerOn: true, Disks: []lab.DiskSpec{
	{Capacity: 24 * mib, Data: 8 * mib, Seed: 11},
	{Capacity: 8 * mib, Data: 2 * mib, Seed: 12},
	{Capacity: 16 * mib, Seed: 13}, // empty
}}

// TestBackupChain: full -> writes -> incremental -> writes -> incremental
// of a three-disk VM; every point restores exactly, verify passes, the
// incrementals copy only what changed.
func TestBackupChain(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{multiDiskVM})
	r1 := b.backup("db")
	if r1.Level != "full" || len(r1.Disks) != 3 {
		t.Fatalf("first backup: %+v", r1)
	}
	b.noSnapshots("db")
	b.checkDigests("db", r1.BackupID)
	// Where the time went: the job's phases and each disk's.
	if got := phaseNames(r1.Phases); !strings.Contains(got, "cbt_check lock_repository stale_snapshots snapshot_create plan disks snapshot_remove manifest state") {
		t.Errorf("the job's phases are %q", got)
	}
	for _, d := range r1.Disks {
		if got := phaseNames(d.Phases); !strings.HasPrefix(got, "image_create qemu_nbd_start plugin_start connect copy flush") {
			t.Errorf("disk %d's phases are %q", d.Key, got)
		}
	}

	b.write("db", 2000, 1*mib, 256*kib, 1)
	b.write("db", 2000, 24*mib-blk, blk, 2)                   // the last block
	if err := b.WriteZeroes("db", 2001, 0, blk); err != nil { // data that became zeros
		t.Fatal(err)
	}
	if err := b.Trim("db", 2000, 4*mib, 128*kib); err != nil { // data that became unallocated
		t.Fatal(err)
	}
	r2 := b.backup("db")
	if r2.Level != "incremental" {
		t.Fatalf("second backup: %+v", r2)
	}
	var copied uint64
	for _, d := range r2.Disks {
		copied += d.BytesCopied
	}
	if copied > 256*kib+blk {
		t.Errorf("the incremental copied %d bytes, more than the %d written", copied, 256*kib+blk)
	}

	b.write("db", 2002, 8*mib, mib, 3)
	b.write("db", 2000, 1*mib, 64*kib, 4) // rewrite of a block changed in the previous increment
	r3 := b.backup("db")
	if r3.Level != "incremental" {
		t.Fatalf("third backup: %+v", r3)
	}
	if ids := b.backupIDs("db"); len(ids) != 3 {
		t.Fatalf("list shows %v", ids)
	}
	b.restoreAndCompare("db", 0)
	b.mustRun("verify", "db")
	b.noSnapshots("db")

	// --full starts a new chain.
	b.write("db", 2001, 2*mib, blk, 5)
	r4 := b.backup("db", "--full")
	if r4.Level != "full" || !strings.Contains(r4.Disks[0].Reason, "--full") {
		t.Fatalf("--full backup: %+v", r4)
	}

	// Prune to the last two points: both still restore and verify.
	b.mustRun("prune", "--keep", "2")
	if ids := b.backupIDs("db"); len(ids) != 2 {
		t.Fatalf("after prune --keep 2: %v", ids)
	}
	b.restoreAndCompare("db", 0)
	b.mustRun("verify")
}

// TestBackupSIGTERM: SIGTERM in the middle of an incremental's copy: exit
// 130, no snapshot left, no new restore point, and the next run does the
// incremental again, correctly.
func TestBackupSIGTERM(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{{Name: "web", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: 64 * mib, Data: 8 * mib, Seed: 1}}}})
	b.backup("web")
	b.write("web", 2000, 16*mib, 16*mib, 2)

	cmd := b.cmd([]string{"FAKEVDDK_READ_DELAY_US=100000"}, "backup", "web")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForCopy(t, b, "web", cmd)
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("backup after SIGTERM: %v, want exit status 130\n%s", err, stderr.String())
	}
	b.noSnapshots("web")
	if ids := b.backupIDs("web"); len(ids) != 1 {
		t.Fatalf("the interrupted backup left a restore point: %v", ids)
	}
	if left, _ := filepath.Glob(filepath.Join(b.repo, "web", "*.qcow2")); len(left) != 1 {
		t.Fatalf("images left after the interrupted backup: %v", left)
	}
	r := b.backup("web")
	if r.Level != "incremental" || r.Disks[0].BytesCopied < 16*mib {
		t.Fatalf("the backup after the interruption: %+v", r)
	}
	b.restoreAndCompare("web", 0)
}

// waitForCopy waits until a running backup of vm is copying (its new
// image exists and a plugin process runs).
func waitForCopy(t *testing.T, b *backupLab, vm string, cmd *exec.Cmd) {
	t.Helper()
	have, _ := filepath.Glob(filepath.Join(b.repo, vm, "*.qcow2"))
	for i := 0; i < 300; i++ {
		now, _ := filepath.Glob(filepath.Join(b.repo, vm, "*.qcow2"))
		if len(now) > len(have) && pluginRunning(cmd.Process.Pid) {
			time.Sleep(300 * time.Millisecond)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the backup never started copying")
}

// pluginRunning reports whether nbdkit runs as a child of pid.
func pluginRunning(pid int) bool {
	return exec.Command("pgrep", "-P", fmt.Sprint(pid), "nbdkit").Run() == nil
}

// TestBackupFaults: each bad input or fault ends with a clear error and a
// non-zero exit, leaves no snapshot, leaves the previous restore points
// intact and restorable, and does not advance the changeIds: the next
// good backup is an incremental from the old ones (or a full, after a
// failed changed-blocks query, CBT rule 2) and restores exactly.
func TestBackupFaults(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{{Name: "app", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{
		{Capacity: 32 * mib, Data: 6 * mib, Seed: 1}, {Capacity: 8 * mib, Data: 1 * mib, Seed: 2}}}})
	b.backup("app")
	seed := uint64(100)

	type fault struct {
		name     string
		env      []string
		args     []string
		setup    func() (undo func())
		during   func(cmd *exec.Cmd) // while the backup runs
		want     string              // in stderr
		nextFull bool                // the next good backup must be full
	}
	inject := func(method string) func() func() {
		return func() func() {
			if err := b.InjectFault(method, "app", 1); err != nil {
				t.Fatal(err)
			}
			return b.ClearFaults
		}
	}
	faults := []fault{
		{name: "unknown VM", args: []string{"no-such-vm"}, want: "no-such-vm"},
		{name: "wrong password", env: []string{"SENDENSE_VCENTER_PASSWORD_FILE=" + writeTemp(t, "wrong")}, want: "login"},
		{name: "wrong thumbprint", env: []string{"SENDENSE_VCENTER_THUMBPRINT=00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33"}, want: "thumbprint"},
		{name: "missing VDDK", env: []string{"SENDENSE_VDDK_LIBDIR=/nonexistent"}, want: "libvixDiskLib"},
		{name: "not a repository", env: []string{"SENDENSE_REPOSITORY=" + nonRepo(t)}, want: "not a sendense repository"},
		{name: "CreateSnapshot fault", setup: inject("CreateSnapshot"), want: "CreateSnapshot"},
		{name: "RemoveSnapshot fault", setup: inject("RemoveSnapshot"), want: "RemoveSnapshot"},
		// A QueryChangedDiskAreas fault makes a full copy: TestBackupCBTFault.
		// 2 MiB changed: two 1 MiB reads of 0.4 s each.
		{name: "nbdkit dies mid-copy", env: []string{"FAKEVDDK_READ_DELAY_US=400000"}, during: func(cmd *exec.Cmd) {
			waitForCopy(t, b, "app", cmd)
			exec.Command("pkill", "-KILL", "-P", fmt.Sprint(cmd.Process.Pid), "nbdkit").Run()
		}, want: "nbdkit"},
		// A corrupt manifest or a damaged previous image do not stop the
		// backup: TestBackupDamagedBase.
	}
	for _, f := range faults {
		t.Run(strings.ReplaceAll(f.name, " ", "_"), func(t *testing.T) {
			b.t = t
			before := b.backupIDs("app")
			seed++
			b.write("app", 2000, seed%24*mib, 2*mib, seed)
			undo := func() {}
			if f.setup != nil {
				undo = f.setup()
			}
			args := f.args
			if args == nil {
				args = []string{"app"}
			}
			cmd := b.cmd(f.env, append([]string{"backup"}, args...)...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if f.during != nil {
				f.during(cmd)
			}
			err := cmd.Wait()
			undo()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("backup succeeded despite the fault:\n%s", stderr.String())
			}
			msg := stderr.String()
			if !strings.Contains(msg, f.want) {
				t.Errorf("error does not mention %q:\n%s", f.want, msg)
			}
			t.Logf("exit %d: %s", ee.ExitCode(), strings.TrimSpace(msg))
			b.noSnapshots("app")
			if after := b.backupIDs("app"); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Fatalf("restore points changed: before %v, after %v", before, after)
			}
			b.restoreAndCompare("app", 1)
			// The changeIds did not advance: the next backup repeats the
			// incremental from the last good point and is correct.
			r := b.backup("app")
			for _, d := range r.Disks {
				// Only disk 2000's query fails (the fault fires once).
				if wantFull := f.nextFull && d.Key == 2000; (d.Level == "full") != wantFull {
					t.Fatalf("the next backup of disk %d is %s (%s), want full=%v", d.Key, d.Level, d.Reason, wantFull)
				}
			}
			b.restoreAndCompare("app", 1)
			b.noSnapshots("app")
		})
	}
}

// TestBackupDiskFull: the repository's file system fills up mid-copy.
func TestBackupDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs as the repository")
	}
	b := startBackupLab(t, []lab.VMSpec{{Name: "big", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: 64 * mib, Data: 4 * mib, Seed: 1}}}})
	small := filepath.Join(b.dir, "small")
	os.Mkdir(small, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", small).Run() })
	b.env = append(b.env, "SENDENSE_REPOSITORY="+small)
	b.repo = small
	b.backup("big")
	b.write("big", 2000, 8*mib, 24*mib, 2) // more than the space left
	_, stderr, code := b.run(nil, "backup", "big")
	if code == 0 {
		t.Fatal("backup into a full file system succeeded")
	}
	if !strings.Contains(stderr, "space") {
		t.Errorf("error does not say the space ran out:\n%s", stderr)
	}
	b.noSnapshots("big")
	if ids := b.backupIDs("big"); len(ids) != 1 {
		t.Fatalf("restore points after the failure: %v", ids)
	}
	b.restoreAndCompare("big", 0)
}

func writeTemp(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte(content), 0o600)
	return p
}

func nonRepo(t *testing.T) string {
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, "precious.txt"), []byte("not a repository"), 0o600)
	return d
}

// TestBackupDamagedBase: when the previous image of a disk is damaged or
// missing, the next backup of that disk is full, saying why, the other
// disk stays incremental, the damaged point stays as it was (verify
// reports it), and the new point restores exactly.
func TestBackupDamagedBase(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{{Name: "app", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{
		{Capacity: 16 * mib, Data: 4 * mib, Seed: 31}, {Capacity: 8 * mib, Data: mib, Seed: 32}}}})
	r1 := b.backup("app")
	img := filepath.Join(b.repo, "app", r1.BackupID+"-disk2000.qcow2")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("XX"), 0) // the qcow2 magic
	f.Close()
	b.write("app", 2000, 0, 64*kib, 1)
	b.write("app", 2001, 0, 64*kib, 2)
	r2 := b.backup("app")
	for _, d := range r2.Disks {
		switch {
		case d.Key == 2000 && (d.Level != "full" || !strings.Contains(d.Reason, "cannot be the base of an incremental") || !strings.Contains(d.Reason, "qcow2 header")):
			t.Errorf("disk 2000 after its base was damaged: %s (%s)", d.Level, d.Reason)
		case d.Key == 2001 && d.Level != "incremental":
			t.Errorf("disk 2001: %s (%s)", d.Level, d.Reason)
		}
	}
	out, _, code := b.run(nil, "verify", "app")
	if code != 3 || !strings.Contains(out, img) {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
	to := filepath.Join(b.dir, "restore-damaged-base")
	b.mustRun("restore", "app", "--backup", r2.BackupID, "--to", to)
	for key, exp := range b.expected["app"][r2.BackupID] {
		run(t, "cmp", exp, filepath.Join(to, fmt.Sprintf("app-disk%d.raw", key)))
	}
	if _, errOut, code := b.run(nil, "restore", "app", "--backup", r1.BackupID, "--to", to+"-1"); code != 1 || !strings.Contains(errOut, img) {
		t.Fatalf("restore of the damaged point: exit %d: %s", code, errOut)
	}
	// A missing image: the same.
	os.Remove(filepath.Join(b.repo, "app", r2.BackupID+"-disk2001.qcow2"))
	b.write("app", 2001, 64*kib, 64*kib, 3)
	r3 := b.backup("app")
	for _, d := range r3.Disks {
		if want := d.Key == 2001; (d.Level == "full") != want {
			t.Errorf("after a missing image, disk %d: %s (%s)", d.Key, d.Level, d.Reason)
		}
	}
	b.mustRun("restore", "app", "--backup", r3.BackupID, "--to", to+"-3")
	for key, exp := range b.expected["app"][r3.BackupID] {
		run(t, "cmp", exp, filepath.Join(to+"-3", fmt.Sprintf("app-disk%d.raw", key)))
	}
	// A corrupt newest manifest: the next backup goes on from the newest
	// valid one (incremental from its changeIds), under a later id, and
	// the corrupt file stays.
	m3 := filepath.Join(b.repo, "app", r3.BackupID+".json")
	good, _ := os.ReadFile(m3)
	os.WriteFile(m3, good[:len(good)/2], 0o600)
	b.write("app", 2000, 2*mib, 64*kib, 4)
	r4 := b.backup("app")
	for _, d := range r4.Disks {
		// (backup 2's image of disk 2001 is still missing)
		if want := d.Key == 2001; (d.Level == "full") != want {
			t.Errorf("after a corrupt manifest, disk %d: %s (%s)", d.Key, d.Level, d.Reason)
		}
	}
	if got, _ := os.ReadFile(m3); !bytes.Equal(got, good[:len(good)/2]) {
		t.Error("the corrupt manifest was changed")
	}
	b.mustRun("restore", "app", "--backup", r4.BackupID, "--to", to+"-4")
	for key, exp := range b.expected["app"][r4.BackupID] {
		run(t, "cmp", exp, filepath.Join(to+"-4", fmt.Sprintf("app-disk%d.raw", key)))
	}
}
