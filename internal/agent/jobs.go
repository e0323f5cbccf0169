package agent

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/orchestrator"
)

// State is where a job is.
type State string

// Job states (docs/api.md, "Job states").
const (
	StateQueued    State = "queued"             // waiting for a free slot
	StateWaiting   State = "waiting_for_window" // outside [performance] backup_window
	StateRunning   State = "running"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateCanceled  State = "canceled"
)

// Active reports whether the job has not ended.
func (s State) Active() bool { return s == StateQueued || s == StateWaiting || s == StateRunning }

// pending reports whether the job waits to start.
func (s State) pending() bool { return s == StateQueued || s == StateWaiting }

// Job kinds: a backup into a repository, or a replication into NBD
// targets (a request with "target" or "targets" instead of "repository").
// Each has its runner (Server.runners).
const (
	KindBackup    = orchestrator.KindBackup
	KindReplicate = orchestrator.KindReplicate
)

// Backup types of a backup job.
const (
	TypeFull        = "full"
	TypeIncremental = "incremental"
	TypeAuto        = "auto"
)

// Job phases, beyond the orchestrator's disk phases.
const (
	phaseQueued   = "queued"
	phaseWaiting  = "waiting_for_window"
	phasePrepare  = "prepare" // CBT check, snapshot, changed areas
	phaseCopying  = "copying"
	phaseCommit   = "commit" // every disk copied: snapshot removal, manifest
	phaseDone     = "done"
	phaseFailed   = "failed"
	phaseCanceled = "canceled"
)

// Snapshot cleanup states of jobs interrupted by a restart.
const (
	cleanupPending = "pending"
	cleanupDone    = "done"
)

// interruptedError is the error of jobs that were running when the agent
// stopped without finishing them (a crash, SIGKILL, a power loss).
const interruptedError = "interrupted by an agent restart"

// DiskStatus is one disk's progress in a job.
type DiskStatus struct {
	Key     int32   `json:"key"`
	Label   string  `json:"label,omitempty"`
	Level   string  `json:"level,omitempty"` // full or incremental
	Phase   string  `json:"phase"`           // queued, copying, done, failed
	Done    uint64  `json:"bytes_done"`      // bytes of the disk dealt with
	Total   uint64  `json:"bytes_total"`     // capacity
	Copied  uint64  `json:"bytes_copied"`    // written into the image
	Percent float64 `json:"percent"`
	MiBps   float64 `json:"mib_per_sec"`
	Seconds float64 `json:"seconds"`
	// ETASeconds: time left at the disk's rate so far (null until known).
	ETASeconds *float64 `json:"eta_seconds"`
}

// Job is a job's record: what the API shows and the store keeps.
type Job struct {
	ID     string `json:"job_id"`
	Kind   string `json:"kind"`
	VMPath string `json:"vm_path"` // as requested
	VM     cbt.VM `json:"vm"`      // as resolved: moref, name, inventory path
	Type   string `json:"backup_type"`
	Repo   string `json:"repository,omitempty"`
	// Targets are a replication's NBD targets by disk key ("" = the
	// VM's only disk).
	Targets map[string]string `json:"targets,omitempty"`
	Force   bool              `json:"force"`
	Quiesce bool              `json:"quiesce"`
	// AllowCrashConsistent: fall back to a crash-consistent snapshot when
	// quiescing fails.
	AllowCrashConsistent bool `json:"allow_crash_consistent,omitempty"`

	State           State      `json:"state"`
	Phase           string     `json:"phase"`
	CancelRequested bool       `json:"cancel_requested,omitempty"`
	Created         time.Time  `json:"created"`
	Started         *time.Time `json:"started,omitempty"`
	Finished        *time.Time `json:"finished,omitempty"`
	Error           string     `json:"error,omitempty"`
	BackupID        string     `json:"backup_id,omitempty"`
	Snapshot        string     `json:"snapshot,omitempty"` // moref, recorded as soon as it is taken
	// SnapshotCleanup is "pending" while a job interrupted by a restart
	// still has a snapshot to remove, then "done".
	SnapshotCleanup string                     `json:"snapshot_cleanup,omitempty"`
	Level           string                     `json:"level,omitempty"` // full, incremental or mixed
	Notices         []string                   `json:"notices,omitempty"`
	Disks           []DiskStatus               `json:"disks,omitempty"`
	CopyStarted     *time.Time                 `json:"copy_started,omitempty"` // disks announced: the copy phase starts
	CopySeconds     float64                    `json:"copy_seconds,omitempty"` // copy phase start to the last disk done
	Report          *orchestrator.BackupReport `json:"report,omitempty"`
}

// newJobID returns a unique, time-ordered job id ("20251004T103000Z-9f2c1a").
func newJobID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// older orders jobs by creation (ids share a second's resolution).
func older(a, b *Job) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	return a.ID < b.ID
}

