package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/vddk"
)

// SnapshotPrefix starts the name of every snapshot a backup takes; stale
// ones (left by a crash) are removed at the start of the next backup.
const SnapshotPrefix = "sendense-"

// snapshotRemoveTimeout bounds the snapshot removal that always runs,
// even after the job's context is cancelled.
const snapshotRemoveTimeout = 10 * time.Minute

// Services are what jobs share: the configuration, the vCenter session
// and where the plugin is.
type Services struct {
	Config   *config.Config
	Client   *cbt.Client
	Cred     Credentials
	Plugin   string   // nbdkit-sendense-plugin.so path, or "sendense"
	Reporter Reporter // nil: no progress
	TempDir  string   // private sockets and files go below it ("": os.TempDir)
	Verbose  bool     // nbdkit -v
}

// Preflight checks, before any snapshot is taken, that the tools a job
// starts are there: nbdkit, the plugin, VDDK, qemu-img and qemu-nbd.
func (s *Services) Preflight() error {
	for _, tool := range []struct{ name, pkg string }{{"nbdkit", "nbdkit"}, {"qemu-img", "qemu-utils"}, {"qemu-nbd", "qemu-utils"}} {
		if _, err := exec.LookPath(tool.name); err != nil {
			return fmt.Errorf("%s not found: install it (Debian package %s)", tool.name, tool.pkg)
		}
	}
	if strings.Contains(s.Plugin, "/") {
		if _, err := os.Stat(s.Plugin); err != nil {
			return fmt.Errorf("the nbdkit plugin: %w (--plugin, $SENDENSE_PLUGIN)", err)
		}
	}
	if _, err := vddk.Find(s.Config.VDDK.Libdir); err != nil {
		return fmt.Errorf("[vddk] libdir %s (--vddk-libdir, $SENDENSE_VDDK_LIBDIR): %w", s.Config.VDDK.Libdir, err)
	}
	return nil
}

func (s *Services) reporter() Reporter {
	if s.Reporter == nil {
		return nopReporter{}
	}
	return s.Reporter
}

// BackupOptions select what a backup does.
type BackupOptions struct {
	Repo                 string // repository directory
	Full                 bool   // full backup of every disk, whatever CBT says
	Quiesce              bool   // quiesced (application-consistent) snapshot
	AllowCrashConsistent bool   // fall back to a crash-consistent snapshot when quiescing fails
}

// DiskReport is the outcome of one disk of a backup.
type DiskReport struct {
	Key           int32   `json:"key"`
	Label         string  `json:"label,omitempty"`
	Level         string  `json:"level"` // full or incremental
	Reason        string  `json:"reason,omitempty"`
	Capacity      uint64  `json:"capacity"`
	Image         string  `json:"image"`
	BytesRead     uint64  `json:"bytes_read"`
	BytesCopied   uint64  `json:"bytes_copied"` // data written to the image
	BytesZeroed   uint64  `json:"bytes_zeroed"`
	BytesSkipped  uint64  `json:"bytes_skipped"`
	Seconds       float64 `json:"seconds"`
	MiBps         float64 `json:"mib_per_sec"`
	DataReduction float64 `json:"data_reduction"` // 1 - copied/capacity
}

// BackupReport is the outcome of a backup of one VM.
type BackupReport struct {
	VM        string       `json:"vm"`
	Moref     string       `json:"moref"`
	BackupID  string       `json:"backup_id"`
	Level     string       `json:"level"` // full, incremental or mixed
	Snapshot  string       `json:"snapshot"`
	Quiesced  bool         `json:"quiesced"`
	Started   time.Time    `json:"started"`
	Seconds   float64      `json:"seconds"`
	Disks     []DiskReport `json:"disks"`
	Notices   []string     `json:"notices,omitempty"`
	Repo      string       `json:"repository"`
	BytesRead uint64       `json:"bytes_read"`
	Copied    uint64       `json:"bytes_copied"`
	Capacity  uint64       `json:"capacity"`
}

// backupJob is one VM's backup in progress.
type backupJob struct {
	s      *Services
	opt    BackupOptions
	vm     *cbt.VM
	repo   *repo.Repo
	rep    Reporter
	report *BackupReport
	tmp    string // private 0700 directory: sockets, changed areas

	mu sync.Mutex // guards report.Notices
}

func (j *backupJob) notice(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	j.mu.Lock()
	j.report.Notices = append(j.report.Notices, msg)
	j.mu.Unlock()
	slog.Info(msg, "vm", j.vm.Name)
	j.rep.Notice(j.vm.Name, msg)
}

