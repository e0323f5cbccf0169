package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sendense/capture/orchestrator"
)

// Why a running job's context is cancelled.
var (
	errCanceledByClient = errors.New("canceled by DELETE /api/v1/backup/{job_id}")
	errShutdown         = errors.New("canceled: the agent is shutting down (SIGTERM/SIGINT)")
)

// errBusy is returned by add when the VM already has an active job.
type errBusy struct{ id string }

func (e errBusy) Error() string { return "job " + e.id + " is already active for this VM" }

// errStopping is returned by add while the agent shuts down.
var errStopping = errors.New("the agent is shutting down")

// rescanEvery bounds how long a waiting job may miss a window opening
// (a clock change, a suspended host).
const rescanEvery = 30 * time.Second

// scheduler is the queue: jobs start in creation order, at most
// [performance] max_concurrent_backups at a time, and those not forced
// only while [performance] backup_window is open. A VM has at most one
// active (queued, waiting or running) job.
type scheduler struct {
	s   *Server
	max int

	mu        sync.Mutex
	jobs      map[string]*job
	running   int
	accepting bool
	kickc     chan struct{}
	wg        sync.WaitGroup // running jobs
	jobCtx    context.Context
	stopJobs  context.CancelCauseFunc

	// VMs whose snapshots a restart cleanup is removing: their jobs wait.
	cleaning map[string]bool

	// The last succeeded backups, for health's averages.
	lastSuccess time.Time
	recent      []recentBackup // at most avgWindow, oldest first
}

// recentBackup is what health's average throughput needs of a backup.
type recentBackup struct {
	mib, secs float64
}

// noteSuccess records a succeeded job for health; q.mu held.
func (q *scheduler) noteSuccess(j *Job) {
	if j.Finished != nil && j.Finished.After(q.lastSuccess) {
		q.lastSuccess = *j.Finished
	}
	tp := j.throughput()
	if tp <= 0 || j.Report == nil {
		return
	}
	mib := float64(j.Report.BytesRead) / (1 << 20)
	q.recent = append(q.recent, recentBackup{mib: mib, secs: mib / tp})
	if len(q.recent) > avgWindow {
		q.recent = q.recent[len(q.recent)-avgWindow:]
	}
}

func newScheduler(s *Server, max int) *scheduler {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &scheduler{s: s, max: max, jobs: map[string]*job{}, accepting: true, cleaning: map[string]bool{},
		kickc: make(chan struct{}, 1), jobCtx: ctx, stopJobs: cancel}
}

// kick makes the loop look at the queue again.
func (q *scheduler) kick() {
	select {
	case q.kickc <- struct{}{}:
	default:
	}
}

// loop starts jobs as slots free and the window opens, until ctx ends.
func (q *scheduler) loop(ctx context.Context) {
	for {
		next := q.dispatch()
		var timer <-chan time.Time
		if !next.IsZero() {
			d := max(next.Sub(q.s.now()), 0) + time.Second
			timer = time.After(min(d, rescanEvery))
		} else {
			timer = time.After(rescanEvery)
		}
		select {
		case <-ctx.Done():
			return
		case <-q.kickc:
		case <-timer:
		}
	}
}

// pendingSorted returns the jobs waiting to start, oldest first; q.mu held.
func (q *scheduler) pendingSorted() []*job {
	var out []*job
	for _, j := range q.jobs {
		if j.State.pending() {
			out = append(out, j)
		}
	}
	sort.Slice(out, func(a, b int) bool { return older(&out[a].Job, &out[b].Job) })
	return out
}

// dispatch starts what may start and marks what waits for the window. It
// returns when the window next opens if a job waits for it.
func (q *scheduler) dispatch() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.accepting {
		return time.Time{}
	}
	now := q.s.now()
	open := q.s.window.open(now)
	// Jobs start once the vCenter session is up (it kicks the loop).
	connected := q.s.vc.svc.Load() != nil
	var waiting bool
	for _, j := range q.pendingSorted() {
		j.mu.Lock()
		force := j.Force
		j.mu.Unlock()
		switch {
		case !open && !force:
			waiting = true
			if q.setPending(j, StateWaiting, phaseWaiting) {
				q.s.log.Info("job waits for the backup window", "job", j.ID, "window", q.s.window.String(),
					"opens", q.s.window.nextOpen(now).Format(time.RFC3339), "hint", `"force": true starts it now`)
			}
		case q.running < q.max && connected && !q.cleaning[j.VM.Moref]:
			q.start(j)
		default:
			q.setPending(j, StateQueued, phaseQueued)
		}
	}
	if waiting {
		return q.s.window.nextOpen(now)
	}
	return time.Time{}
}

