package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
)

// BackupOptions select what a backup does.
type BackupOptions struct {
	Repo                 string // repository: a directory, or ssh://[user@]host[:port]/path
	Full                 bool   // full backup of every disk, whatever CBT says
	Quiesce              bool   // quiesced (application-consistent) snapshot
	AllowCrashConsistent bool   // fall back to a crash-consistent snapshot when quiescing fails
	// InitOnlyEmpty creates a new repository only in a missing or truly
	// empty directory (dot-files count): API jobs.
	InitOnlyEmpty bool
	// ExcludeDisks are device keys not backed up (--exclude-disk), besides
	// those of the matching [[vm]] exclude_disks of the configuration.
	ExcludeDisks []int32
}

// BackupReport is the outcome of a backup of one VM.
type BackupReport = Report

// backupJob is one VM's backup in progress.
type backupJob struct {
	*vmJob
	opt    BackupOptions
	repo   *repo.Repo
	report *BackupReport
	phases *phaseLog
}

// Backup backs up one VM into the repository: CBT checked (and enabled if
// configured), a snapshot taken, every disk copied into a qcow2 image
// (incrementals on top of that disk's previous image), and only once every
// image is flushed the manifest written, which records the new changeIds.
// The snapshot is always removed; on failure the new images are removed
// and the previous restore points are left as they were.
func Backup(ctx context.Context, s *Services, vmSpec string, opt BackupOptions) (*BackupReport, error) {
	started := time.Now()
	ph := newPhaseLog("backup of %s", vmSpec)
	if s.LoginSeconds > 0 {
		ph.add(StepLogin, s.LoginSeconds)
	}
	vj, err := newVMJob(ctx, s, vmSpec, "backup")
	if err != nil {
		return nil, err
	}
	defer vj.close()
	ph.since(StepFindVM, started)
	t := time.Now()
	open := OpenOrInitRepository
	if opt.InitOnlyEmpty {
		open = OpenOrInitEmptyRepository
	}
	r, err := open(ctx, s, opt.Repo)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	ph.since(StepOpenRepo, t)
	j := &backupJob{vmJob: vj, opt: opt, repo: r, phases: ph,
		report: &BackupReport{Kind: KindBackup, VM: vj.vm.Name, Moref: vj.vm.Moref, Started: started, Repo: opt.Repo}}
	err = j.run(ctx)
	j.report.Seconds = time.Since(started).Seconds()
	vj.finish(j.report)
	j.report.Phases = ph.get()
	if err != nil {
		return j.report, fmt.Errorf("backup of %s: %w", vj.vm.Name, err)
	}
	return j.report, nil
}

