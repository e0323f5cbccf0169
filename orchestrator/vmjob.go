package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/lockfile"
	"github.com/sendense/capture/internal/procid"
)

// SnapshotPrefix starts the name of every snapshot a job takes. A later
// job removes such a snapshot only when its description is the owner
// marker (cbt.SnapshotOwner) of a job that is provably gone.
const SnapshotPrefix = "sendense-"

// snapshotRemoveTimeout bounds the snapshot removal that always runs,
// even after the job's context is cancelled.
const snapshotRemoveTimeout = 10 * time.Minute

// vmJob is what backup and replication jobs of one VM share: the VM, a
// private temporary directory (sockets, changed-area files), the notices
// for the user and the snapshot's life cycle.
type vmJob struct {
	s       *Services
	vm      *cbt.VM
	rep     Reporter
	tmp     string // private 0700 directory
	lock    *lockfile.Lock
	id      string // the job's id in its snapshot's owner marker
	started time.Time

	mu      sync.Mutex
	notices []string
	snap    string // the snapshot taken, once taken
	left    string // a snapshot it could not remove
}

// newVMJob checks the tools, finds and locks the VM and makes the job's
// directory.
func newVMJob(ctx context.Context, s *Services, vmSpec, kind string) (*vmJob, error) {
	if err := s.Preflight(); err != nil {
		return nil, err
	}
	vm, err := s.Client.FindVM(ctx, vmSpec)
	if err != nil {
		return nil, err
	}
	lock, err := lockVM(ctx, s, vm, kind)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.TempDir, "sendense-"+kind+"-")
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	id := s.JobID
	if id == "" {
		id = newJobID()
	}
	liveJobs.add(id)
	return &vmJob{s: s, vm: vm, rep: s.reporter(), tmp: tmp, lock: lock, id: id, started: time.Now()}, nil
}

func (j *vmJob) close() {
	liveJobs.remove(j.id)
	os.RemoveAll(j.tmp)
	j.lock.Unlock()
}

// finish copies what the report says of the job's snapshot and notices.
func (j *vmJob) finish(r *Report) {
	j.mu.Lock()
	if r.Snapshot == "" {
		r.Snapshot = j.snap
	}
	r.SnapshotLeft = j.left
	j.mu.Unlock()
	r.Notices = j.takeNotices()
}

// newJobID makes a job id: the time and 3 random bytes.
func newJobID() string {
	var b [3]byte
	rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// liveJobs are the jobs of this process that have not ended: a snapshot
// whose marker names this process is its job's as long as the job runs.
var liveJobs = jobSet{m: map[string]int{}}

type jobSet struct {
	mu sync.Mutex
	m  map[string]int
}

func (s *jobSet) add(id string) { s.mu.Lock(); s.m[id]++; s.mu.Unlock() }

func (s *jobSet) remove(id string) {
	s.mu.Lock()
	if s.m[id]--; s.m[id] <= 0 {
		delete(s.m, id)
	}
	s.mu.Unlock()
}

func (s *jobSet) has(id string) bool { s.mu.Lock(); defer s.mu.Unlock(); return s.m[id] > 0 }

// ErrVMBusy is returned when another job of this host works on the VM.
var ErrVMBusy = errors.New("VM is busy")

// VMLockPath is the lock file a job holds while it works on the VM with
// moref on the vSphere server identified by serverID
// (cbt.Client.ServerID), in the state directory: one lock per VM
// whatever the spelling of the server's address, shared by every
// sendense process that uses that state directory.
func VMLockPath(stateDir, serverID, moref string) string {
	return filepath.Join(stateDir, "locks", "vm-"+safeName(serverID)+"-"+safeName(moref)+".lock")
}

// safeName keeps [A-Za-z0-9._-] of s, replacing the rest with "_".
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return r
		}
		return '_'
	}, s)
}

// VMLockPath is the lock file of the VM with moref on s's server.
func (s *Services) VMLockPath(ctx context.Context, moref string) (string, error) {
	dir, err := StateDir(s.Config)
	if err != nil {
		return "", err
	}
	return VMLockPath(dir, s.Client.ServerID(ctx), moref), nil
}

