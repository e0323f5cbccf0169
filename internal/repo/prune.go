package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/qemu"
)

// Prune journal (REPO/<vm-dir>/prune-journal.json). A prune writes it
// before changing anything and removes it when done; whoever finds it
// (the next prune, backup or Open) finishes the prune, always forward:
//
//  1. the dropped backups' manifests are renamed to <id>.json.dropped (so
//     they are no restore points any more, but their chunk lists stay
//     readable);
//  2. for each kept backup whose images back onto dropped ones (its
//     "successor" role): every such image is committed (qemu-img commit
//     -d -b BASE TOP) into the full at the bottom of its chain; the
//     successor's new manifest, in which those disks are full, is written
//     as <id>.json.new; each merged base is renamed onto the successor's
//     image name; <id>.json.new is renamed to <id>.json;
//  3. the dropped images and <id>.json.dropped files are removed, then the
//     journal.
//
// Committing into the base never changes what the successor's image
// reads (the clusters written into the base are those the layers above it
// hold), and each rename is atomic, so every kept backup restores exactly
// at every instant. Between a rename and the manifest switch the
// successor's manifest still describes the old overlay: verify says so
// (prune-pending) until the journal is finished.
const (
	journalName    = "prune-journal.json"
	journalFormat  = "sendense-prune-journal"
	journalVersion = 1
	droppedSuffix  = ".json.dropped"
	newSuffix      = ".json.new"
	mergedChunkMax = 256 << 10 // chunks made from a merged image's map
)

type journal struct {
	Format     string      `json:"format"`
	Version    int         `json:"version"`
	Keep       int         `json:"keep"`
	Policy     bool        `json:"policy,omitempty"` // kept by PruneOptions.Select, not Keep
	Drop       []string    `json:"drop"`             // backups removed
	Successors []successor `json:"successors"`       // kept backups rewritten
	Delete     []string    `json:"delete"`           // image files removed at the end
}

type successor struct {
	Backup string  `json:"backup"`
	Merges []merge `json:"merges,omitempty"`
}

type merge struct {
	Disk  int32    `json:"disk"`
	Top   string   `json:"top"`   // the successor's image
	Base  string   `json:"base"`  // the full the chain starts from: merged into, then renamed to Top
	Chain []string `json:"chain"` // Top, the dropped images between, Base
}

// pendingFor says whether backup id is being changed by the journal.
func (j *journal) pendingFor(id string) bool {
	if slices.Contains(j.Drop, id) {
		return true
	}
	for _, s := range j.Successors {
		if s.Backup == id {
			return true
		}
	}
	return false
}

// readJournal reads dir's prune journal; none is (nil, nil).
func (r *Repo) readJournal(dir string) (*journal, error) {
	path := filepath.Join(dir, journalName)
	b, err := r.fs.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil || j.Format != journalFormat {
		return nil, fmt.Errorf("prune journal %s is corrupt (%v): an interrupted prune cannot be finished; see docs/restore-verify-prune.md", path, err)
	}
	if j.Version > journalVersion {
		return nil, fmt.Errorf("prune journal %s has version %d, newer than this sendense understands: upgrade sendense", path, j.Version)
	}
	return &j, nil
}

// PrunePoint is one restore point of a VM as a retention policy sees it.
type PrunePoint struct {
	ID   string
	Time time.Time // the backup's start (manifest "started", else the id)
}

// PruneOptions control Prune.
type PruneOptions struct {
	// VM selects one VM (name, moref, instance UUID or directory); "" all.
	VM string
	// Keep is how many of the newest backups of each VM to keep (≥ 1).
	Keep int
	// Select, when set, decides which points of a VM to keep: given the
	// VM's restorable points, newest first, it returns the kept ids, each
	// with the reasons it is kept (printed with --dry-run). Select == nil
	// means Keep. The newest point is always kept.
	Select func(points []PrunePoint) map[string][]string
	// DryRun reports what would be done and changes nothing.
	DryRun bool
	// OnVM, if set, is called after each VM.
	OnVM func(PruneReport)
}