// setPending records a change between queued and waiting_for_window and
// says whether it was one; q.mu held.
func (q *scheduler) setPending(j *job, st State, phase string) bool {
	j.mu.Lock()
	if j.State == st {
		j.mu.Unlock()
		return false
	}
	j.State, j.Phase = st, phase
	j.mu.Unlock()
	q.s.save(j)
	return true
}

// add queues a new job (already recorded by the caller's validation).
func (q *scheduler) add(j *job) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.accepting {
		return errStopping
	}
	for _, o := range q.jobs {
		if o.VM.Moref == j.VM.Moref && o.State.Active() {
			return errBusy{o.ID}
		}
	}
	rec := j.record()
	if err := q.s.store.put(&rec); err != nil {
		return err
	}
	q.jobs[j.ID] = j
	q.kick()
	q.s.log.Info("job queued", "job", j.ID, "vm", j.VM.String(), "type", j.Type, "force", j.Force)
	return nil
}

// restore puts a job loaded from the store back (at start).
func (q *scheduler) restore(j *job) {
	q.mu.Lock()
	q.jobs[j.ID] = j
	q.mu.Unlock()
}

// start runs a pending job; q.mu held.
func (q *scheduler) start(j *job) {
	ctx, cancel := context.WithCancelCause(q.jobCtx)
	now := q.s.now()
	j.mu.Lock()
	j.State, j.Phase, j.Started = StateRunning, phasePrepare, &now
	j.cancel, j.done = cancel, make(chan struct{})
	rec := j.record()
	j.mu.Unlock()
	q.s.save(j)
	q.running++
	q.wg.Add(1)
	q.s.log.Info("job started", "job", rec.ID, "vm", rec.VM.String(), "type", rec.Type)
	go func() {
		defer q.wg.Done()
		defer cancel(nil)
		report, err := q.s.runners[rec.Kind](ctx, j)
		if err != nil {
			q.s.sweepSnapshots(j)
		}
		q.finish(ctx, j, report, err)
	}()
}

// finish records how a job ended.
func (q *scheduler) finish(ctx context.Context, j *job, report *orchestrator.BackupReport, err error) {
	now := q.s.now()
	q.mu.Lock()
	j.mu.Lock()
	j.Finished, j.Report = &now, report
	switch {
	case err == nil:
		j.State, j.Phase = StateSucceeded, phaseDone
		if report != nil {
			j.Level = report.Level
		}
		if j.Type == TypeIncremental {
			if n := fullDisksNotice(report); n != "" {
				j.Notices = append(j.Notices, n)
			}
		}
	case ctx.Err() != nil:
		j.State, j.Phase = StateCanceled, phaseCanceled
		j.Error = context.Cause(ctx).Error()
	default:
		j.State, j.Phase = StateFailed, phaseFailed
		j.Error = err.Error()
	}
	if j.CopyStarted != nil && j.CopySeconds == 0 {
		j.CopySeconds = now.Sub(*j.CopyStarted).Seconds()
	}
	if j.State != StateSucceeded { // disks left mid-copy end with the job
		for i := range j.Disks {
			if d := &j.Disks[i]; d.Phase != string(orchestrator.PhaseDone) {
				d.Phase, d.MiBps, d.ETASeconds = j.Phase, 0, nil
			}
		}
	}
	rec := j.record()
	j.mu.Unlock()
	q.running--
	if rec.State == StateSucceeded {
		q.noteSuccess(&rec)
	}
	q.mu.Unlock()

	q.s.save(j)
	close(j.done)
	q.s.metrics.finished(&rec)
	attrs := []any{"job", rec.ID, "vm", rec.VM.String(), "state", rec.State, "seconds", round1(now.Sub(*rec.Started).Seconds())}
	if rec.Error != "" {
		attrs = append(attrs, "err", rec.Error)
	}
	q.s.log.Info("job finished", attrs...)

	q.mu.Lock()
	q.pruneLocked()
	q.mu.Unlock()
	q.kick()
}

