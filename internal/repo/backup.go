package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
)

// Pending is a backup being written: it holds the VM directory's writer
// lock until Commit or Abort.
type Pending struct {
	// ID is the new backup's id.
	ID string

	r      *Repo
	vd     *vmDir
	vm     VMRef
	parent *Manifest
	ix     *vmIndex
	lock   Lock
	bases  map[int32][]string // disk key → the checked chain of the parent's image (CheckBase)

	mu   sync.Mutex
	done bool
}

// Begin starts a backup of vm: it finds or creates the VM's directory,
// takes its lock (failing at once when another backup or a prune of this
// VM runs), finishes an interrupted prune, removes leftovers (the images
// an earlier crashed backup left behind, temporary files) and picks the
// new backup's id.
//
// Parent is the newest restore point whose manifest is valid at that
// moment (nil for none): use its disks' change_id and image (as backing)
// for incrementals, once CheckBase says that image can be a base. A
// corrupt newer manifest does not stop the backup; the new id is later
// than every manifest's.
func (r *Repo) Begin(vm VMRef) (*Pending, error) {
	ctx := context.Background()
	vd, err := r.dirFor(vm)
	if err != nil {
		return nil, err
	}
	lock, err := r.lockWriter(vd.Path, "backup")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			lock.Unlock()
		}
	}()
	if r.exists(filepath.Join(vd.Path, journalName)) {
		if err := r.recoverLocked(ctx, vd, false); err != nil {
			// Every point restores and the backup only adds files.
			slog.Warn("could not finish an interrupted prune; continuing with the backup", "vm", vd.Name, "error", err)
		}
	}
	ix, err := r.index(vd)
	if err != nil {
		return nil, err
	}
	for _, e := range ix.manifestErrors() {
		slog.Warn("a manifest of the VM cannot be read; its backup is not used as a base", "vm", vd.Name, "error", e)
	}
	var parent *Manifest
	if len(ix.points) > 0 {
		parent = ix.points[len(ix.points)-1]
	}
	latest := ""
	if len(ix.ids) > 0 {
		latest = ix.ids[len(ix.ids)-1]
	}
	for _, l := range r.leftovers(ix) {
		slog.Info("removing a leftover", "file", l.File, "kind", l.Kind)
		if err := r.fs.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing %s (%s): %w", l.File, l.Message, err)
		}
	}
	// state.json records who the directory belongs to (kept current when
	// the VM is renamed, so that its new name finds it, and the old one
	// too).
	if st, err := r.readState(vd.Path); err != nil {
		return nil, err
	} else if st == nil || st.VM != vm {
		if st == nil {
			st = &State{}
		}
		if old := st.VM.Name; old != "" && old != vm.Name && !slices.Contains(st.EarlierNames, old) {
			st.EarlierNames = append(st.EarlierNames, old)
		}
		if err := r.writeState(vd, vm, st); err != nil {
			return nil, r.asReadOnly(err)
		}
	}
	id := nextID(r.now(), latest, func(id string) bool {
		return ix.has(id+".json") || len(r.glob(vd.Path, id+"-disk", ".qcow2")) > 0
	})
	ok = true
	return &Pending{ID: id, r: r, vd: vd, vm: vm, parent: parent, ix: ix, lock: lock, bases: map[int32][]string{}}, nil
}

// CheckBase says whether the parent's image of disk key can be the
// backing file of this backup's incremental: its whole chain passes the
// repository's check (check.go). When it cannot, back that disk up in
// full, with the error as the reason (the damaged point stays as it is,
// and verify reports it).
func (p *Pending) CheckBase(ctx context.Context, key int32) error {
	if p.parent == nil || p.parent.Disk(key) == nil {
		return errors.New("the previous backup has no image of this disk")
	}
	layers, err := p.r.chain(ctx, p.ix, p.parent, key, true)
	if err != nil {
		return err
	}
	p.bases[key] = paths(layers)
	return nil
}

// Backing is the chain below the image of disk key — the parent's
// checked chain for an incremental (CheckBase), none for a full — to open
// the new image through (qemu.ServeOptions.Backing): never the files its
// header names.
func (p *Pending) Backing(key int32) []string {
	if b := p.bases[key]; b != nil {
		return b
	}
	return []string{}
}

// Parent is the newest valid restore point when Begin ran, or nil.
func (p *Pending) Parent() *Manifest { return p.parent }

// Dir is the VM directory.
func (p *Pending) Dir() string { return p.vd.Path }

// VMDir is the VM directory's name.
func (p *Pending) VMDir() string { return p.vd.Name }

// RelImage is the file name of disk key's image: what the manifest records
// as image, and what the next incremental records as backing.
func (p *Pending) RelImage(key int32) string { return ImageName(p.ID, key) }

// ImagePath is the path at which to create disk key's image.
func (p *Pending) ImagePath(key int32) string { return filepath.Join(p.vd.Path, p.RelImage(key)) }