// StateDir makes sure [state] dir and its locks directory exist (created
// 0700) and are writable by nobody else, and returns its absolute path.
func StateDir(c *config.Config) (string, error) {
	dir := c.State.Dir
	if dir == "" {
		dir = config.DefaultStateDir
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	locks := filepath.Join(dir, "locks")
	if err := os.MkdirAll(locks, 0o700); err != nil {
		return "", fmt.Errorf("state directory %s ([state] dir, $SENDENSE_STATE_DIR): %w: run as root, or set [state] dir or SENDENSE_STATE_DIR to a directory of yours that every sendense process of this host (CLI and agent) uses", dir, err)
	}
	for _, d := range []string{dir, locks} {
		st, err := os.Stat(d)
		if err != nil {
			return "", fmt.Errorf("state directory %s ([state] dir): %w", dir, err)
		}
		if !st.IsDir() {
			return "", fmt.Errorf("state directory %s ([state] dir): %s is not a directory", dir, d)
		}
		if st.Mode().Perm()&0o022 != 0 {
			return "", fmt.Errorf("state directory %s ([state] dir): %s is writable by other users (mode %s): chmod 700 %s", dir, d, st.Mode().Perm(), d)
		}
	}
	return dir, nil
}

// lockVM makes sure only one job of this host works on a VM at a time.
func lockVM(ctx context.Context, s *Services, vm *cbt.VM, kind string) (*lockfile.Lock, error) {
	path, err := s.VMLockPath(ctx, vm.Moref)
	if err != nil {
		return nil, err
	}
	l, holder, err := lockfile.TryExclusive(path, kind+" of "+vm.Name)
	if err != nil {
		return nil, err
	}
	if holder != nil {
		return nil, fmt.Errorf("%w: VM %s: %s is working on it; retry when it has finished (lock file %s)", ErrVMBusy, vm, holder, path)
	}
	return l, nil
}

// CleanupSnapshots removes the snapshots of dead jobs from the VM with the
// given moref, as a job does at its start, under the VM's job lock
// (ErrVMBusy when a job holds it: that job cleans up itself). A VM that
// no longer exists has nothing to clean. It returns the snapshots
// removed. The agent calls it for jobs interrupted by a restart and
// after a failed job.
func CleanupSnapshots(ctx context.Context, s *Services, moref string) ([]cbt.Snapshot, error) {
	vm, err := s.Client.FindVM(ctx, "moref="+moref)
	if errors.Is(err, cbt.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	lock, err := lockVM(ctx, s, vm, "snapshot cleanup")
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	removed, kept, err := removeDeadJobSnapshots(ctx, s, vm)
	for _, k := range kept {
		slog.Info("snapshot left alone", "vm", vm.Name, "snapshot", k.Moref, "name", k.Name, "why", k.why)
	}
	var out []cbt.Snapshot
	for _, r := range removed {
		slog.Info("removed the snapshot of a dead job", "vm", vm.Name, "snapshot", r.Moref, "name", r.Name, "why", r.why)
		out = append(out, r.Snapshot)
	}
	return out, err
}

// judgedSnapshot is a snapshot named like a job's, and why a job removed
// it or left it alone.
type judgedSnapshot struct {
	cbt.Snapshot
	why string
}

// removeDeadJobSnapshots removes vm's snapshots whose owner marker names
// a job that is provably gone (staleSnapshot); the caller holds the VM's
// job lock. It returns what it removed and the "sendense-*" snapshots
// it left alone, with why.
func removeDeadJobSnapshots(ctx context.Context, s *Services, vm *cbt.VM) (removed, kept []judgedSnapshot, err error) {
	lease, err := s.Config.State.Lease()
	if err != nil {
		return nil, nil, fmt.Errorf("[state] snapshot_lease: %w", err)
	}
	snaps, err := s.Client.Snapshots(ctx, vm)
	if err != nil {
		return nil, nil, err
	}
	me, _ := procid.Current()
	now := time.Now()
	for _, sn := range snaps {
		remove, why := staleSnapshot(sn, me, now, lease)
		switch {
		case why == "":
			continue
		case !remove:
			kept = append(kept, judgedSnapshot{sn, why})
			continue
		}
		if err := s.Client.RemoveSnapshot(ctx, sn.Moref); err != nil {
			return removed, kept, fmt.Errorf("removing snapshot %q (%s) left by a dead job (%s): %w", sn.Name, sn.Moref, why, err)
		}
		removed = append(removed, judgedSnapshot{sn, why})
	}
	return removed, kept, nil
}

// staleSnapshot decides whether a job may remove sn: only a snapshot
// named "sendense-*" carrying a valid owner marker whose owner is
// provably gone: on this host, its job ended (this process) or its
// process no longer runs or the host rebooted since; on another host,
// it is older than the lease (0: never). why says why it is removed or
// kept; it is "" for snapshots that are not named like a job's.
func staleSnapshot(sn cbt.Snapshot, me procid.Self, now time.Time, lease time.Duration) (remove bool, why string) {
	if !strings.HasPrefix(sn.Name, SnapshotPrefix) {
		return false, ""
	}
	o := sn.Owner
	if o == nil {
		return false, "foreign: it carries no sendense owner marker (a user's snapshot?); sendense never removes it"
	}
	if o.Host == me.Host && me.Host != "" {
		if o.PID == me.PID && o.PIDStart == me.Start && o.Boot == me.Boot {
			if liveJobs.has(o.Job) {
				return false, fmt.Sprintf("job %s of this process is still running", o.Job)
			}
			return true, fmt.Sprintf("its job %s of this process has ended", o.Job)
		}
		if l, gone := procid.Check(o.Boot, o.PID, o.PIDStart); l == procid.Gone {
			return true, fmt.Sprintf("its job %s died: %s", o.Job, gone)
		}
		return false, fmt.Sprintf("job %s of process %d on this host is still running", o.Job, o.PID)
	}
	taken := o.Started
	if sn.Created.After(taken) {
		taken = sn.Created
	}
	age := now.Sub(taken).Round(time.Second)
	switch {
	case lease == 0:
		return false, fmt.Sprintf("job %s of another host took it %s ago; [state] snapshot_lease = \"0\": never removed", o.Job, age)
	case age < lease:
		return false, fmt.Sprintf("job %s of another host took it %s ago; removed once older than [state] snapshot_lease (%s)", o.Job, age, lease)
	}
	return true, fmt.Sprintf("job %s of another host took it %s ago, more than [state] snapshot_lease (%s)", o.Job, age, lease)
}

// cbtFault says whether err, from querying a disk's changed areas, is a
// fault of CBT (vSphere refused the query or answered nonsense) rather
// than the job's cancellation or a lost connection to vCenter.
func (j *vmJob) cbtFault(ctx context.Context, err error) bool {
	var ne net.Error
	var ue *url.Error
	return ctx.Err() == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, cbt.ErrSessionFailed) && !errors.Is(err, cbt.ErrUnreachable) && !errors.As(err, &ne) && !errors.As(err, &ue)
}

// fullAfterFault makes p a full copy after its changed-blocks query
// failed (CBT rule 2 and the product's "corrupted CBT: restart with a
// full"), and says so.
func (j *vmJob) fullAfterFault(p *diskPlan, why string) {
	p.full, p.reason, p.base, p.areas, p.areaFile = true, why, "", nil, ""
	j.notice("disk %d (%s): full copy: %s ([cbt] fault = \"full\"); if this repeats, reset CBT with 'sendense cbt reset %s'", p.disk.Key, p.disk.Label, why, j.vm.Name)
}

// owner is the marker of the job's snapshots, "" when this process
// cannot identify itself (then a snapshot left behind is never removed
// by a later job).
func (j *vmJob) owner() string {
	o, err := cbt.NewSnapshotOwner(j.id, j.started)
	if err != nil {
		slog.Warn("cannot make the snapshot's owner marker: a snapshot this job leaves behind must be removed by hand", "err", err)
		return ""
	}
	return o.Description()
}

func (j *vmJob) notice(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	j.mu.Lock()
	j.notices = append(j.notices, msg)
	j.mu.Unlock()
	slog.Info(msg, "vm", j.vm.Name)
	j.rep.Notice(j.vm.Name, msg)
}

func (j *vmJob) takeNotices() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.notices...)
}