// pruneLocked drops the oldest finished jobs beyond the history limit;
// q.mu held.
func (q *scheduler) pruneLocked() {
	var finished []*job
	for _, j := range q.jobs {
		if !j.State.Active() && j.SnapshotCleanup != cleanupPending {
			finished = append(finished, j)
		}
	}
	if len(finished) <= q.s.history {
		return
	}
	sort.Slice(finished, func(a, b int) bool { return older(&finished[a].Job, &finished[b].Job) })
	var drop []string
	for _, j := range finished[:len(finished)-q.s.history] {
		drop = append(drop, j.ID)
	}
	if err := q.s.store.delete(drop); err != nil {
		q.s.log.Warn("pruning the job history", "err", err)
		return
	}
	for _, id := range drop {
		delete(q.jobs, id)
	}
}

// beginCleanup reserves a VM for a snapshot cleanup: no job of it starts
// until endCleanup. It fails when a job of the VM runs.
func (q *scheduler) beginCleanup(moref string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, j := range q.jobs {
		if j.VM.Moref == moref && j.State == StateRunning {
			return false
		}
	}
	q.cleaning[moref] = true
	return true
}

func (q *scheduler) endCleanup(moref string) {
	q.mu.Lock()
	delete(q.cleaning, moref)
	q.mu.Unlock()
	q.kick()
}

// get returns a job.
func (q *scheduler) get(id string) *job {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.jobs[id]
}

// list returns the jobs, newest first.
func (q *scheduler) list() []*job {
	q.mu.Lock()
	out := make([]*job, 0, len(q.jobs))
	for _, j := range q.jobs {
		out = append(out, j)
	}
	q.mu.Unlock()
	sort.Slice(out, func(a, b int) bool { return older(&out[b].Job, &out[a].Job) })
	return out
}

// counts returns the number of active jobs by state and the running
// jobs' throughput (MiB/s).
func (q *scheduler) counts() (map[State]int, float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.s.now()
	n := map[State]int{}
	var mibps float64
	for _, j := range q.jobs {
		if !j.State.Active() {
			continue
		}
		n[j.State]++
		if j.State == StateRunning {
			j.mu.Lock()
			mibps += j.view(now, false).MiBps
			j.mu.Unlock()
		}
	}
	return n, mibps
}

// cancel cancels a job: a pending one at once (200), a running one by
// cancelling its context (202: it ends once its snapshot is removed).
func (q *scheduler) cancel(id string) (*job, int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	j := q.jobs[id]
	if j == nil {
		return nil, 404, nil
	}
	j.mu.Lock()
	switch {
	case j.State.pending():
		now := q.s.now()
		j.State, j.Phase, j.Finished = StateCanceled, phaseCanceled, &now
		j.Error = "canceled before it started"
		rec := j.record()
		j.mu.Unlock()
		q.s.save(j)
		q.s.metrics.finished(&rec)
		q.s.log.Info("job canceled before it started", "job", id)
		q.kick()
		return j, 200, nil
	case j.State == StateRunning:
		first := !j.CancelRequested
		j.CancelRequested = true
		j.mu.Unlock()
		if first {
			q.s.save(j)
			q.s.log.Info("canceling job", "job", id)
			j.cancel(errCanceledByClient)
		}
		return j, 202, nil
	}
	st := j.State
	j.mu.Unlock()
	return j, 409, fmt.Errorf("job %s already ended (%s)", id, st)
}

// shutdown stops starting jobs, cancels the running ones and waits until
// they have cleaned up (snapshots removed). Pending jobs stay queued in
// the store: the next start runs them.
func (q *scheduler) shutdown() {
	q.mu.Lock()
	q.accepting = false
	q.mu.Unlock()
	q.stopJobs(errShutdown)
	q.wg.Wait()
}
