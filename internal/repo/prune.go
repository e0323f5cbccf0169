package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sendense/capture/internal/qcow2"
	"github.com/sendense/capture/internal/qemu"
)

// PrunePoint is one restore point of a VM as a retention policy sees it.
type PrunePoint struct {
	ID   string
	Time time.Time // the backup's start (the manifest's "started", else the id's time)
}

// PruneOptions control Prune.
type PruneOptions struct {
	// VM selects one VM (name, moref, instance UUID or directory); "" all.
	VM string
	// Keep is how many of the newest backups of each VM to keep (≥ 1)
	// when Select is nil.
	Keep int
	// Select, when set, decides which points of a VM to keep: given the
	// VM's restorable points, newest first, it returns the kept ids, each
	// with the reasons it is kept (printed with --dry-run). Select == nil
	// means Keep N (keep the N newest). Whatever it returns, prune never
	// removes the last restorable point (the newest is then kept).
	Select func(points []PrunePoint) map[string][]string
	// DryRun reports what would be done and changes nothing.
	DryRun bool
	// OnVM, if set, is called after each VM.
	OnVM func(PruneReport)
}

// PruneReport is what Prune did (or would do) to one VM.
type PruneReport struct {
	VM      string   `json:"vm"` // VM directory
	Kept    []string `json:"kept"`
	Dropped []string `json:"dropped"`
	// Reasons are why each kept backup is kept.
	Reasons map[string][]string `json:"reasons,omitempty"`
	Merged  []MergeReport       `json:"merged,omitempty"`
	// Leftovers are the files no restore point needs that were (or would
	// be) removed: images of backups that never finished, temporary files
	// of interrupted writes.
	Leftovers  []string `json:"leftovers,omitempty"`
	FreedBytes int64    `json:"freed_bytes"` // estimate with DryRun
	DryRun     bool     `json:"dry_run"`
}

// MergeReport is one kept backup's disk made standalone.
type MergeReport struct {
	Backup string   `json:"backup"` // the kept backup, now full for Disk
	Disk   int32    `json:"disk"`
	Images []string `json:"images"` // the chain merged, newest first
}

// Prune keeps, of each VM, the backups opts selects and removes the
// others. A kept incremental whose backing file belongs to a removed
// backup becomes a full: its chain is written anew as one standalone
// image, checked against the manifests, and switched to (journal.go).
//
// Before writing anything it checks every restore point of the VM
// (check.go): a VM with a corrupt manifest, a damaged image or a broken
// chain is left unchanged, with an error naming the file and the backup,
// so that a prune never reduces the set of restorable points beyond what
// the policy asks, and never removes the last restorable one. Leftovers
// (images of backups that never finished, temporary files) are removed
// from every VM directory, retired VMs' too, under the VM's lock.
func (r *Repo) Prune(ctx context.Context, opts PruneOptions) ([]PruneReport, error) {
	if opts.Select == nil && opts.Keep < 1 {
		return nil, fmt.Errorf("--keep must be at least 1, not %d", opts.Keep)
	}
	if !opts.DryRun {
		if err := r.Writable(); err != nil {
			return nil, err
		}
	}
	vds, err := r.selectVMs(opts.VM)
	if err != nil {
		return nil, err
	}
	var reports []PruneReport
	var errs []error
	for _, vd := range vds {
		if err := ctx.Err(); err != nil {
			return reports, err
		}
		rep, err := r.pruneVM(ctx, vd, opts)
		if err != nil {
			errs = append(errs, fmt.Errorf("prune VM %s: %w", vd.Name, err))
			continue
		}
		reports = append(reports, *rep)
		if opts.OnVM != nil {
			opts.OnVM(*rep)
		}
	}
	return reports, errors.Join(errs...)
}

// stepError is a test hook's injected crash: nothing is cleaned up.
type stepError struct{ err error }

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func (r *Repo) step(name string) error {
	if r.hook != nil {
		if err := r.hook(name); err != nil {
			return &stepError{err}
		}
	}
	return nil
}