// Backup backs up one VM into the repository: CBT checked (and enabled if
// configured), a snapshot taken, every disk copied into a qcow2 image
// (incrementals on top of that disk's previous image), and only once every
// image is flushed the manifest written, which records the new changeIds.
// The snapshot is always removed; on failure the new images are removed
// and the previous restore points are left as they were.
func Backup(ctx context.Context, s *Services, vmSpec string, opt BackupOptions) (*BackupReport, error) {
	started := time.Now()
	if err := s.Preflight(); err != nil {
		return nil, err
	}
	vm, err := s.Client.FindVM(ctx, vmSpec)
	if err != nil {
		return nil, err
	}
	r, err := repo.OpenOrInit(opt.Repo)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.TempDir, "sendense-backup-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	j := &backupJob{s: s, opt: opt, vm: vm, repo: r, rep: s.reporter(), tmp: tmp,
		report: &BackupReport{VM: vm.Name, Moref: vm.Moref, Started: started, Repo: opt.Repo}}
	err = j.run(ctx)
	j.report.Seconds = time.Since(started).Seconds()
	if err != nil {
		return j.report, fmt.Errorf("backup of %s: %w", vm.Name, err)
	}
	return j.report, nil
}

func (j *backupJob) run(ctx context.Context) error {
	c := j.s.Client
	if err := j.ensureCBT(ctx); err != nil {
		return err
	}
	// Begin locks the VM's directory: another backup or a prune of this VM
	// fails here, before anything (a stale snapshot) is touched.
	pending, err := j.repo.Begin(repo.VMRef{Moref: j.vm.Moref, Name: j.vm.Name, Path: j.vm.Path})
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			if err := pending.Abort(); err != nil {
				slog.Warn("removing the images of a failed backup", "err", err)
			}
		}
	}()
	if err := j.removeStaleSnapshots(ctx); err != nil {
		return err
	}
	prev := pending.Parent()
	state, err := pending.ReadState()
	if err != nil {
		return err
	}
	j.report.BackupID = pending.ID

	snap, quiesced, err := j.createSnapshot(ctx, SnapshotPrefix+pending.ID)
	if err != nil {
		return err
	}
	snapRemoved := false
	defer func() {
		if !snapRemoved {
			j.cleanupSnapshot(ctx, snap)
		}
	}()
	j.report.Snapshot, j.report.Quiesced = snap, quiesced
	j.rep.Snapshot(j.vm.Name, pending.ID, snap)

	disks, err := c.Disks(ctx, j.vm, snap)
	if err != nil {
		return err
	}
	if len(disks) == 0 {
		return fmt.Errorf("VM %s has no disks to back up", j.vm)
	}
	plans, err := j.plan(ctx, pending, prev, state, snap, disks)
	if err != nil {
		return err
	}
	results, err := j.copyDisks(ctx, pending, snap, plans)
	if err != nil {
		return err
	}

	// Every image is flushed and closed. Remove the snapshot before
	// committing: a backup that would leave a snapshot behind fails (and
	// the cleanup tries again), so the next one repeats this incremental
	// from the old changeIds.
	if err := j.removeSnapshot(ctx, snap); err != nil {
		return err
	}
	snapRemoved = true

	// Commit the restore point, which records the new changeIds.
	m := &repo.Manifest{
		VM:       repo.VMRef{Moref: j.vm.Moref, Name: j.vm.Name, Path: j.vm.Path},
		Snapshot: repo.SnapshotRef{Moref: snap, Name: SnapshotPrefix + pending.ID, Quiesced: quiesced},
		Started:  j.report.Started,
		Finished: time.Now(),
		Disks:    results,
	}
	if prev != nil {
		m.Parent = prev.ID
	}
	if err := pending.Commit(m); err != nil {
		return err
	}
	committed = true
	for _, p := range plans {
		delete(state.ForceFull, p.disk.Key)
	}
	if err := pending.WriteState(state); err != nil {
		slog.Warn("writing the VM state", "err", err)
	}
	j.summarise(plans, results)
	return nil
}