// validJobID reports whether s looks like a job id (before any lookup).
func validJobID(s string) bool {
	if len(s) != len("20060102T150405Z-000000") || s[16] != '-' {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == 'T' || c == 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// job is a Job in memory with what runs it.
//
// Locking: j.mu guards the record. State (and SnapshotCleanup) change only
// with both the scheduler's mu and j.mu held, so either lock is enough to
// read them. Records are written to the store by Server.save, serialised
// by pmu and copied at write time, so the last write always holds the
// latest state.
type job struct {
	mu sync.Mutex
	Job
	pmu    sync.Mutex
	cancel func(error) // running jobs: cancels the orchestrator's context
	done   chan struct{}
}

// record copies the record (j.mu held): the slices the reporter changes
// in place are copied too.
func (j *job) record() Job {
	rec := j.Job
	rec.Notices = append([]string(nil), j.Notices...)
	rec.Disks = append([]DiskStatus(nil), j.Disks...)
	return rec
}

// JobView is a job as the API shows it: the record plus computed totals.
type JobView struct {
	Job
	BytesDone      uint64   `json:"bytes_done"`
	BytesTotal     uint64   `json:"bytes_total"`
	Percent        float64  `json:"percent"`
	MiBps          float64  `json:"mib_per_sec"`
	ETASeconds     *float64 `json:"eta_seconds"`
	ElapsedSeconds float64  `json:"elapsed_seconds"`
}

// view computes the job's view at now; withReport keeps the report.
// j.mu must be held.
func (j *job) view(now time.Time, withReport bool) JobView {
	v := JobView{Job: j.record()}
	if !withReport {
		v.Report = nil
	}
	for _, d := range j.Disks {
		v.BytesDone += d.Done
		v.BytesTotal += d.Total
		if d.Phase == string(orchestrator.PhaseCopying) {
			v.MiBps += d.MiBps
		}
	}
	if v.BytesTotal > 0 {
		v.Percent = round1(float64(v.BytesDone) * 100 / float64(v.BytesTotal))
	}
	if j.Started != nil {
		end := now
		if j.Finished != nil {
			end = *j.Finished
		}
		v.ElapsedSeconds = round1(end.Sub(*j.Started).Seconds())
	}
	switch {
	case j.State == StateSucceeded:
		zero := 0.0
		v.ETASeconds = &zero
		v.MiBps = j.throughput()
	case j.State == StateRunning && j.CopyStarted != nil && v.BytesTotal > 0:
		el := now.Sub(*j.CopyStarted).Seconds()
		if el > 0.5 && v.BytesDone > 0 {
			rate := float64(v.BytesDone) / el
			eta := round1(float64(v.BytesTotal-min(v.BytesDone, v.BytesTotal)) / rate)
			v.ETASeconds = &eta
		}
	}
	v.MiBps = round1(v.MiBps)
	return v
}

// throughput is a finished job's read throughput in MiB/s: bytes read
// over the copy phase's wall time (disks are copied in parallel).
func (j *Job) throughput() float64 {
	if j.Report == nil {
		return 0
	}
	secs := j.CopySeconds
	if secs <= 0 {
		for _, d := range j.Report.Disks {
			secs = max(secs, d.Seconds)
		}
	}
	if secs <= 0 {
		return 0
	}
	return float64(j.Report.BytesRead) / (1 << 20) / secs
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

// jobReporter is a job's orchestrator.Reporter: it keeps the per-disk
// progress, the notices, and records the snapshot in the store the moment
// it is taken (so that a restart can remove it).
type jobReporter struct {
	s *Server
	j *job
}

func (r jobReporter) Disk(p orchestrator.DiskProgress) {
	r.j.mu.Lock()
	defer r.j.mu.Unlock()
	now := r.s.now()
	i := sort.Search(len(r.j.Disks), func(i int) bool { return r.j.Disks[i].Key >= p.Key })
	if i == len(r.j.Disks) || r.j.Disks[i].Key != p.Key {
		r.j.Disks = append(r.j.Disks, DiskStatus{})
		copy(r.j.Disks[i+1:], r.j.Disks[i:])
		r.j.Disks[i] = DiskStatus{Key: p.Key}
	}
	d := &r.j.Disks[i]
	r.s.metrics.addProgress(p.Done-min(d.Done, p.Done), p.Copied-min(d.Copied, p.Copied))
	*d = DiskStatus{Key: p.Key, Label: p.Label, Level: p.Level, Phase: string(p.Phase),
		Done: p.Done, Total: p.Total, Copied: p.Copied, Percent: p.Percent, MiBps: round1(p.MiBps), Seconds: round1(p.Seconds),
		ETASeconds: p.ETASeconds}
	if r.j.CopyStarted == nil { // the disks are announced (queued) as the copy phase starts
		t := now
		r.j.CopyStarted = &t
	}
	r.j.Phase = diskPhase(r.j.Disks)
	if r.j.Phase == phaseCommit && r.j.CopyStarted != nil {
		r.j.CopySeconds = now.Sub(*r.j.CopyStarted).Seconds()
	}
}

// diskPhase is the job's phase from its disks' phases.
func diskPhase(disks []DiskStatus) string {
	done := 0
	for _, d := range disks {
		switch orchestrator.Phase(d.Phase) {
		case orchestrator.PhaseCopying:
			return phaseCopying
		case orchestrator.PhaseDone:
			done++
		}
	}
	if done == len(disks) && done > 0 {
		return phaseCommit
	}
	if done > 0 {
		return phaseCopying
	}
	return phasePrepare
}

func (r jobReporter) Notice(_ string, msg string) {
	r.j.mu.Lock()
	r.j.Notices = append(r.j.Notices, msg)
	r.j.mu.Unlock()
}

func (r jobReporter) Snapshot(_ string, backupID, moref string) {
	r.j.mu.Lock()
	r.j.BackupID, r.j.Snapshot = backupID, moref
	r.j.mu.Unlock()
	r.s.save(r.j)
}

// fullDisksNotice says which disks an incremental backup had to copy in
// full, and why ("" when none).
func fullDisksNotice(rep *orchestrator.BackupReport) string {
	if rep == nil {
		return ""
	}
	var parts []string
	for _, d := range rep.Disks {
		if d.Level == repo.LevelFull {
			why := d.Reason
			if why == "" {
				why = "no usable previous backup"
			}
			parts = append(parts, fmt.Sprintf("disk %d (%s): %s", d.Key, d.Label, why))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "incremental backup requested, but these disks were backed up in full: " + strings.Join(parts, "; ")
}