// ensureCBT checks that CBT is on, enabling it when [cbt] auto_enable is
// set. When it had to be enabled, this job is full (tracking starts at
// the snapshot about to be taken).
func (j *vmJob) ensureCBT(ctx context.Context) error {
	st, err := j.s.Client.CBTStatus(ctx, j.vm)
	if err != nil {
		return err
	}
	if st.Enabled {
		return nil
	}
	if !st.Supported {
		return fmt.Errorf("VM %s does not support Changed Block Tracking (virtual hardware too old?)", j.vm)
	}
	if !j.s.Config.CBT.AutoEnable {
		return fmt.Errorf("Changed Block Tracking is off on VM %s: enable it with 'sendense cbt enable %s' or set [cbt] auto_enable = true", j.vm, j.vm.Name)
	}
	res, err := j.s.Client.EnableCBT(ctx, j.vm)
	if err != nil {
		return err
	}
	if res.Notice != "" {
		j.notice("CBT enabled: %s", res.Notice)
	}
	return nil
}

// removeStaleSnapshots removes the snapshots of dead jobs (they pin disk
// space and confuse the next snapshot) and says which "sendense-*"
// snapshots it leaves alone and why.
func (j *vmJob) removeStaleSnapshots(ctx context.Context) error {
	removed, kept, err := removeDeadJobSnapshots(ctx, j.s, j.vm)
	for _, sn := range removed {
		j.notice("removed stale snapshot %q (%s): %s", sn.Name, sn.Moref, sn.why)
	}
	for _, k := range kept {
		j.notice("left snapshot %q (%s) alone: %s", k.Name, k.Moref, k.why)
	}
	return err
}