// ensureCBT checks that CBT is on, enabling it when [cbt] auto_enable is
// set. When it had to be enabled, this backup is full (tracking starts
// at the snapshot about to be taken).
func (j *backupJob) ensureCBT(ctx context.Context) error {
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
// backup: they would pin disk space and confuse the next snapshot.
func (j *backupJob) removeStaleSnapshots(ctx context.Context) error {
	snaps, err := j.s.Client.Snapshots(ctx, j.vm)
	if err != nil {
		return err
	}
	for _, sn := range snaps {
		if !strings.HasPrefix(sn.Name, SnapshotPrefix) {
			continue
		}
		if err := j.s.Client.RemoveSnapshot(ctx, sn.Moref); err != nil {
			return fmt.Errorf("removing stale snapshot %q (%s) left by an earlier backup: %w", sn.Name, sn.Moref, err)
		}
		j.notice("removed stale snapshot %q (%s) left by an earlier backup", sn.Name, sn.Moref)
	}
	return nil
}

func (j *backupJob) createSnapshot(ctx context.Context, name string) (string, bool, error) {
	c := j.s.Client
	desc := "Sendense capture backup; removed when the backup ends"
	quiesce := j.opt.Quiesce
	snap, err := c.CreateSnapshot(ctx, j.vm, name, desc, quiesce, false)
	if err == nil || !quiesce || ctx.Err() != nil {
		return snap, quiesce, err
	}
	if !j.opt.AllowCrashConsistent {
		return "", false, fmt.Errorf("quiesced snapshot failed (VMware Tools running in the guest?): %w; --allow-crash-consistent falls back to a crash-consistent snapshot", err)
	}
	j.notice("quiesced snapshot failed (%v): taking a crash-consistent snapshot instead (--allow-crash-consistent)", err)
	snap, err = c.CreateSnapshot(ctx, j.vm, name, desc, false, false)
	return snap, false, err
}

// removeSnapshot removes the backup's snapshot, even when ctx is
// cancelled (SIGINT/SIGTERM).
func (j *backupJob) removeSnapshot(ctx context.Context, snap string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotRemoveTimeout)
	defer cancel()
	if err := j.s.Client.RemoveSnapshot(rctx, snap); err != nil {
		return err
	}
	slog.Debug("snapshot removed", "vm", j.vm.Name, "snapshot", snap)
	return nil
}

// cleanupSnapshot removes the snapshot after a failure, retrying a few
// times; what it cannot remove, the next backup removes as stale.
func (j *backupJob) cleanupSnapshot(ctx context.Context, snap string) {
	var err error
	for attempt, wait := 1, time.Second; attempt <= 3; attempt, wait = attempt+1, wait*2 {
		if err = j.removeSnapshot(ctx, snap); err == nil {
			return
		}
		slog.Warn("removing the snapshot failed, retrying", "snapshot", snap, "attempt", attempt, "err", err)
		time.Sleep(wait)
	}
	j.notice("could not remove snapshot %s: %v (the next backup removes it)", snap, err)
}

// diskPlan is what the backup does with one disk.
type diskPlan struct {
	disk     cbt.Disk
	full     bool
	reason   string
	prev     *repo.DiskImage // incremental: the previous image
	areas    extent.List     // incremental: changed areas
	areaFile string
}

// plan decides full or incremental for every disk (CBT rules in
// DESIGN.md) and queries the changed areas of the incrementals.
func (j *backupJob) plan(ctx context.Context, pending *repo.Pending, prev *repo.Manifest, state *repo.State, snap string, disks []cbt.Disk) ([]*diskPlan, error) {
	var plans []*diskPlan
	for _, d := range disks {
		p := &diskPlan{disk: d}
		var prevImg *repo.DiskImage
		if prev != nil {
			prevImg = prev.Disk(d.Key)
		}
		var prevState *cbt.DiskState
		if prevImg != nil {
			prevState = &cbt.DiskState{Key: prevImg.Key, UUID: prevImg.UUID, Capacity: prevImg.Capacity, ChangeID: prevImg.ChangeID}
		}
		p.full, p.reason = cbt.NeedFull(prevState, d.State(), nil)
		switch {
		case j.opt.Full:
			p.full, p.reason = true, "full backup requested (--full)"
		case !p.full && state.ForceFull[d.Key] != "":
			p.full, p.reason = true, state.ForceFull[d.Key]
		}
		if !p.full {
			if err := j.repo.CheckImage(j.vm.Moref, prevImg); err != nil {
				return nil, fmt.Errorf("disk %d (%s): the previous backup's image cannot be the base of an incremental: %w; run 'sendense verify %s', or start a new chain with --full", d.Key, d.Label, err, j.vm.Name)
			}
		}
		if !p.full {
			p.prev = prevImg
			areas, err := j.s.Client.ChangedAreas(ctx, j.vm, snap, d.Key, prevImg.ChangeID)
			if err != nil {
				// CBT rule 2: a query fault makes the next backup of this disk full.
				_, why := cbt.NeedFull(prevState, d.State(), err)
				state.ForceFull[d.Key] = why
				if werr := pending.WriteState(state); werr != nil {
					slog.Warn("recording that the next backup must be full", "err", werr)
				}
				return nil, fmt.Errorf("disk %d (%s): querying changed blocks since %s: %w; the next backup of this disk will be full", d.Key, d.Label, prevImg.ChangeID, err)
			}
			p.areas = areas.List
			p.areaFile = filepath.Join(j.tmp, fmt.Sprintf("disk%d.areas", d.Key))
			if err := writeAreas(p.areaFile, areas.List); err != nil {
				return nil, err
			}
		} else if prevImg != nil || j.opt.Full {
			j.notice("disk %d (%s): full backup: %s", d.Key, d.Label, p.reason)
		}
		plans = append(plans, p)
	}
	return plans, nil
}

