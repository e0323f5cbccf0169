package orchestrator

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/internal/copier"
)

// Timed steps of a job (Report.Phases) and of a disk (DiskReport.Phases),
// in the order they happen (sendense backup --help, PHASE TIMINGS, in
// docs/cli.md).
const (
	StepLogin          = "vcenter_login"   // logging in to vCenter (shared by the VMs of one command)
	StepFindVM         = "find_vm"         // tools check, finding the VM, the VM's job lock
	StepOpenRepo       = "open_repository" // opening (or creating) the repository
	StepCBTCheck       = "cbt_check"       // CBT on (enabled if configured)
	StepLockRepo       = "lock_repository" // the VM's repository lock
	StepStaleSnapshots = "stale_snapshots" // removing snapshots left by crashed jobs
	StepSnapshot       = "snapshot_create"
	StepPlan           = "plan"  // the snapshot's disks, full or incremental, changed areas
	StepDisks          = "disks" // every disk copied (wall time, disks in parallel)
	StepSnapshotRemove = "snapshot_remove"
	StepManifest       = "manifest" // committing the manifest (backups)
	StepState          = "state"    // recording the changeIds' state

	StepImageCreate = "image_create"   // qemu-img create
	StepServerStart = "qemu_nbd_start" // qemu-nbd serving the image
	StepPluginStart = "plugin_start"   // nbdkit with the plugin (VDDK open) listening
	StepConnect     = "connect"        // NBD connections opened, sizes checked
	StepTransfer    = "copy"           // reading and writing, until the last request completed
	StepFlush       = "flush"          // the destination's flush
	StepHashWait    = "hash_wait"      // waiting for the disk digest after the flush
	StepReadBack    = "read_back"      // reading the destination back for its digest
	StepImageClose  = "image_close"    // qemu-nbd exiting
	StepPluginStop  = "plugin_stop"    // nbdkit exiting
	StepTargetOpen  = "target_open"    // replication: reaching the target
)

// PhaseTime is the wall time of one phase, in seconds.
type PhaseTime struct {
	Phase   string  `json:"phase"`
	Seconds float64 `json:"seconds"`
}

// phaseLog records phases in the order they end; safe for concurrent use.
type phaseLog struct {
	mu   sync.Mutex
	list []PhaseTime
	what string // for debug logs: "backup of web01 disk 2000"
}

func newPhaseLog(format string, a ...any) *phaseLog {
	return &phaseLog{what: fmt.Sprintf(format, a...)}
}

// add records that phase took seconds.
func (l *phaseLog) add(phase string, seconds float64) {
	slog.Debug("phase", "of", l.what, "phase", phase, "seconds", fmt.Sprintf("%.3f", seconds))
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.list {
		if l.list[i].Phase == phase { // repeated (a resumed copy): summed
			l.list[i].Seconds += seconds
			return
		}
	}
	l.list = append(l.list, PhaseTime{phase, seconds})
}

// since records that phase began at start and ends now.
func (l *phaseLog) since(phase string, start time.Time) {
	l.add(phase, time.Since(start).Seconds())
}

// time runs fn as phase.
func (l *phaseLog) time(phase string, fn func() error) error {
	start := time.Now()
	err := fn()
	l.since(phase, start)
	return err
}

// copier records the phases of a copy.
func (l *phaseLog) copier(t copier.Timing) {
	l.add(StepConnect, t.Connect)
	l.add(StepTransfer, t.Transfer)
	l.add(StepFlush, t.Flush)
	if t.HashWait > 0 {
		l.add(StepHashWait, t.HashWait)
	}
	if t.ReadBack > 0 {
		l.add(StepReadBack, t.ReadBack)
	}
}

func (l *phaseLog) get() []PhaseTime {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]PhaseTime(nil), l.list...)
}

// FormatPhases is phases as text: "copy 12.3s, flush 0.4s".
func FormatPhases(phases []PhaseTime) string {
	parts := make([]string, len(phases))
	for i, p := range phases {
		parts[i] = fmt.Sprintf("%s %.2fs", p.Phase, p.Seconds)
	}
	return strings.Join(parts, ", ")
}
