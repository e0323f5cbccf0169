package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
)

// vmIndex is what one VM directory holds, read once by a command: its
// files, its manifests (restore points, and those of backups a pending
// prune removes, which chains may still need), the prune journal, and
// the images checked so far. Every command reads a VM directory through
// it, and relies on an image only once check.go has checked it.
type vmIndex struct {
	vd      *vmDir
	names   map[string]fs.DirEntry // the directory's entries
	ids     []string               // ids with a manifest file (<id>.json), oldest first
	byID    map[string]*Manifest   // readable manifests, as the journal resolves them
	bad     map[string]error       // manifests that cannot be read or are not valid
	points  []*Manifest            // restore points, oldest first
	journal *journal               // a pending prune (nil: none, or not valid: jerr)
	jerr    error
	images  map[string]*checkedImage
}

// index reads the VM directory vd.
func (r *Repo) index(vd *vmDir) (*vmIndex, error) {
	entries, err := r.fs.ReadDir(vd.Path)
	if err != nil {
		return nil, fmt.Errorf("VM directory %s: %w", location(r.fs, vd.Path), err)
	}
	ix := &vmIndex{vd: vd, names: map[string]fs.DirEntry{}, byID: map[string]*Manifest{}, bad: map[string]error{},
		images: map[string]*checkedImage{}}
	for _, e := range entries {
		ix.names[e.Name()] = e
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && validID(id) && e.Type().IsRegular() {
			ix.ids = append(ix.ids, id)
		}
	}
	slices.SortFunc(ix.ids, compareIDs)
	ix.journal, ix.jerr = r.readJournal(vd.Path)
	for _, id := range ix.ids {
		m, err := r.readManifest(ix.path(id + ".json"))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// removed meanwhile
		case err != nil:
			ix.bad[id] = err
		default:
			ix.byID[id] = m
		}
	}
	if ix.journal != nil && ix.journal.Phase == phaseSwitching {
		r.resolveSwitching(ix)
		if err := ix.journalSafe(); err != nil {
			// Not what a prune writes: ignored, and never carried out.
			ix.jerr, ix.journal = &JournalError{ix.path(journalName), err}, nil
			for k := range ix.byID {
				delete(ix.byID, k)
			}
			clear(ix.bad)
			for _, id := range ix.ids {
				if m, err := r.readManifest(ix.path(id + ".json")); err == nil {
					ix.byID[id] = m
				} else if !errors.Is(err, fs.ErrNotExist) {
					ix.bad[id] = err
				}
			}
		}
	}
	for _, id := range ix.ids {
		if m := ix.byID[id]; m != nil && !ix.dropping(id) {
			ix.points = append(ix.points, m)
		}
	}
	return ix, nil
}

// readIndex takes vd's read lock (see readLock) and indexes it: what
// list, verify and restore read a VM directory through. unlock releases
// the lock.
func (r *Repo) readIndex(ctx context.Context, vd *vmDir) (ix *vmIndex, unlock func(), err error) {
	rl, err := r.readLock(ctx, vd)
	if err != nil {
		return nil, nil, err
	}
	if ix, err = r.index(vd); err != nil {
		rl.Unlock()
		return nil, nil, err
	}
	return ix, rl.Unlock, nil
}

// path is the full path of a file of the VM directory.
func (ix *vmIndex) path(name string) string { return filepath.Join(ix.vd.Path, name) }

// has says whether the directory held name when it was read.
func (ix *vmIndex) has(name string) bool { _, ok := ix.names[name]; return ok }

// dropping says whether backup id is being removed by a prune past its
// point of no return.
func (ix *vmIndex) dropping(id string) bool {
	return ix.journal != nil && ix.journal.Phase == phaseSwitching && slices.Contains(ix.journal.Drop, id)
}