// writeAreas writes a changed-areas= file for the plugin.
func writeAreas(path string, areas extent.List) error {
	var b strings.Builder
	b.WriteString("# changed areas: OFFSET LENGTH (bytes)\n")
	for _, a := range areas {
		fmt.Fprintf(&b, "%d %d\n", a.Offset, a.Length)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// copyDisks copies the disks, at most [backup] max_concurrent_disks at
// once. The first failure cancels the others.
func (j *backupJob) copyDisks(ctx context.Context, pending *repo.Pending, snap string, plans []*diskPlan) ([]repo.DiskImage, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	results := make([]repo.DiskImage, len(plans))
	sem := make(chan struct{}, max(1, j.s.Config.Backup.MaxConcurrentDisks))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i, p := range plans {
		j.rep.Disk(DiskProgress{VM: j.vm.Name, Key: p.disk.Key, Label: p.disk.Label, Level: p.level(), Phase: PhaseQueued, Total: p.disk.Capacity})
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			img, err := j.copyDisk(ctx, pending, snap, p)
			if err != nil {
				j.rep.Disk(DiskProgress{VM: j.vm.Name, Key: p.disk.Key, Label: p.disk.Label, Level: p.level(), Phase: PhaseFailed, Total: p.disk.Capacity})
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("disk %d (%s): %w", p.disk.Key, p.disk.Label, err)
					cancel(firstErr)
				}
				mu.Unlock()
				return
			}
			results[i] = *img
		}()
	}
	wg.Wait()
	if firstErr != nil {
		if cerr := context.Cause(ctx); ctx.Err() != nil && !errors.Is(cerr, firstErr) {
			return nil, cerr
		}
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	return results, nil
}

func (p *diskPlan) level() string {
	if p.full {
		return repo.LevelFull
	}
	return repo.LevelIncremental
}

// copyDisk serves the snapshot's disk with nbdkit and our plugin, creates
// and serves the qcow2 image with qemu-nbd, copies, flushes and closes.
func (j *backupJob) copyDisk(ctx context.Context, pending *repo.Pending, snap string, p *diskPlan) (*repo.DiskImage, error) {
	d := p.disk
	start := time.Now()
	backing := ""
	if !p.full {
		backing = p.prev.Image
	}
	image := pending.ImagePath(d.Key)
	if err := qemu.CreateImage(ctx, image, d.Capacity, backing); err != nil {
		return nil, err
	}
	dstSrv, err := qemu.ServeNBD(ctx, image, qemu.ServeOptions{Format: "qcow2", SocketDir: j.tmp})
	if err != nil {
		return nil, err
	}
	defer dstSrv.Close()

	src, err := StartNBDKit(ctx, j.pluginSource(snap, p), j.tmp, fmt.Sprintf("disk%d", d.Key))
	if err != nil {
		return nil, err
	}
	defer src.Stop()

	res, err := j.copy(ctx, src.URI(), dstSrv.URI(), p)
	if err != nil {
		if nerr := src.Err(time.Second); nerr != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w; the source died: %v", err, nerr)
		}
		return nil, err
	}
	src.Stop()
	if err := dstSrv.Close(); err != nil {
		return nil, fmt.Errorf("closing the image %s: %w", image, err)
	}
	img := &repo.DiskImage{
		Key:         d.Key,
		UUID:        d.UUID,
		Label:       d.Label,
		File:        d.FileName,
		Capacity:    d.Capacity,
		ChangeID:    d.ChangeID,
		Level:       p.level(),
		Reason:      p.reason,
		Image:       pending.RelImage(d.Key),
		Backing:     backing,
		BytesCopied: res.BytesWritten,
		BytesZeroed: res.BytesZeroed,
		Seconds:     time.Since(start).Seconds(),
		SHA256:      res.SHA256,
		Chunks:      chunks(res.Chunks),
	}
	if !p.full {
		img.BaseChangeID = p.prev.ChangeID
	}
	j.rep.Disk(DiskProgress{VM: j.vm.Name, Key: d.Key, Label: d.Label, Level: p.level(), Phase: PhaseDone,
		Done: d.Capacity, Total: d.Capacity, Copied: res.BytesWritten, MiBps: res.MiBps, Seconds: img.Seconds})
	j.mu.Lock()
	j.report.Disks = append(j.report.Disks, DiskReport{
		Key: d.Key, Label: d.Label, Level: p.level(), Reason: p.reason, Capacity: d.Capacity, Image: img.Image,
		BytesRead: res.BytesRead, BytesCopied: res.BytesWritten, BytesZeroed: res.BytesZeroed, BytesSkipped: res.BytesSkipped,
		Seconds: img.Seconds, MiBps: res.MiBps, DataReduction: reduction(res.BytesWritten, d.Capacity),
	})
	j.mu.Unlock()
	return img, nil
}