func (j *backupJob) run(ctx context.Context) error {
	ph := j.phases
	if err := ph.time(StepCBTCheck, func() error { return j.ensureCBT(ctx) }); err != nil {
		return err
	}
	// Begin locks the VM's directory: another backup or a prune of this VM
	// fails here, before anything (a stale snapshot) is touched.
	t := time.Now()
	vmRef := repo.VMRef{Moref: j.vm.Moref, Name: j.vm.Name, Path: j.vm.Path}
	pending, err := j.repo.Begin(vmRef)
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
	ph.since(StepLockRepo, t)
	if err := ph.time(StepStaleSnapshots, func() error { return j.removeStaleSnapshots(ctx) }); err != nil {
		return err
	}
	prev := pending.Parent()
	state, err := pending.ReadState()
	if err != nil {
		return err
	}
	j.report.BackupID = pending.ID

	snapName := SnapshotPrefix + pending.ID
	t = time.Now()
	snap, quiesced, err := j.createSnapshot(ctx, snapName, j.opt.Quiesce, j.opt.AllowCrashConsistent)
	if err != nil {
		return err
	}
	ph.since(StepSnapshot, t)
	snapRemoved := false
	defer func() {
		if !snapRemoved {
			j.cleanupSnapshot(ctx, snap)
		}
	}()
	j.report.Snapshot, j.report.Quiesced = snap, quiesced
	j.rep.Snapshot(j.vm.Name, pending.ID, snap)

	t = time.Now()
	disks, err := j.s.Client.Disks(ctx, j.vm, snap)
	if err != nil {
		return err
	}
	if len(disks) == 0 {
		return fmt.Errorf("VM %s has no disks to back up", j.vm)
	}
	if disks, err = j.excludeDisks(disks); err != nil {
		return err
	}
	// The VM's hardware, for restore --to-vsphere: a backup without it
	// is still a backup.
	vmCfg, err := j.s.Client.VMConfig(ctx, j.vm, snap)
	if err != nil {
		j.notice("the VM's configuration is not recorded (restore --to-vsphere will need it): %v", err)
	}
	plans, err := j.plan(ctx, pending, prev, state, snap, disks)
	if err != nil {
		return err
	}
	ph.since(StepPlan, t)
	t = time.Now()
	images := make([]repo.DiskImage, len(plans))
	reports, err := j.forEachDisk(ctx, plans, func(ctx context.Context, i int, p *diskPlan) (DiskReport, error) {
		img, rep, err := j.backupDisk(ctx, pending, prev, snap, p)
		if err == nil {
			images[i] = *img
		}
		return rep, err
	})
	j.report.Disks = append(j.report.Disks, reports...)
	if err != nil {
		return err
	}
	ph.since(StepDisks, t)

	// Every image is flushed and closed. Remove the snapshot before
	// committing: a backup that would leave a snapshot behind fails (and
	// the cleanup tries again), so the next one repeats this incremental
	// from the old changeIds.
	if err := ph.time(StepSnapshotRemove, func() error { return j.removeSnapshot(ctx, snap) }); err != nil {
		return err
	}
	snapRemoved = true

	// Commit the restore point, which records the new changeIds, unless
	// the job was interrupted before: then nothing is kept.
	if err := ctx.Err(); err != nil {
		return err
	}
	if vmCfg != nil {
		caps := map[int32]uint64{}
		for _, img := range images {
			caps[img.Key] = img.Capacity
		}
		if err := vmCfg.Validate(caps); err != nil {
			j.notice("the VM's configuration is not recorded (restore --to-vsphere will need it): %v", err)
			vmCfg = nil
		}
	}
	m := &repo.Manifest{
		VM:       vmRef,
		Snapshot: repo.SnapshotRef{Moref: snap, Name: snapName, Quiesced: quiesced},
		Started:  j.report.Started,
		Finished: time.Now(),
		Disks:    images,
		VMConfig: vmCfg,
	}
	if err := ph.time(StepManifest, func() error { return pending.Commit(m) }); err != nil {
		return err
	}
	committed = true
	for _, p := range plans {
		delete(state.ForceFull, p.disk.Key)
	}
	if err := ph.time(StepState, func() error { return pending.WriteState(state) }); err != nil {
		slog.Warn("writing the VM state", "err", err)
	}
	j.report.summarise(plans)
	return nil
}

// excludeDisks drops the disks --exclude-disk and the [[vm]] tables of
// the configuration exclude; each is a notice, and so is an excluded key
// the VM has no disk for (nothing is excluded by mistake silently).
func (j *backupJob) excludeDisks(disks []cbt.Disk) ([]cbt.Disk, error) {
	excluded := slices.Clone(j.opt.ExcludeDisks)
	for _, k := range j.s.Config.ExcludedDisks(j.vm.Name, j.vm.Path, j.vm.Moref) {
		if !slices.Contains(excluded, k) {
			excluded = append(excluded, k)
		}
	}
	if len(excluded) == 0 {
		return disks, nil
	}
	var kept []cbt.Disk
	var keys []string
	for _, d := range disks {
		keys = append(keys, strconv.Itoa(int(d.Key)))
		if slices.Contains(excluded, d.Key) {
			j.notice("disk %d (%s) excluded (--exclude-disk, [[vm]] exclude_disks): not backed up, and not in this restore point", d.Key, d.Label)
			continue
		}
		kept = append(kept, d)
	}
	for _, k := range excluded {
		if !slices.ContainsFunc(disks, func(d cbt.Disk) bool { return d.Key == k }) {
			j.notice("disk %d is excluded, but the VM has no such disk (its disks: %s)", k, strings.Join(keys, ", "))
		}
	}
	if len(kept) == 0 {
		return nil, fmt.Errorf("every disk of VM %s is excluded (%s): nothing to back up", j.vm, strings.Join(keys, ", "))
	}
	return kept, nil
}