func (r *Repo) pruneVM(ctx context.Context, vd *vmDir, opts PruneOptions) (*PruneReport, error) {
	wl, err := r.lockWriter(vd.Path, "prune")
	if err != nil {
		return nil, err
	}
	defer wl.Unlock()
	if r.exists(filepath.Join(vd.Path, journalName)) {
		if opts.DryRun {
			return nil, fmt.Errorf("an interrupted prune is pending (%s): run prune without --dry-run to finish it", location(r.fs, filepath.Join(vd.Path, journalName)))
		}
		if err := r.recoverLocked(ctx, vd, true); err != nil {
			return nil, fmt.Errorf("finishing the interrupted prune: %w", err)
		}
	}
	rl, err := r.fs.WaitLock(ctx, filepath.Join(vd.Path, readLockName), false, "waiting for a restore or verify of VM "+vd.Name+" to finish")
	if err != nil {
		return nil, err
	}
	defer func() { rl.Unlock() }()

	ix, err := r.index(vd)
	if err != nil {
		return nil, err
	}
	if ix.jerr != nil {
		return nil, fmt.Errorf("nothing was changed: %w", ix.jerr)
	}
	if errs := ix.manifestErrors(); len(errs) > 0 {
		return nil, fmt.Errorf("nothing was changed: prune removes nothing from a VM whose manifests cannot all be read: %w", errors.Join(errs...))
	}
	// Check every restore point before anything is decided.
	var damaged []error
	for _, m := range ix.points {
		if err := r.checkPoint(ctx, ix, m, true); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			damaged = append(damaged, err)
		}
	}
	if len(damaged) > 0 {
		return nil, fmt.Errorf("nothing was changed: prune removes nothing from a VM with a damaged backup (run 'sendense verify %s'; restore the file from a copy, or move the damaged backup's manifest away): %w",
			vd.Name, errors.Join(damaged...))
	}

	rep := &PruneReport{VM: vd.Name, DryRun: opts.DryRun, Kept: []string{}, Dropped: []string{}}
	keep := r.selectKept(ix.points, opts)
	rep.Reasons = keep
	for _, m := range ix.points {
		if _, ok := keep[m.ID]; ok {
			rep.Kept = append(rep.Kept, m.ID)
		} else {
			rep.Dropped = append(rep.Dropped, m.ID)
		}
	}
	j, chains, err := r.planPrune(ctx, ix, keep)
	if err != nil {
		return nil, fmt.Errorf("nothing was changed: %w", err)
	}
	for _, mg := range j.Merges {
		var images []string
		for _, l := range chains[mg] {
			images = append(images, l.d.Image)
		}
		rep.Merged = append(rep.Merged, MergeReport{Backup: mg.Backup, Disk: mg.Disk, Images: images})
	}
	left := r.leftovers(ix)
	for _, l := range left {
		rep.Leftovers = append(rep.Leftovers, l.File)
	}
	if opts.DryRun {
		rep.FreedBytes = r.estimateFreed(ix, j, chains, left)
		return rep, nil
	}
	before := r.dirUsage(vd.Path)
	if len(j.Drop) > 0 {
		if err := r.runPrune(ctx, ix, j, chains, &rl); err != nil {
			return nil, err
		}
	}
	if errs := r.removeLeftovers(left); len(errs) > 0 {
		return nil, fmt.Errorf("removing leftovers: %w", errors.Join(errs...))
	}
	// Allocation is approximate (file systems preallocate): never negative.
	rep.FreedBytes = max(0, before-r.dirUsage(vd.Path))
	return rep, nil
}