func chunks(in []copier.Chunk) []repo.Chunk {
	out := make([]repo.Chunk, len(in))
	for i, c := range in {
		out[i] = repo.Chunk{Offset: c.Offset, Length: c.Length, Kind: string(c.Kind), SHA256: c.SHA256}
	}
	return out
}

func reduction(copied, capacity uint64) float64 {
	if capacity == 0 {
		return 0
	}
	return 1 - float64(copied)/float64(capacity)
}

// copy runs the copy engine: a full into a fresh image (which reads as
// zeroes: nothing is written for zero extents) with the whole-disk
// SHA-256; an incremental skipping unchanged (hole-only) extents. Both
// record a SHA-256 per chunk for the manifest.
func (j *backupJob) copy(ctx context.Context, srcURI, dstURI string, p *diskPlan) (*copier.Result, error) {
	src, err := copier.OpenNBD(srcURI)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	defer src.Close()
	dst, err := copier.OpenNBD(dstURI)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	defer dst.Close()
	cc := j.s.Config.Copy
	reqSize, _ := cc.RequestSizeBytes()
	rate := j.s.Config.CopyRate()
	d := p.disk
	opts := copier.Options{
		Connections:       cc.Connections,
		Requests:          cc.Requests,
		RequestSize:       reqSize,
		Rate:              rate,
		Incremental:       !p.full,
		DestinationIsZero: p.full,
		Checksum:          p.full,
		HashChunks:        true,
		ProgressInterval:  progressInterval,
		Progress: func(pr copier.Progress) {
			j.rep.Disk(DiskProgress{VM: j.vm.Name, Key: d.Key, Label: d.Label, Level: p.level(), Phase: PhaseCopying,
				Done: pr.Done, Total: pr.Total, Copied: pr.BytesWritten, MiBps: pr.MiBps, Seconds: pr.Seconds})
		},
	}
	return copier.Copy(ctx, src, dst, opts)
}

// pluginSource is how nbdkit reads disk p of the snapshot.
func (j *backupJob) pluginSource(snap string, p *diskPlan) PluginSource {
	cfg := j.s.Config
	host, port := j.s.Cred.HostPort()
	return PluginSource{
		Plugin:       j.s.Plugin,
		Libdir:       cfg.VDDK.Libdir,
		Server:       host,
		Port:         port,
		User:         j.s.Cred.User,
		Password:     j.s.Cred.Password,
		Thumbprint:   j.s.Cred.Thumbprint,
		VM:           j.vm.Moref,
		Snapshot:     snap,
		File:         p.disk.FileName,
		Transports:   cfg.VDDK.Transports,
		VDDKConfig:   cfg.VDDK.Config,
		ChangedAreas: p.areaFile,
		Verbose:      j.s.Verbose,
	}
}

// summarise fills the report's totals and level.
func (j *backupJob) summarise(plans []*diskPlan, _ []repo.DiskImage) {
	r := j.report
	full, incr := 0, 0
	for _, p := range plans {
		if p.full {
			full++
		} else {
			incr++
		}
	}
	switch {
	case incr == 0:
		r.Level = repo.LevelFull
	case full == 0:
		r.Level = repo.LevelIncremental
	default:
		r.Level = "mixed"
	}
	for _, d := range r.Disks {
		r.BytesRead += d.BytesRead
		r.Copied += d.BytesCopied
		r.Capacity += d.Capacity
	}
}