// plan decides full or incremental for every disk (CBT rules in
// docs/design.md) and queries the changed areas of the incrementals.
func (j *backupJob) plan(ctx context.Context, pending *repo.Pending, prev *repo.Manifest, state *repo.State, snap string, disks []cbt.Disk) ([]*diskPlan, error) {
	var plans []*diskPlan
	for _, d := range disks {
		var prevImg *repo.DiskImage
		var prevState *cbt.DiskState
		if prev != nil {
			prevImg = prev.Disk(d.Key)
		}
		if prevImg != nil {
			prevState = &cbt.DiskState{Key: prevImg.Key, UUID: prevImg.UUID, Capacity: prevImg.Capacity, ChangeID: prevImg.ChangeID}
		}
		p := decide(d, prevState)
		switch {
		case j.opt.Full:
			p.full, p.reason = true, "full backup requested (--full)"
		case !p.full && state.ForceFull[d.Key] != "":
			p.full, p.reason = true, state.ForceFull[d.Key]
		}
		if !p.full {
			// A missing or damaged base makes this disk full (the damaged
			// point stays; verify reports it).
			if err := pending.CheckBase(ctx, d.Key); err != nil {
				p.full, p.reason = true, fmt.Sprintf("the previous backup's image cannot be the base of an incremental (%v); run 'sendense verify %s'", err, j.vm.Name)
			}
		}
		if !p.full {
			align := uint64(0)
			if j.repo.Qemu().CanWriteImage(d.Capacity) {
				align = qemu.ImageWriterCluster // it writes whole clusters
			}
			if err := j.queryChanges(ctx, snap, p, align); err != nil {
				if !j.cbtFault(ctx, err) {
					return nil, fmt.Errorf("disk %d (%s): querying changed blocks since %s: %w", d.Key, d.Label, p.base, err)
				}
				// CBT rule 2: a query fault makes this disk full (or, with
				// [cbt] fault = "fail", its next backup).
				_, why := cbt.NeedFull(prevState, d.State(), err)
				state.ForceFull[d.Key] = why
				if werr := pending.WriteState(state); werr != nil {
					slog.Warn("recording that the next backup must be full", "err", werr)
				}
				if j.s.Config.CBT.Fault == "fail" {
					return nil, fmt.Errorf("disk %d (%s): querying changed blocks since %s: %w; the next backup of this disk will be full ([cbt] fault = \"fail\", --cbt-fault)", d.Key, d.Label, p.base, err)
				}
				j.fullAfterFault(p, why)
			}
		} else if prevImg != nil || j.opt.Full {
			j.notice("disk %d (%s): full backup: %s", d.Key, d.Label, p.reason)
		}
		plans = append(plans, p)
	}
	return plans, nil
}

