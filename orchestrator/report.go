package orchestrator

import "time"

// Kinds of jobs.
const (
	KindBackup    = "backup"
	KindReplicate = "replicate"
)

// Report is the outcome of a backup or a replication of one VM.
type Report struct {
	Kind      string       `json:"kind"` // backup or replicate
	VM        string       `json:"vm"`
	Moref     string       `json:"moref"`
	BackupID  string       `json:"backup_id,omitempty"` // backup: the restore point
	Level     string       `json:"level"`               // full, incremental or mixed
	Snapshot  string       `json:"snapshot"`
	Quiesced  bool         `json:"quiesced"`
	Started   time.Time    `json:"started"`
	Seconds   float64      `json:"seconds"`
	Disks     []DiskReport `json:"disks"`
	Notices   []string     `json:"notices,omitempty"`
	Repo      string       `json:"repository,omitempty"` // backup
	StateFile string       `json:"state_file,omitempty"` // replication
	BytesRead uint64       `json:"bytes_read"`
	Copied    uint64       `json:"bytes_copied"`
	Capacity  uint64       `json:"capacity"`

	// SnapshotLeft is the job's snapshot when it could not be removed
	// (the next job of the VM removes it).
	SnapshotLeft string `json:"snapshot_left,omitempty"`
	// Phases is where the job's time went (the disks' own in Disks).
	Phases []PhaseTime `json:"phases,omitempty"`
}

// summarise fills the report's totals and level.
func (r *Report) summarise(plans []*diskPlan) {
	r.Level = jobLevel(plans)
	for _, d := range r.Disks {
		r.BytesRead += d.BytesRead
		r.Copied += d.BytesCopied
		r.Capacity += d.Capacity
	}
}