// createSnapshot takes the job's snapshot, quiesced if asked; when
// quiescing fails it falls back to a crash-consistent snapshot only if
// allowCrash.
func (j *vmJob) createSnapshot(ctx context.Context, name string, quiesce, allowCrash bool) (string, bool, error) {
	snap, err := j.snapshot(ctx, name, quiesce)
	if err == nil || !quiesce || ctx.Err() != nil {
		return snap, quiesce, err
	}
	if !allowCrash {
		return "", false, fmt.Errorf("quiesced snapshot failed (VMware Tools running in the guest?): %w; --allow-crash-consistent falls back to a crash-consistent snapshot", err)
	}
	j.notice("quiesced snapshot failed (%v): taking a crash-consistent snapshot instead (--allow-crash-consistent)", err)
	snap, err = j.snapshot(ctx, name, false)
	return snap, false, err
}

// snapshot runs CreateSnapshot to its end even when ctx is cancelled
// meanwhile (vCenter would finish the task anyway), then removes the
// snapshot and returns ctx's error: a cancellation never leaks one.
func (j *vmJob) snapshot(ctx context.Context, name string, quiesce bool) (string, error) {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotRemoveTimeout)
	defer cancel()
	desc := j.owner()
	if desc == "" {
		desc = "Sendense capture job " + j.id + "; removed when the job ends"
	}
	snap, err := j.s.Client.CreateSnapshot(tctx, j.vm, name, desc, quiesce, false)
	if err == nil {
		j.mu.Lock()
		j.snap = snap
		j.mu.Unlock()
	}
	if err == nil && ctx.Err() != nil {
		j.cleanupSnapshot(ctx, snap)
		return "", ctx.Err()
	}
	return snap, err
}

// removeSnapshot removes the job's snapshot, even when ctx is cancelled
// (SIGINT/SIGTERM).
func (j *vmJob) removeSnapshot(ctx context.Context, snap string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotRemoveTimeout)
	defer cancel()
	if err := j.s.Client.RemoveSnapshot(rctx, snap); err != nil {
		return err
	}
	slog.Debug("snapshot removed", "vm", j.vm.Name, "snapshot", snap)
	return nil
}

// cleanupSnapshot removes the snapshot after a failure, retrying a few
// times; what it cannot remove, the next job removes as stale.
func (j *vmJob) cleanupSnapshot(ctx context.Context, snap string) {
	var err error
	for attempt, wait := 1, time.Second; attempt <= 3; attempt, wait = attempt+1, wait*2 {
		if err = j.removeSnapshot(ctx, snap); err == nil {
			return
		}
		slog.Warn("removing the snapshot failed, retrying", "snapshot", snap, "attempt", attempt, "err", err)
		time.Sleep(wait)
	}
	j.mu.Lock()
	j.left = snap
	j.mu.Unlock()
	j.notice("could not remove snapshot %s: %v (the next job of the VM removes it)", snap, err)
}