// backupDisk creates disk p's qcow2 image (an incremental on top of the
// disk's previous image), serves it with qemu-nbd (or, encrypted in a
// local repository, writes it in this process), copies into it and
// closes it. A full goes into a fresh image that reads as zeroes, so
// nothing is written for zero extents, and records the disk digest
// (docs/repository.md); both record a SHA-256 per chunk for the manifest.
func (j *backupJob) backupDisk(ctx context.Context, pending *repo.Pending, prev *repo.Manifest, snap string, p *diskPlan) (*repo.DiskImage, DiskReport, error) {
	d := p.disk
	start := time.Now()
	ph := newPhaseLog("backup of %s disk %d", j.vm.Name, d.Key)
	backing := ""
	if !p.full {
		backing = prev.Disk(d.Key).Image
	}
	image := pending.ImagePath(d.Key)
	tools := j.repo.Qemu() // where the repository is
	opts := j.copyOptions(p)
	opts.DestinationIsZero = p.full
	opts.Digest = p.full
	opts.HashChunks = true
	opts.DigestHash = j.repo.DigestHash() // HMAC-SHA-256 in an encrypted repository
	var copyFrom func(srcURI string) (*copier.Result, error)
	var closeImage func() error
	if tools.CanWriteImage(d.Capacity) {
		// An encrypted image of a local repository: written and encrypted
		// in this process (qemu.ImageWriter), whole clusters (plan).
		var w *qemu.ImageWriter
		if err := ph.time(StepImageCreate, func() (err error) { w, err = tools.NewImageWriter(image, d.Capacity, backing); return err }); err != nil {
			return nil, DiskReport{}, err
		}
		defer w.Abort()
		copyFrom = func(src string) (*copier.Result, error) { return copyInto(ctx, src, w, opts) }
		closeImage = w.Close
	} else {
		if err := ph.time(StepImageCreate, func() error { return tools.CreateImage(ctx, image, d.Capacity, backing) }); err != nil {
			return nil, DiskReport{}, err
		}
		sopts := qemu.ServeOptions{Backing: pending.Backing(d.Key)} // the checked chain, not the header's names
		if j.repo.Local() {
			sopts.SocketDir = j.tmp
		}
		t := time.Now()
		dst, err := tools.ServeNBD(ctx, image, sopts)
		if err != nil {
			return nil, DiskReport{}, err
		}
		defer dst.Close()
		ph.since(StepServerStart, t)
		var reconnect Reconnector
		if !j.repo.Local() {
			reconnect = serverReconnector(dst) // a lost tunnel is resumed
		}
		copyFrom = func(src string) (*copier.Result, error) { return j.copyResumable(ctx, src, dst.URI(), opts, reconnect) }
		closeImage = dst.Close
	}
	res, err := j.copyDisk(ctx, snap, p, ph, copyFrom)
	if err != nil {
		return nil, DiskReport{}, err
	}
	if err := ph.time(StepImageClose, closeImage); err != nil {
		return nil, DiskReport{}, fmt.Errorf("closing the image %s: %w", image, err)
	}
	seconds := time.Since(start).Seconds()
	img := &repo.DiskImage{
		Key:          d.Key,
		UUID:         d.UUID,
		Label:        d.Label,
		File:         d.FileName,
		Capacity:     d.Capacity,
		ChangeID:     d.ChangeID,
		Level:        p.level(),
		Reason:       p.reason,
		BaseChangeID: p.base,
		Image:        pending.RelImage(d.Key),
		Backing:      backing,
		BytesCopied:  res.BytesWritten,
		BytesZeroed:  res.BytesZeroed,
		Seconds:      seconds,
		BlocksSHA256: res.Digest,
		Chunks:       manifestChunks(res.Chunks),
	}
	rep := diskReport(p, res, seconds)
	rep.Image = img.Image
	rep.Phases = ph.get()
	j.progress(p, PhaseDone, copierProgress(res))
	return img, rep, nil
}

// manifestChunks converts the copier's chunk records for the manifest.
func manifestChunks(in []copier.Chunk) []repo.Chunk {
	out := make([]repo.Chunk, len(in))
	for i, c := range in {
		out[i] = repo.Chunk{Offset: c.Offset, Length: c.Length, Kind: string(c.Kind), SHA256: c.SHA256}
	}
	return out
}
