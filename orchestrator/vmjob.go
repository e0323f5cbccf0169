package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/lockfile"
)

// SnapshotPrefix starts the name of every snapshot a job takes; stale
// ones (left by a crash) are removed at the start of the next job.
const SnapshotPrefix = "sendense-"

// snapshotRemoveTimeout bounds the snapshot removal that always runs,
// even after the job's context is cancelled.
const snapshotRemoveTimeout = 10 * time.Minute

// vmJob is what backup and replication jobs of one VM share: the VM, a
// private temporary directory (sockets, changed-area files), the notices
// for the user and the snapshot's life cycle.
type vmJob struct {
	s    *Services
	vm   *cbt.VM
	rep  Reporter
	tmp  string // private 0700 directory
	lock *lockfile.Lock

	mu      sync.Mutex
	notices []string
}

// newVMJob checks the tools, finds the VM and makes the job's directory.
func newVMJob(ctx context.Context, s *Services, vmSpec, kind string) (*vmJob, error) {
	if err := s.Preflight(); err != nil {
		return nil, err
	}
	vm, err := s.Client.FindVM(ctx, vmSpec)
	if err != nil {
		return nil, err
	}
	lock, err := lockVM(s, vm, kind)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.TempDir, "sendense-"+kind+"-")
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	return &vmJob{s: s, vm: vm, rep: s.reporter(), tmp: tmp, lock: lock}, nil
}

func (j *vmJob) close() {
	os.RemoveAll(j.tmp)
	j.lock.Unlock()
}

// ErrVMBusy is returned when another job of this host works on the VM.
var ErrVMBusy = errors.New("VM is busy")

// VMLockPath is the lock file a job holds while it works on the VM with
// moref on the vCenter host.
func VMLockPath(host, moref string) string {
	name := strings.NewReplacer("/", "_", ":", "_").Replace(host + "-" + moref)
	return filepath.Join(os.TempDir(), "sendense-locks", name+".lock")
}

// lockVM makes sure only one job of this host works on a VM at a time:
// jobs remove "sendense-*" snapshots they find, which must never be
// another running job's.
func lockVM(s *Services, vm *cbt.VM, kind string) (*lockfile.Lock, error) {
	path := VMLockPath(s.Client.Host(), vm.Moref)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
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

// CleanupSnapshots removes the "sendense-*" snapshots of the VM with the
// given moref, as a job does at its start: under the VM's job lock, so
// none of them belongs to a running job of this host (ErrVMBusy when one
// runs: it removes them itself). A VM that no longer exists has nothing
// to clean. It returns the snapshots removed. The agent calls it for jobs
// interrupted by a restart.
func CleanupSnapshots(ctx context.Context, s *Services, moref string) ([]cbt.Snapshot, error) {
	vm, err := s.Client.FindVM(ctx, "moref="+moref)
	if errors.Is(err, cbt.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	lock, err := lockVM(s, vm, "snapshot cleanup")
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	return removeJobSnapshots(ctx, s.Client, vm)
}

// removeJobSnapshots removes vm's "sendense-*" snapshots; the caller
// holds the VM's job lock.
func removeJobSnapshots(ctx context.Context, c *cbt.Client, vm *cbt.VM) ([]cbt.Snapshot, error) {
	snaps, err := c.Snapshots(ctx, vm)
	if err != nil {
		return nil, err
	}
	var removed []cbt.Snapshot
	for _, sn := range snaps {
		if !strings.HasPrefix(sn.Name, SnapshotPrefix) {
			continue
		}
		if err := c.RemoveSnapshot(ctx, sn.Moref); err != nil {
			return removed, fmt.Errorf("removing stale snapshot %q (%s) left by an earlier job: %w", sn.Name, sn.Moref, err)
		}
		removed = append(removed, sn)
	}
	return removed, nil
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

// removeStaleSnapshots removes sendense-* snapshots left by a crashed
// job: they pin disk space and confuse the next snapshot. The job holds
// the VM's lock, so none is another running job's.
func (j *vmJob) removeStaleSnapshots(ctx context.Context) error {
	removed, err := removeJobSnapshots(ctx, j.s.Client, j.vm)
	for _, sn := range removed {
		j.notice("removed stale snapshot %q (%s) left by an earlier job", sn.Name, sn.Moref)
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
	snap, err := j.s.Client.CreateSnapshot(tctx, j.vm, name, "Sendense capture; removed when the job ends", quiesce, false)
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
	j.notice("could not remove snapshot %s: %v (the next job removes it)", snap, err)
}