// selectKept decides which points (oldest first) to keep, with reasons.
func (r *Repo) selectKept(points []*Manifest, opts PruneOptions) map[string][]string {
	newestFirst := make([]PrunePoint, 0, len(points))
	for i := len(points) - 1; i >= 0; i-- {
		m := points[i]
		t := m.Started
		if t.IsZero() {
			t, _ = IDTime(m.ID)
		}
		newestFirst = append(newestFirst, PrunePoint{ID: m.ID, Time: t})
	}
	var sel map[string][]string
	if opts.Select != nil {
		sel = opts.Select(slices.Clone(newestFirst))
	} else {
		sel = map[string][]string{}
		for i, p := range newestFirst {
			if i < opts.Keep {
				sel[p.ID] = []string{fmt.Sprintf("one of the %d newest (--keep %d)", opts.Keep, opts.Keep)}
			}
		}
	}
	keep := map[string][]string{}
	for _, p := range newestFirst {
		if reasons, ok := sel[p.ID]; ok {
			keep[p.ID] = slices.Clone(reasons)
		}
	}
	if len(keep) == 0 && len(newestFirst) > 0 {
		keep[newestFirst[0].ID] = []string{"the newest backup: prune never removes the last one"}
	}
	return keep
}

// planPrune is the journal of keeping keep (its Drop empty when nothing
// goes) and the chain of each merge (top first), checked.
func (r *Repo) planPrune(ctx context.Context, ix *vmIndex, keep map[string][]string) (*journal, map[journalMerge][]layer, error) {
	j := &journal{Format: journalFormat, Version: journalVersion, Phase: phaseMerging}
	dropped := map[string]bool{}
	for _, m := range ix.points {
		if _, ok := keep[m.ID]; !ok {
			j.Drop = append(j.Drop, m.ID)
			dropped[m.ID] = true
			for _, d := range m.Disks {
				j.Delete = append(j.Delete, d.Image)
			}
		}
	}
	chains := map[journalMerge][]layer{}
	for _, m := range ix.points {
		if dropped[m.ID] || !dropped[m.Parent] {
			continue
		}
		for _, key := range sortedKeys(m) {
			if m.Disk(key).Backing == "" {
				continue
			}
			layers, err := r.chain(ctx, ix, m, key, true)
			if err != nil {
				return nil, nil, err
			}
			mg := journalMerge{Backup: m.ID, Disk: key}
			j.Merges = append(j.Merges, mg)
			chains[mg] = layers
		}
	}
	// No kept point may need a removed image once the merges are done.
	for _, m := range ix.points {
		if dropped[m.ID] {
			continue
		}
		for _, d := range m.Disks {
			if d.Backing != "" && dropped[m.Parent] && chains[journalMerge{m.ID, d.Key}] == nil {
				return nil, nil, fmt.Errorf("backup %s disk %d would lose its backing file %s", m.ID, d.Key, d.Backing)
			}
		}
	}
	return j, chains, nil
}

