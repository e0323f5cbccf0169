package orchestrator

import (
	"math"
	"time"
)

// Phase is where a disk (or a whole job) is.
type Phase string

const (
	PhaseQueued   Phase = "queued"
	PhasePrepare  Phase = "prepare" // CBT check, snapshot, disk discovery
	PhaseCopying  Phase = "copying"
	PhaseCommit   Phase = "commit" // flushing and writing the manifest
	PhaseDone     Phase = "done"
	PhaseFailed   Phase = "failed"
	PhaseCanceled Phase = "canceled"
)

// DiskProgress is a progress report of one disk of a job: the fields of
// the API's disks[] entries (docs/api.md), plus the VM.
type DiskProgress struct {
	VM      string  `json:"vm"`
	Key     int32   `json:"key"`
	Label   string  `json:"label,omitempty"`
	Level   string  `json:"level,omitempty"` // full or incremental
	Phase   Phase   `json:"phase"`
	Done    uint64  `json:"bytes_done"`  // bytes of the disk dealt with
	Total   uint64  `json:"bytes_total"` // disk capacity
	Copied  uint64  `json:"bytes_copied"`
	Percent float64 `json:"percent"` // Done of Total, one decimal
	MiBps   float64 `json:"mib_per_sec"`
	Seconds float64 `json:"seconds"`
	// ETASeconds is the time left at the disk's rate so far (nil until
	// the copy has run half a second; 0 once done).
	ETASeconds *float64 `json:"eta_seconds"`
}

// Fill computes Percent and ETASeconds from the other fields.
func (p *DiskProgress) Fill() {
	if p.Total > 0 {
		p.Percent = Round1(float64(min(p.Done, p.Total)) * 100 / float64(p.Total))
	}
	switch {
	case p.Phase == PhaseDone:
		zero := 0.0
		p.ETASeconds = &zero
	case p.Phase == PhaseCopying && p.Seconds > 0.5 && p.Done > 0:
		eta := Round1(float64(p.Total-min(p.Done, p.Total)) / (float64(p.Done) / p.Seconds))
		p.ETASeconds = &eta
	}
}

// Round1 rounds to one decimal, as progress figures are shown.
func Round1(f float64) float64 { return math.Round(f*10) / 10 }

// Reporter receives a job's progress. Implementations must be safe for
// concurrent use: disks are copied in parallel.
type Reporter interface {
	// Disk reports a disk's progress (rate-limited by the caller).
	Disk(p DiskProgress)
	// Notice reports something the user should know (CBT enabled, a disk
	// forced to full and why, a stale snapshot removed…).
	Notice(vm, msg string)
	// Snapshot reports the snapshot a backup took (named
	// SnapshotPrefix+backupID); the backup removes it when it ends.
	Snapshot(vm, backupID, moref string)
}

// nopReporter discards progress.
type nopReporter struct{}

func (nopReporter) Disk(DiskProgress)               {}
func (nopReporter) Notice(string, string)           {}
func (nopReporter) Snapshot(string, string, string) {}

// progressInterval is how often disks report progress while copying.
const progressInterval = 250 * time.Millisecond