// PruneReport is what Prune did (or would do) to one VM.
type PruneReport struct {
	VM      string        `json:"vm"` // VM directory
	Kept    []string      `json:"kept"`
	Dropped []string      `json:"dropped"`
	Merged  []MergeReport `json:"merged,omitempty"`
	// Reasons says why each kept backup is kept (with Select).
	Reasons    map[string][]string `json:"reasons,omitempty"`
	FreedBytes int64               `json:"freed_bytes"` // estimate with DryRun
	DryRun     bool                `json:"dry_run"`
}

// MergeReport is one image chain merged into a kept backup.
type MergeReport struct {
	Backup string   `json:"backup"` // the kept backup, now full for Disk
	Disk   int32    `json:"disk"`
	Images []string `json:"images"` // merged, newest first
}

// Prune keeps the newest opts.Keep backups of each VM and removes the
// older ones. When a kept incremental backs onto a removed backup, the
// chain is merged into it (it becomes a full) so that every kept backup
// restores exactly, and verifies, afterwards. A VM whose manifests cannot
// all be read, or whose chains are broken, is left alone (an error). It is
// safe against crashes (see the journal above) and refuses to run while a
// backup of the same VM runs.
func (r *Repo) Prune(ctx context.Context, opts PruneOptions) ([]PruneReport, error) {
	if opts.Keep < 1 && opts.Select == nil {
		return nil, fmt.Errorf("--keep must be at least 1, not %d", opts.Keep)
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

func (r *Repo) pruneVM(ctx context.Context, vd *vmDir, opts PruneOptions) (*PruneReport, error) {
	wl, err := r.lockWriter(vd.Path, "prune")
	if err != nil {
		return nil, err
	}
	defer wl.Unlock()
	rl, err := r.fs.WaitLock(ctx, filepath.Join(vd.Path, readLockName), !opts.DryRun, "waiting for a restore or verify of VM "+vd.Name+" to finish")
	if err != nil {
		return nil, err
	}
	defer rl.Unlock()

	if j, err := r.readJournal(vd.Path); err != nil {
		return nil, err
	} else if j != nil {
		if opts.DryRun {
			return nil, fmt.Errorf("an interrupted prune is pending (%s): run prune without --dry-run to finish it", filepath.Join(vd.Path, journalName))
		}
		slog.Info("finishing an interrupted prune", "vm", vd.Name)
		if err := r.finishPrune(ctx, vd, j); err != nil {
			return nil, fmt.Errorf("finishing the interrupted prune: %w", err)
		}
	}

	ms, errs := r.loadManifests(vd)
	if len(errs) > 0 {
		return nil, fmt.Errorf("nothing was changed: %w", errors.Join(errs...))
	}
	rep := &PruneReport{VM: vd.Name, DryRun: opts.DryRun, Kept: []string{}, Dropped: []string{}}
	keep := keepNewest(ms, opts.Keep)
	if opts.Select != nil {
		keep, rep.Reasons = selectPoints(ms, opts.Select)
	}
	j, err := r.planPrune(vd, ms, keep)
	if err != nil {
		return nil, fmt.Errorf("nothing was changed: %w", err)
	}
	if j != nil {
		j.Policy = opts.Select != nil
	}
	for _, m := range ms {
		if j != nil && slices.Contains(j.Drop, m.ID) {
			rep.Dropped = append(rep.Dropped, m.ID)
		} else {
			rep.Kept = append(rep.Kept, m.ID)
		}
	}
	if j == nil {
		return rep, nil
	}
	for _, s := range j.Successors {
		for _, mg := range s.Merges {
			rep.Merged = append(rep.Merged, MergeReport{Backup: s.Backup, Disk: mg.Disk, Images: mg.Chain})
		}
	}
	if opts.DryRun {
		var files []string
		for _, f := range j.Delete {
			files = append(files, filepath.Join(vd.Path, f))
		}
		for _, n := range r.fs.Usage(files...) {
			rep.FreedBytes += n
		}
		return rep, nil
	}
	before := r.dirUsage(vd.Path)
	b, _ := json.MarshalIndent(j, "", "  ")
	if err := r.fs.WriteFileAtomic(filepath.Join(vd.Path, journalName), append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("writing the prune journal: %w", err)
	}
	if err := r.step("journal"); err != nil {
		return nil, err
	}
	if err := r.finishPrune(ctx, vd, j); err != nil {
		return nil, err
	}
	// Allocation is approximate (file systems preallocate): never negative.
	rep.FreedBytes = max(0, before-r.dirUsage(vd.Path))
	return rep, nil
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

// keepNewest keeps the newest keep of ms (oldest first).
func keepNewest(ms []*Manifest, keep int) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms[max(0, len(ms)-keep):] {
		out[m.ID] = true
	}
	return out
}

// selectPoints asks a retention policy which of ms (oldest first) to
// keep. Ids it does not know are ignored, and the newest point is kept
// whatever it says: a prune never removes the last restore point.
func selectPoints(ms []*Manifest, sel func([]PrunePoint) map[string][]string) (map[string]bool, map[string][]string) {
	points := make([]PrunePoint, 0, len(ms))
	for i := len(ms) - 1; i >= 0; i-- {
		t := ms[i].Started
		if t.IsZero() {
			t, _ = IDTime(ms[i].ID)
		}
		points = append(points, PrunePoint{ID: ms[i].ID, Time: t})
	}
	keep, reasons := map[string]bool{}, map[string][]string{}
	for id, why := range sel(points) {
		for _, m := range ms {
			if m.ID == id {
				keep[id], reasons[id] = true, why
			}
		}
	}
	if n := len(ms); n > 0 && !keep[ms[n-1].ID] {
		keep[ms[n-1].ID] = true
		reasons[ms[n-1].ID] = []string{"newest backup (always kept)"}
	}
	return keep, reasons
}

// planPrune decides what pruning ms (oldest first) down to the backups
// in keep does; nil when nothing. It checks that every chain to merge is
// complete.
func (r *Repo) planPrune(vd *vmDir, ms []*Manifest, keep map[string]bool) (*journal, error) {
	var drop, kept []*Manifest
	dropped := map[string]bool{}
	for _, m := range ms {
		if keep[m.ID] {
			kept = append(kept, m)
		} else {
			drop = append(drop, m)
			dropped[m.ID] = true
		}
	}
	if len(drop) == 0 {
		return nil, nil
	}
	type owner struct {
		m *Manifest
		d *DiskImage
	}
	owners := map[string]owner{}
	for _, m := range ms {
		for i := range m.Disks {
			owners[m.Disks[i].Image] = owner{m, &m.Disks[i]}
		}
	}
	j := &journal{Format: journalFormat, Version: journalVersion, Keep: len(kept)}
	for _, m := range drop {
		j.Drop = append(j.Drop, m.ID)
	}
	needed := map[string]bool{} // images a kept backup still reads
	bases := map[string]bool{}
	for _, k := range kept {
		s := successor{Backup: k.ID}
		for _, key := range sortedKeys(k) {
			d := k.Disk(key)
			needed[d.Image] = true
			if d.Backing == "" {
				continue
			}
			o, ok := owners[d.Backing]
			if !ok {
				return nil, fmt.Errorf("backup %s disk %d: its backing file %s is not recorded by any backup", k.ID, key, d.Backing)
			}
			if !dropped[o.m.ID] {
				needed[d.Backing] = true
				continue
			}
			mg := merge{Disk: key, Top: d.Image, Chain: []string{d.Image}}
			for cur := o; ; {
				mg.Chain = append(mg.Chain, cur.d.Image)
				if !dropped[cur.m.ID] {
					return nil, fmt.Errorf("backup %s disk %d: the chain reaches the kept backup %s through removed ones", k.ID, key, cur.m.ID)
				}
				if cur.d.Backing == "" {
					break
				}
				next, ok := owners[cur.d.Backing]
				if !ok {
					return nil, fmt.Errorf("backup %s disk %d: the backing file %s of %s is not recorded by any backup", k.ID, key, cur.d.Backing, cur.d.Image)
				}
				cur = next
			}
			mg.Base = mg.Chain[len(mg.Chain)-1]
			if bases[mg.Base] {
				return nil, fmt.Errorf("image %s is the base of two kept chains", mg.Base)
			}
			bases[mg.Base] = true
			for _, img := range mg.Chain {
				if p := filepath.Join(vd.Path, img); !r.exists(p) {
					return nil, fmt.Errorf("backup %s disk %d needs %s, which is missing: restore it from a copy, or remove the backups that need it by hand", k.ID, key, p)
				}
			}
			s.Merges = append(s.Merges, mg)
		}
		if len(s.Merges) > 0 || dropped[k.Parent] {
			j.Successors = append(j.Successors, s)
		}
	}
	// Every image of a removed backup goes, but for the merge bases, which
	// become kept images. Images of those ids that no manifest lists (an
	// aborted disk) go too, unless a kept backup reads them.
	seen := map[string]bool{}
	for _, m := range drop {
		names := []string{}
		for _, d := range m.Disks {
			names = append(names, d.Image)
		}
		for _, e := range r.glob(vd.Path, m.ID+"-disk", ".qcow2") {
			if id, _, ok := parseImageName(e); ok && id == m.ID {
				names = append(names, e)
			}
		}
		for _, n := range names {
			if !seen[n] && !bases[n] && !needed[n] {
				seen[n] = true
				j.Delete = append(j.Delete, n)
			}
		}
	}
	return j, nil
}

// finishPrune carries out a journal (see the comment at the top); the
// caller holds both locks. It is idempotent: after a failure it can run
// again from the start.
func (r *Repo) finishPrune(ctx context.Context, vd *vmDir, j *journal) error {
	path := func(name string) string { return filepath.Join(vd.Path, name) }

	// 1. The dropped backups stop being restore points.
	for _, id := range j.Drop {
		if err := r.fs.Rename(path(id+".json"), path(id+droppedSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := r.fs.SyncDir(vd.Path); err != nil {
		return err
	}
	if err := r.step("dropped"); err != nil {
		return err
	}

	// 2. Merge into the successors.
	for _, s := range j.Successors {
		if err := r.finishSuccessor(ctx, vd, j, s); err != nil {
			return fmt.Errorf("backup %s: %w", s.Backup, err)
		}
	}

	// 3. Remove what is no longer needed.
	for _, name := range j.Delete {
		if err := r.fs.Remove(path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := r.step("delete"); err != nil {
			return err
		}
	}
	for _, id := range j.Drop {
		if err := r.fs.Remove(path(id + droppedSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := r.fs.SyncDir(vd.Path); err != nil {
		return err
	}
	if err := r.fs.Remove(path(journalName)); err != nil {
		return err
	}
	return r.fs.SyncDir(vd.Path)
}

func (r *Repo) finishSuccessor(ctx context.Context, vd *vmDir, j *journal, s successor) error {
	path := func(name string) string { return filepath.Join(vd.Path, name) }
	newPath := path(s.Backup + newSuffix)
	if !r.exists(newPath) {
		k, err := r.readManifest(path(s.Backup + ".json"))
		if err != nil {
			return err
		}
		done := !slices.Contains(j.Drop, k.Parent)
		for _, mg := range s.Merges {
			if kd := k.Disk(mg.Disk); kd == nil || kd.Backing != "" {
				done = false
			}
		}
		if done {
			return nil // switched already
		}
		for _, mg := range s.Merges {
			if !r.exists(path(mg.Base)) {
				return fmt.Errorf("cannot merge disk %d: its base image %s is missing", mg.Disk, path(mg.Base))
			}
			if err := r.Tools.Commit(ctx, path(mg.Top), path(mg.Base)); err != nil {
				return err
			}
			if err := r.fs.SyncFile(path(mg.Base)); err != nil {
				return err
			}
			if err := r.step("commit"); err != nil {
				return err
			}
		}
		nk, err := r.mergedManifest(ctx, vd, j, k, s)
		if err != nil {
			return err
		}
		b, err := encodeManifest(nk)
		if err != nil {
			return err
		}
		if err := r.fs.WriteFileAtomic(newPath, b, 0o600); err != nil {
			return err
		}
		if err := r.step("manifest-new"); err != nil {
			return err
		}
	}
	for _, mg := range s.Merges {
		if !r.exists(path(mg.Base)) {
			continue // renamed already
		}
		if err := r.rename(path(mg.Base), path(mg.Top)); err != nil {
			return err
		}
		if err := r.step("rename"); err != nil {
			return err
		}
	}
	if err := r.rename(newPath, path(s.Backup+".json")); err != nil {
		return err
	}
	return r.step("switch")
}

// droppedManifest reads a dropped backup's manifest (renamed or not yet).
func (r *Repo) droppedManifest(vd *vmDir, id string) (*Manifest, error) {
	m, err := r.readManifest(filepath.Join(vd.Path, id+droppedSuffix))
	if errors.Is(err, fs.ErrNotExist) {
		m, err = r.readManifest(filepath.Join(vd.Path, id+".json"))
	}
	return m, err
}

// mergedManifest is k rewritten after its merges: parent gone, merged
// disks full. A merged disk's chunks are the successor's own, then those
// of each older layer outside what the layers above hold (cut where they
// overlap, with the SHA-256 of the cut parts recomputed), then chunks for
// any allocation no manifest explained; its whole-disk SHA-256 is
// computed by reading the merged image.
func (r *Repo) mergedManifest(ctx context.Context, vd *vmDir, j *journal, k *Manifest, s successor) (*Manifest, error) {
	nk := *k
	nk.Disks = slices.Clone(k.Disks)
	nk.Parent = ""
	mergedIDs := map[string]bool{}
	for _, mg := range s.Merges {
		d := nk.Disk(mg.Disk)
		if d == nil || d.Image != mg.Top {
			return nil, fmt.Errorf("disk %d is not in the manifest as %s", mg.Disk, mg.Top)
		}
		base := filepath.Join(vd.Path, mg.Base)
		info, err := r.Tools.Info(ctx, base)
		if err != nil {
			return nil, err
		}
		cluster := info.ClusterSize
		if cluster == 0 || cluster&(cluster-1) != 0 {
			cluster = 64 << 10
		}
		var ids []string
		layers := []layer{{chunks: d.Chunks, alloc: extent.RoundOut(chunkExtents(d.Chunks), cluster, d.Capacity)}}
		for _, img := range mg.Chain[1:] {
			id, key, _ := parseImageName(img)
			ids = append(ids, id)
			mergedIDs[id] = true
			var od *DiskImage
			m, err := r.droppedManifest(vd, id)
			if err == nil {
				od = m.Disk(key)
			}
			if od != nil && od.Image == img {
				layers = append(layers, layer{chunks: od.Chunks, alloc: extent.RoundOut(chunkExtents(od.Chunks), cluster, d.Capacity)})
				continue
			}
			// No chunk list: the image's own allocation tells what it
			// hides below; its chunks are rebuilt from the merged map.
			slog.Warn("merging without the chunk list of a removed backup", "file", img, "error", err)
			alloc, err := r.ownAllocation(ctx, filepath.Join(vd.Path, img))
			if err != nil {
				return nil, err
			}
			layers = append(layers, layer{alloc: alloc})
		}
		chunks := layerChunks(layers)
		entries, err := r.Tools.Map(ctx, base, qemu.MapOptions{Format: "qcow2"})
		if err != nil {
			return nil, err
		}
		chunks = addUnexplained(chunks, entries, cluster, d.Capacity)
		sum, err := r.hashMerged(ctx, base, entries, d.Capacity, chunks)
		if err != nil {
			return nil, err
		}
		d.Chunks = chunks
		d.SHA256 = sum
		d.Level = LevelFull
		d.Backing = ""
		d.BaseChangeID = ""
		d.Reason = fmt.Sprintf("merged with the removed backups %s by prune --keep %d", strings.Join(ids, ", "), j.Keep)
		if j.Policy {
			d.Reason = fmt.Sprintf("merged with the removed backups %s by prune (retention policy)", strings.Join(ids, ", "))
		}
	}
	for _, id := range j.Drop {
		if mergedIDs[id] {
			nk.Merged = append(nk.Merged, id)
		}
	}
	if err := nk.Validate(); err != nil {
		return nil, fmt.Errorf("merged manifest: %w", err)
	}
	return &nk, nil
}

// layer is one image of a chain being merged: its chunks and the
// clusters it holds.
type layer struct {
	chunks []Chunk
	alloc  extent.List
}

// ownAllocation is what an image holds itself (qemu-img map, top layer).
func (r *Repo) ownAllocation(ctx context.Context, path string) (extent.List, error) {
	entries, err := r.Tools.Map(ctx, path, qemu.MapOptions{NoBacking: true})
	if err != nil {
		return nil, err
	}
	var l []extent.Extent
	for _, e := range entries {
		if e.Present {
			l = append(l, extent.Extent{Offset: e.Start, Length: e.Length})
		}
	}
	return extent.Normalize(l), nil
}

// layerChunks combines the chunk lists of a chain, top first: each layer
// contributes the parts of its chunks outside the clusters the layers
// above hold. Untouched chunks keep their SHA-256; cut data chunks get ""
// (to compute).
func layerChunks(layers []layer) []Chunk {
	var out []Chunk
	var covered extent.List
	for _, l := range layers {
		for _, c := range l.chunks {
			parts := subtract(extent.List{{Offset: c.Offset, Length: c.Length}}, covered)
			if len(parts) == 1 && parts[0].Offset == c.Offset && parts[0].Length == c.Length {
				out = append(out, c)
				continue
			}
			for _, p := range parts {
				out = append(out, Chunk{Offset: p.Offset, Length: p.Length, Kind: c.Kind})
			}
		}
		covered = extent.Normalize(append(slices.Clone(covered), l.alloc...))
	}
	slices.SortFunc(out, func(a, b Chunk) int { return cmpU64(a.Offset, b.Offset) })
	return out
}

// addUnexplained adds chunks for allocated clusters that no chunk covers
// (a layer whose chunk list was unavailable).
func addUnexplained(chunks []Chunk, entries []qemu.MapEntry, cluster, capacity uint64) []Chunk {
	covered := extent.RoundOut(chunkExtents(chunks), cluster, capacity)
	var added bool
	for _, e := range entries {
		if !e.Present || e.Depth != 0 {
			continue
		}
		kind := KindZero
		if e.Data {
			kind = KindData
		}
		for _, x := range subtract(extent.List{{Offset: e.Start, Length: e.Length}}, covered) {
			for off := x.Offset; off < x.End(); {
				n := min(x.End()-off, mergedChunkMax-off%mergedChunkMax)
				chunks = append(chunks, Chunk{Offset: off, Length: n, Kind: kind})
				off += n
				added = true
			}
		}
	}
	if added {
		slices.SortFunc(chunks, func(a, b Chunk) int { return cmpU64(a.Offset, b.Offset) })
	}
	return chunks
}

// hashMerged reads the merged image once: it fills in the SHA-256 of the
// data chunks that have none, checks the others (a mismatch is an old
// corruption, kept visible: the recorded SHA-256 stays) and returns the
// whole-disk SHA-256.
func (r *Repo) hashMerged(ctx context.Context, path string, entries []qemu.MapEntry, capacity uint64, chunks []Chunk) (string, error) {
	sink := newHashSink(chunks, true)
	sink.onChunk = func(i int, sum string) {
		switch c := &chunks[i]; {
		case c.SHA256 == "":
			c.SHA256 = sum
		case c.SHA256 != sum:
			slog.Warn("a chunk merged by prune does not match its recorded SHA-256 (it did not before either); 'sendense verify' reports it",
				"file", path, "offset", c.Offset, "expected", c.SHA256, "actual", sum)
		}
	}
	ir, err := r.openImageReader(ctx, path, false)
	if err != nil {
		return "", err
	}
	err = ir.stream(ctx, annotate(wholeSegments(entries, capacity, chunkCuts(chunks)), chunks), sink.feed)
	if cerr := ir.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("reading the merged image %s: %w", path, err)
	}
	return sink.wholeSum(), nil
}