// runPrune carries out j: merging (rolled back on a failure), then
// switching (rolled forward). rl is the VM's read lock, held shared while
// merging and exclusively while switching.
func (r *Repo) runPrune(ctx context.Context, ix *vmIndex, j *journal, chains map[journalMerge][]layer, rl *Lock) error {
	vd := ix.vd
	if err := r.writeJournal(vd.Path, j); err != nil {
		return fmt.Errorf("nothing was changed: %w", err)
	}
	fail := func(err error) error {
		var se *stepError
		if errors.As(err, &se) {
			return err // an injected crash: nothing is cleaned up
		}
		if rerr := r.rollback(vd, j); rerr != nil {
			return fmt.Errorf("%w; rolling back failed too (%v): every backup restores as before, and the next prune or backup of the VM removes what is left", err, rerr)
		}
		return fmt.Errorf("nothing was changed (rolled back): %w", err)
	}
	if err := r.step("journal"); err != nil {
		return fail(err)
	}
	merged := map[journalMerge]*DiskImage{}
	for _, mg := range j.Merges {
		d, err := r.mergeDisk(ctx, ix, mg, chains[mg])
		if err != nil {
			return fail(fmt.Errorf("making disk %d of backup %s standalone: %w", mg.Disk, mg.Backup, err))
		}
		merged[mg] = d
		if err := r.step("merged"); err != nil {
			return fail(err)
		}
	}
	for _, id := range j.successors() {
		m := ix.byID[id]
		nm := *m
		nm.Disks = slices.Clone(m.Disks)
		var from []string
		for _, mg := range j.mergesOf(id) {
			*nm.Disk(mg.Disk) = *merged[mg]
			for _, l := range chains[mg][1:] {
				if slices.Contains(j.Drop, l.m.ID) && !slices.Contains(from, l.m.ID) {
					from = append(from, l.m.ID)
				}
			}
		}
		nm.Version = ManifestVersion // blocks_sha256
		nm.Parent = ""
		for _, d := range nm.Disks {
			if d.Backing != "" {
				nm.Parent = m.Parent
			}
		}
		for _, f := range from {
			if !slices.Contains(nm.Merged, f) {
				nm.Merged = append(nm.Merged, f)
			}
		}
		slices.SortFunc(nm.Merged, compareIDs)
		if err := nm.Validate(); err != nil {
			return fail(fmt.Errorf("the new manifest of backup %s: %w", id, err))
		}
		b, err := encodeManifest(&nm)
		if err == nil {
			err = r.writeMeta(ix.path(id+newSuffix), manifestAD(id), b)
		}
		if err != nil {
			return fail(fmt.Errorf("writing the new manifest of backup %s: %w", id, err))
		}
		if err := r.step("manifest-new"); err != nil {
			return fail(err)
		}
	}
	// The point of no return: readers wait while the files switch.
	(*rl).Unlock()
	l, err := r.fs.WaitLock(ctx, filepath.Join(vd.Path, readLockName), true, "waiting for a restore or verify of VM "+vd.Name+" to finish")
	if err != nil {
		*rl = noLock{}
		return fail(err)
	}
	*rl = l
	j.Phase = phaseSwitching
	if err := r.writeJournal(vd.Path, j); err != nil {
		j.Phase = phaseMerging
		return fail(err)
	}
	if err := r.step("switching"); err != nil {
		return err
	}
	if err := r.finishSwitch(vd, j); err != nil {
		var se *stepError
		if errors.As(err, &se) {
			return err
		}
		return fmt.Errorf("the prune passed its point of no return and could not finish (%w): every backup it keeps restores; run 'sendense prune' again to finish it", err)
	}
	return nil
}

// mergeDisk writes the chain of a kept backup's disk as one standalone
// image, .<image>.merging, with qemu-img where the repository is (every
// file of the chain pinned), and checks it: a full qcow2 of the disk's
// capacity, nothing allocated that the chain's chunks do not explain,
// and every byte as the chain's manifests say (expect.go). It returns the
// disk's new record: full, the chunks of the chain as seen from the top,
// and the whole-disk SHA-256 of the new image.
func (r *Repo) mergeDisk(ctx context.Context, ix *vmIndex, mg journalMerge, layers []layer) (*DiskImage, error) {
	top := layers[0]
	tmp := ix.path(mergingName(mg.image()))
	if err := r.fs.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	all := paths(layers)
	if err := r.Tools.Convert(ctx, all[0], tmp, qemu.ConvertOptions{Backing: all[1:], OutFormat: "qcow2"}); err != nil {
		return nil, err
	}
	if err := r.fs.SyncFile(tmp); err != nil {
		return nil, err
	}
	exp := expect(layers)
	if err := r.completeCuts(ctx, layers, exp); err != nil {
		return nil, err
	}
	nd := *top.d
	nd.Level, nd.Backing, nd.BaseChangeID, nd.SHA256, nd.BlocksSHA256 = LevelFull, "", "", "", ""
	nd.Chunks = exp.recorded()
	var ids []string
	for _, l := range layers[1:] {
		ids = append(ids, l.m.ID)
	}
	nd.Reason = "merged with the older backups " + strings.Join(ids, ", ") + " by prune"
	hdr, err := qcow2.ReadHeader(func(off int64, n int) ([]byte, error) { return r.fs.ReadAt(tmp, off, n) })
	if err != nil {
		return nil, fmt.Errorf("the merged image %s: %w", tmp, err)
	}
	if err := checkHeader(hdr, &nd, r.Encrypted(), func(kind, msg, expected, actual string) error {
		return fmt.Errorf("the merged image %s: %s (expected %s, actual %s)", tmp, msg, orNone(expected), orNone(actual))
	}); err != nil {
		return nil, err
	}
	entries, err := r.Tools.Map(ctx, tmp, qemu.MapOptions{NoBacking: true})
	if err != nil {
		return nil, err
	}
	var scratch ImageReport
	checkAllocation(&scratch, entries, &nd, hdr.ClusterSize())
	if len(scratch.Problems) > 0 {
		return nil, fmt.Errorf("the merged image %s: %s", tmp, scratch.Problems[0])
	}
	ir, err := r.openChain(ctx, []layer{{m: top.m, d: &nd, path: tmp}}, true)
	if err != nil {
		return nil, err
	}
	sum, err := r.checkStream(ctx, ir, entries, layers, exp, true, nil)
	if cerr := ir.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("checking the merged image %s: %w", tmp, err)
	}
	nd.BlocksSHA256 = sum
	return &nd, nil
}

