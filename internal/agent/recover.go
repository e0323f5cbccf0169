package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/orchestrator"
)

// cleanupEvery is how often snapshot cleanups left by a restart are
// retried while vCenter cannot do them.
const cleanupEvery = 30 * time.Second

// recoverJobs loads the history: jobs that were running when the
// previous agent stopped are marked failed and their snapshots queued for
// removal; queued ones are queued again.
func (s *Server) recoverJobs() error {
	recs, bad, err := s.store.load()
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		s.log.Warn("skipping unreadable job records", "store", s.store.path, "jobs", strings.Join(bad, ", "))
	}
	sort.Slice(recs, func(a, b int) bool { return older(recs[a], recs[b]) })
	now := s.now()
	for _, rec := range recs {
		j := &job{Job: *rec}
		switch j.State {
		case StateRunning:
			j.State, j.Phase, j.Finished = StateFailed, phaseFailed, &now
			j.Error = interruptedError
			if j.VM.Moref != "" {
				j.SnapshotCleanup = cleanupPending
			}
			for i := range j.Disks {
				if j.Disks[i].Phase != string(orchestrator.PhaseDone) {
					j.Disks[i].Phase = string(orchestrator.PhaseFailed)
				}
			}
			s.interrupted++
			s.log.Warn("job interrupted by an agent restart: marked failed", "job", j.ID, "vm", j.VM.String(), "snapshot", j.Snapshot)
			if err := s.store.put(&j.Job); err != nil {
				return err
			}
		case StateWaiting:
			j.State, j.Phase = StateQueued, phaseQueued
		case StateSucceeded:
			s.sched.noteSuccess(&j.Job)
		}
		s.sched.restore(j)
	}
	s.sched.mu.Lock()
	s.sched.pruneLocked()
	s.sched.mu.Unlock()
	return nil
}

// cleanupLoop removes the snapshots of jobs interrupted by a restart, as
// soon as vCenter answers and then every cleanupEvery until none is left.
func (s *Server) cleanupLoop(ctx context.Context) {
	if !s.cleanupPending() {
		return
	}
	select {
	case <-s.vc.connected:
	case <-ctx.Done():
		return
	}
	for {
		if s.cleanupSnapshots(ctx) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(cleanupEvery):
		}
	}
}

func (s *Server) cleanupPending() bool {
	for _, j := range s.sched.list() {
		j.mu.Lock()
		p := j.SnapshotCleanup == cleanupPending
		j.mu.Unlock()
		if p {
			return true
		}
	}
	return false
}

// cleanupSnapshots tries every pending cleanup once; it reports whether
// none is left.
func (s *Server) cleanupSnapshots(ctx context.Context) bool {
	left := false
	for _, j := range s.sched.list() {
		j.mu.Lock()
		pending, vm := j.SnapshotCleanup == cleanupPending, j.VM
		j.mu.Unlock()
		if !pending {
			continue
		}
		// No job of the VM starts while its snapshots are cleaned; one
		// running now removes stale snapshots itself: try again later.
		if !s.sched.beginCleanup(vm.Moref) {
			left = true
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		removed, err := s.removeStaleSnapshots(cctx, vm)
		cancel()
		s.sched.endCleanup(vm.Moref)
		if err != nil {
			left = true
			s.log.Warn("removing the snapshot of an interrupted job, will retry", "job", j.ID, "vm", vm.String(), "err", err)
			continue
		}
		s.sched.mu.Lock()
		j.mu.Lock()
		j.SnapshotCleanup = cleanupDone
		if len(removed) > 0 {
			j.Notices = append(j.Notices, "after the restart, removed "+strings.Join(removed, ", ")+" left by this job")
		}
		j.mu.Unlock()
		s.sched.mu.Unlock()
		s.save(j)
		s.log.Info("cleaned up after an interrupted job", "job", j.ID, "vm", vm.String(), "removed", strings.Join(removed, ", "))
	}
	return !left
}

// errVMBusy says another process's job works on the VM.
var errVMBusy = errors.New("another job works on the VM")

// removeStaleSnapshots removes the VM's sendense-* snapshots under the
// orchestrator's VM lock, exactly as a backup does at its start
// (orchestrator.CleanupSnapshots). It fails with errVMBusy when a job
// holds the lock (that job removes them itself). It returns what it
// removed, as "snapshot moref (name)".
func (s *Server) removeStaleSnapshots(ctx context.Context, vm cbt.VM) ([]string, error) {
	svc, err := s.vc.services()
	if err != nil {
		return nil, err
	}
	snaps, err := orchestrator.CleanupSnapshots(ctx, svc, vm.Moref)
	var removed []string
	for _, sn := range snaps {
		removed = append(removed, fmt.Sprintf("snapshot %s (%s)", sn.Moref, sn.Name))
	}
	if errors.Is(err, orchestrator.ErrVMBusy) {
		err = fmt.Errorf("%w: %v", errVMBusy, err)
	}
	return removed, err
}

// sweepSnapshots runs in a job's goroutine after it failed or was
// canceled, before the job is recorded as ended (so no job of the VM
// starts meanwhile). A cancellation that lands while vCenter creates the
// snapshot leaves one the backup never learnt about (vCenter completes
// the task), and a removal that failed leaves the recorded one: the VM's
// stale snapshots are removed under the VM lock, as the next backup would.
// When another process's job holds the lock, it removes them itself.
func (s *Server) sweepSnapshots(j *job) {
	j.mu.Lock()
	vm := j.VM
	j.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	removed, err := s.removeStaleSnapshots(ctx, vm)
	for _, r := range removed {
		msg := "removed " + r + " left by the job"
		s.log.Info(msg, "job", j.ID, "vm", vm.String())
		j.mu.Lock()
		j.Notices = append(j.Notices, msg)
		j.mu.Unlock()
	}
	if err != nil && !errors.Is(err, errVMBusy) {
		s.log.Warn("checking for snapshots left by a job (the next backup of the VM removes them)", "job", j.ID, "vm", vm.String(), "err", err)
	}
}