// Commit validates m and writes it as the backup's manifest (temporary
// file, fsync, rename, fsync of the directory), then releases the lock.
// Call it only after every image is flushed and closed. It fills in
// Format, Version, ID, Status, VM (when empty) and Parent (when empty).
// Validation: every disk has its image (RelImage), an existing qcow2 of
// the disk's capacity, whose backing file is the one recorded and whose
// chain opens; an incremental's backing is the parent's image of the same
// disk. On a validation error nothing is written and the backup stays
// pending: fix and Commit again, or Abort.
func (p *Pending) Commit(m *Manifest) error {
	ctx := context.Background()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return errors.New("backup " + p.ID + " is already committed or aborted")
	}
	m.Format, m.Version, m.Status = ManifestFormat, ManifestVersion, StatusComplete
	if m.ID == "" {
		m.ID = p.ID
	}
	if m.VM == (VMRef{}) {
		m.VM = p.vm
	}
	if m.Parent == "" && p.parent != nil {
		m.Parent = p.parent.ID
	}
	if err := p.validate(ctx, m); err != nil {
		return fmt.Errorf("backup %s of VM %s: %w", p.ID, p.vm, err)
	}
	// A remote lock whose holder lost its connection for longer than its
	// lease may have been taken by someone else meanwhile.
	if le, ok := p.lock.(lockErr); ok {
		if err := le.Err(); err != nil {
			return fmt.Errorf("backup %s of VM %s: the VM directory's lock was lost (%w): the backup is not committed", p.ID, p.vm, err)
		}
	}
	b, err := encodeManifest(m)
	if err != nil {
		return err
	}
	path := filepath.Join(p.vd.Path, p.ID+".json")
	if err := p.r.writeMeta(path, manifestAD(m.ID), b); err != nil {
		return fmt.Errorf("writing manifest %s: %w", path, err)
	}
	p.done = true
	p.lock.Unlock()
	return nil
}

func (p *Pending) validate(ctx context.Context, m *Manifest) error {
	if m.ID != p.ID {
		return fmt.Errorf("the manifest's id %q is not the pending backup's id %q", m.ID, p.ID)
	}
	if (p.parent == nil && m.Parent != "") || (p.parent != nil && m.Parent != p.parent.ID) {
		return fmt.Errorf("the manifest's parent %q is not the latest backup %q", m.Parent, parentID(p.parent))
	}
	for i := range m.Disks {
		if d := &m.Disks[i]; d.Image != p.RelImage(d.Key) {
			return fmt.Errorf("disk %d: image %q is not %q (use Pending.RelImage)", d.Key, d.Image, p.RelImage(d.Key))
		}
	}
	if err := m.Validate(); err != nil {
		return fmt.Errorf("invalid manifest: %w", err)
	}
	for i := range m.Disks {
		d := &m.Disks[i]
		if d.Backing != "" {
			pd := (*DiskImage)(nil)
			if p.parent != nil {
				pd = p.parent.Disk(d.Key)
			}
			if pd == nil || pd.Image != d.Backing {
				return fmt.Errorf("disk %d: backing %q is not the image of disk %d in the latest backup %s", d.Key, d.Backing, d.Key, parentID(p.parent))
			}
		}
	}
	// Every image, and the chain it needs, passes the repository's check.
	ix := p.ix
	ix.byID[m.ID] = m
	defer delete(ix.byID, m.ID)
	for _, key := range sortedKeys(m) {
		delete(ix.images, m.Disk(key).Image) // written since Begin
		if _, err := p.r.chain(ctx, ix, m, key, true); err != nil {
			return err
		}
	}
	return nil
}

func parentID(m *Manifest) string {
	if m == nil {
		return "(none)"
	}
	return m.ID
}

// Abort removes this backup's images and releases the lock; everything
// else stays. Calling it after Commit does nothing.
func (p *Pending) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return nil
	}
	p.done = true
	defer p.lock.Unlock()
	var errs []error
	for _, name := range p.r.glob(p.vd.Path, p.ID+"-disk", ".qcow2") {
		if id, _, ok := parseImageName(name); !ok || id != p.ID {
			continue
		}
		if err := p.r.fs.Remove(filepath.Join(p.vd.Path, name)); err != nil {
			errs = append(errs, err)
		}
	}
	p.r.fs.SyncDir(p.vd.Path)
	return errors.Join(errs...)
}

// WriteState replaces the VM's state (see Repo.WriteState) while the
// backup holds the lock.
func (p *Pending) WriteState(st *State) error { return p.r.writeState(p.vd, p.vm, st) }

// ReadState returns the VM's state (an empty one when there is none).
func (p *Pending) ReadState() (*State, error) { return p.r.stateOf(p.vd) }

// sortedKeys returns the disk keys of m in order.
func sortedKeys(m *Manifest) []int32 {
	keys := make([]int32, 0, len(m.Disks))
	for _, d := range m.Disks {
		keys = append(keys, d.Key)
	}
	slices.Sort(keys)
	return keys
}