// point returns restore point id (ErrNoBackup when there is none).
func (ix *vmIndex) point(id string) (*Manifest, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%q is not a backup id (YYYYMMDDTHHMMSSZ[-N]; see 'sendense list')", id)
	}
	if err := ix.bad[id]; err != nil {
		return nil, err
	}
	m := ix.byID[id]
	switch {
	case m == nil:
		return nil, fmt.Errorf("%w: backup %s of VM %s not found (manifest %s is missing; see 'sendense list')", ErrNoBackup, id, ix.vd.Name, ix.path(id+".json"))
	case ix.dropping(id):
		return nil, fmt.Errorf("%w: backup %s of VM %s is being removed by a prune (journal %s)", ErrNoBackup, id, ix.vd.Name, ix.path(journalName))
	}
	return m, nil
}

// latest is the newest restore point.
func (ix *vmIndex) latest() (*Manifest, error) {
	if len(ix.points) == 0 {
		return nil, fmt.Errorf("%w of VM %s in %s", ErrNoBackup, ix.vd.Name, ix.vd.Path)
	}
	return ix.points[len(ix.points)-1], nil
}

// manifestErrors are the manifests that cannot be read, oldest first.
func (ix *vmIndex) manifestErrors() []error {
	var errs []error
	for _, id := range ix.ids {
		if err := ix.bad[id]; err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// resolveSwitching describes the backups a prune past its point of no
// return rewrites, as they are at this instant: a disk whose new
// standalone image was renamed into place is taken from <id>.json.new,
// one whose .merging file is still there from the old manifest.
func (r *Repo) resolveSwitching(ix *vmIndex) {
	j := ix.journal
	for _, id := range j.successors() {
		nm, err := r.readManifest(ix.path(id + newSuffix))
		if errors.Is(err, fs.ErrNotExist) {
			continue // switched already: <id>.json is the new one
		}
		if err != nil {
			ix.bad[id] = fmt.Errorf("the new manifest of backup %s written by an interrupted prune cannot be used: %w", id, err)
			delete(ix.byID, id)
			continue
		}
		old := ix.byID[id]
		composed := *nm
		composed.Disks = slices.Clone(nm.Disks)
		for _, mg := range j.mergesOf(id) {
			if !ix.has(mergingName(mg.image())) {
				continue // renamed: the new record holds
			}
			var od *DiskImage
			if old != nil {
				od = old.Disk(mg.Disk)
			}
			nd := composed.Disk(mg.Disk)
			if od == nil || nd == nil {
				ix.bad[id] = fmt.Errorf("backup %s: the manifests written by an interrupted prune do not describe disk %d", id, mg.Disk)
				delete(ix.byID, id)
				break
			}
			*nd = *od
			composed.Parent = old.Parent
		}
		if ix.bad[id] != nil {
			continue
		}
		if err := composed.Validate(); err != nil {
			ix.bad[id] = &ManifestError{ix.path(id + newSuffix), err}
			delete(ix.byID, id)
			continue
		}
		ix.byID[id] = &composed
	}
}

// journalSafe checks a journal past its point of no return against the
// directory: it keeps at least one backup, and no backup it keeps needs
// one it removes, but through a disk whose standalone image is about to
// replace its chain (a .merging file and the new manifest are there).
func (ix *vmIndex) journalSafe() error {
	j := ix.journal
	kept := 0
	for _, id := range ix.ids {
		if !slices.Contains(j.Drop, id) {
			kept++
		}
	}
	if kept == 0 {
		return errors.New("it removes every backup of the VM, which a prune never does")
	}
	for _, mg := range j.Merges {
		if !ix.has(mg.Backup + ".json") {
			return fmt.Errorf("it rewrites backup %s, which has no manifest", mg.Backup)
		}
	}
	for _, id := range ix.ids {
		m := ix.byID[id]
		if m == nil || slices.Contains(j.Drop, id) || !slices.Contains(j.Drop, m.Parent) {
			continue
		}
		for _, d := range m.Disks {
			pending := ix.has(mergingName(d.Image)) && ix.has(id+newSuffix) && slices.Contains(j.Merges, journalMerge{id, d.Key})
			if d.Backing != "" && !pending {
				return fmt.Errorf("it removes backup %s, which backup %s (disk %d) needs", m.Parent, id, d.Key)
			}
		}
	}
	return nil
}