// rollback undoes a journal that has not reached its point of no return:
// its new files and the journal are removed.
func (r *Repo) rollback(vd *vmDir, j *journal) error {
	var errs []error
	rm := func(name string) {
		if err := r.fs.Remove(filepath.Join(vd.Path, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, mg := range j.Merges {
		rm(mergingName(mg.image()))
	}
	for _, id := range j.successors() {
		rm(id + newSuffix)
	}
	if len(errs) == 0 {
		rm(journalName)
	}
	r.fs.SyncDir(vd.Path)
	return errors.Join(errs...)
}

// finishSwitch rolls a journal past its point of no return forward; each
// step is idempotent, and checked against the directory as it is now.
func (r *Repo) finishSwitch(vd *vmDir, j *journal) error {
	ix, err := r.index(vd)
	if err != nil {
		return err
	}
	if ix.jerr != nil {
		return ix.jerr
	}
	remaining := 0
	for _, id := range ix.ids {
		if !slices.Contains(j.Drop, id) {
			remaining++
		}
	}
	if remaining == 0 {
		return &JournalError{ix.path(journalName), errors.New("it removes every backup of the VM, which a prune never does")}
	}
	// 1. The standalone images replace the kept backups' images.
	for _, mg := range j.Merges {
		tmp := mergingName(mg.image())
		if !ix.has(tmp) {
			continue // renamed already
		}
		nm, err := r.readManifest(ix.path(mg.Backup + newSuffix))
		if err != nil {
			return fmt.Errorf("the new manifest of backup %s: %w", mg.Backup, err)
		}
		nd := nm.Disk(mg.Disk)
		if nd == nil || nd.Backing != "" {
			return fmt.Errorf("the new manifest of backup %s does not describe disk %d as standalone", mg.Backup, mg.Disk)
		}
		p := ix.path(tmp)
		if fi, err := r.fs.Lstat(p); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		hdr, err := qcow2.ReadHeader(func(off int64, n int) ([]byte, error) { return r.fs.ReadAt(p, off, n) })
		if err != nil {
			return fmt.Errorf("the merged image %s: %w", p, err)
		}
		if err := checkHeader(hdr, nd, r.Encrypted(), func(kind, msg, expected, actual string) error {
			return fmt.Errorf("the merged image %s: %s", p, msg)
		}); err != nil {
			return err
		}
		if err := r.rename(p, ix.path(mg.image())); err != nil {
			return err
		}
		if err := r.step("rename"); err != nil {
			return err
		}
	}
	// 2. Their new manifests.
	for _, id := range j.successors() {
		if !ix.has(id + newSuffix) {
			continue
		}
		if _, err := r.readManifest(ix.path(id + newSuffix)); err != nil {
			return err
		}
		if err := r.rename(ix.path(id+newSuffix), ix.path(id+".json")); err != nil {
			return err
		}
		if err := r.step("switch"); err != nil {
			return err
		}
	}
	// 3. The removed backups' manifests, then their images — those no
	// remaining manifest names.
	for _, id := range j.Drop {
		for _, name := range []string{id + ".json", id + droppedSuffix} {
			if err := r.fs.Remove(ix.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		if err := r.step("drop"); err != nil {
			return err
		}
	}
	r.fs.SyncDir(vd.Path)
	ix, err = r.index(vd)
	if err != nil {
		return err
	}
	named := map[string]bool{}
	for _, m := range ix.byID {
		for _, d := range m.Disks {
			named[d.Image], named[d.Backing] = true, true
		}
	}
	for _, id := range ix.ids {
		if ix.bad[id] != nil {
			return fmt.Errorf("not removing the images of the removed backups while manifest %s cannot be read: %w", ix.path(id+".json"), ix.bad[id])
		}
	}
	for _, name := range j.Delete {
		if named[name] {
			slog.Warn("a removed backup's image is named by a kept backup: it stays", "file", location(r.fs, ix.path(name)))
			continue
		}
		if err := r.fs.Remove(ix.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := r.step("delete"); err != nil {
			return err
		}
	}
	if err := r.fs.SyncDir(vd.Path); err != nil {
		return err
	}
	if err := r.fs.Remove(ix.path(journalName)); err != nil {
		return err
	}
	return r.fs.SyncDir(vd.Path)
}

// recoverLocked finishes a pending prune journal in vd; the caller holds
// the writer lock. Before the point of no return it rolls back; after, it
// rolls forward, which needs the read lock exclusively: wait says whether
// to wait for readers (else it gives up, nil, while a reader runs).
func (r *Repo) recoverLocked(ctx context.Context, vd *vmDir, wait bool) error {
	j, err := r.readJournal(vd.Path)
	if err != nil || j == nil {
		return err
	}
	if j.Phase == phaseMerging {
		slog.Info("rolling back a prune interrupted before its point of no return (nothing it would have removed was touched)", "vm", vd.Name)
		return r.rollback(vd, j)
	}
	lockPath := filepath.Join(vd.Path, readLockName)
	var rl Lock
	if wait {
		if rl, err = r.fs.WaitLock(ctx, lockPath, true, "waiting for a restore or verify of VM "+vd.Name+" to finish"); err != nil {
			return err
		}
	} else {
		var ok bool
		if rl, ok, err = r.fs.TryLock(lockPath, true); err != nil {
			return err
		} else if !ok {
			slog.Warn("an interrupted prune is pending but a restore or verify is reading the VM; it will be finished later", "vm", vd.Name)
			return nil
		}
	}
	defer rl.Unlock()
	slog.Warn("finishing an interrupted prune", "vm", vd.Name, "journal", location(r.fs, filepath.Join(vd.Path, journalName)))
	return r.finishSwitch(vd, j)
}

// estimateFreed is about what a prune frees: the removed images, the
// replaced images and the leftovers, less the new standalone images
// (about as large as their chain's full).
func (r *Repo) estimateFreed(ix *vmIndex, j *journal, chains map[journalMerge][]layer, left []Leftover) int64 {
	var files []string
	for _, name := range j.Delete {
		files = append(files, ix.path(name))
	}
	var added []string
	for _, mg := range j.Merges {
		files = append(files, ix.path(mg.image()))
		added = append(added, chains[mg][len(chains[mg])-1].path)
	}
	var n int64
	for _, u := range r.fs.Usage(files...) {
		n += u
	}
	for _, u := range r.fs.Usage(added...) {
		n -= u
	}
	for _, l := range left {
		n += l.Bytes
	}
	return max(0, n)
}

// dirUsage is the space the files of dir take.
func (r *Repo) dirUsage(dir string) int64 {
	entries, _ := r.fs.ReadDir(dir)
	var files []string
	for _, e := range entries {
		files = append(files, filepath.Join(dir, e.Name()))
	}
	var n int64
	for _, u := range r.fs.Usage(files...) {
		n += u
	}
	return n
}
