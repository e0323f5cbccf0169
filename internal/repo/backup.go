package repo

import (
	"context"
	"errors"
	"fmt"
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
	lock   Lock

	mu   sync.Mutex
	done bool
}

// Begin starts a backup of vm: it finds or creates the VM's directory,
// takes its lock (failing at once when another backup or a prune of this
// VM runs), finishes an interrupted prune, removes the images an earlier
// crashed backup left behind, and picks the new backup's id.
//
// Parent is the latest complete backup at that moment (nil for none): use
// its disks' change_id and image (as backing) for incrementals, not what
// Latest said before Begin.
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
		if err := r.recoverLocked(ctx, vd); err != nil {
			// The points stay restorable and the backup only adds files.
			slog.Warn("could not finish an interrupted prune; continuing with the backup", "vm", vd.Name, "error", err)
		}
	}
	ms, errs := r.loadManifests(vd)
	if len(errs) > 0 {
		return nil, fmt.Errorf("cannot start a backup of VM %s: %w", vm, errors.Join(errs...))
	}
	var parent *Manifest
	latest := ""
	if len(ms) > 0 {
		parent = ms[len(ms)-1]
		latest = parent.ID
	}
	if err := r.removeOrphans(vd, latest); err != nil {
		return nil, err
	}
	// state.json records who the directory belongs to (kept current when
	// the VM is renamed, so that its new name finds it).
	if st, err := r.readState(vd.Path); err != nil {
		return nil, err
	} else if st == nil || st.VM != vm {
		if st == nil {
			st = &State{}
		}
		if err := r.writeState(vd, vm, st); err != nil {
			return nil, err
		}
	}
	id := nextID(r.now(), latest, func(id string) bool {
		if r.exists(filepath.Join(vd.Path, id+".json")) {
			return true
		}
		return len(r.glob(vd.Path, id+"-disk", ".qcow2")) > 0
	})
	ok = true
	return &Pending{ID: id, r: r, vd: vd, vm: vm, parent: parent, lock: lock}, nil
}

// removeOrphans removes images of backups newer than the latest manifest:
// a backup that crashed before its manifest was written. (Older images
// without a manifest are left alone: they may be backing files.)
func (r *Repo) removeOrphans(vd *vmDir, latest string) error {
	entries, err := r.fs.ReadDir(vd.Path)
	if err != nil {
		return err
	}
	for _, e := range entries {
		id, _, ok := parseImageName(e.Name())
		if !ok || (latest != "" && compareIDs(id, latest) <= 0) || r.exists(filepath.Join(vd.Path, id+".json")) {
			continue
		}
		path := filepath.Join(vd.Path, e.Name())
		slog.Info("removing the image of an unfinished backup", "file", location(r.fs, path))
		if err := r.fs.Remove(path); err != nil {
			return fmt.Errorf("removing %s, left by an unfinished backup: %w", path, err)
		}
	}
	return nil
}

// Parent is the latest complete backup when Begin ran, or nil.
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
	if err := p.r.fs.WriteFileAtomic(path, b, 0o600); err != nil {
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
	if err := m.Validate(); err != nil {
		return fmt.Errorf("invalid manifest: %w", err)
	}
	for i := range m.Disks {
		d := &m.Disks[i]
		if d.Image != p.RelImage(d.Key) {
			return fmt.Errorf("disk %d: image %q is not %q (use Pending.RelImage)", d.Key, d.Image, p.RelImage(d.Key))
		}
		if d.Backing != "" {
			pd := (*DiskImage)(nil)
			if p.parent != nil {
				pd = p.parent.Disk(d.Key)
			}
			if pd == nil || pd.Image != d.Backing {
				return fmt.Errorf("disk %d: backing %q is not the image of disk %d in the latest backup %s", d.Key, d.Backing, d.Key, parentID(p.parent))
			}
		}
		// The whole chain must open (qemu-img names a missing file).
		path := filepath.Join(p.vd.Path, d.Image)
		chain, err := p.r.Tools.InfoChain(ctx, path)
		if err != nil {
			return fmt.Errorf("disk %d: %w", d.Key, err)
		}
		top := chain[0]
		switch {
		case top.Format != "qcow2":
			return fmt.Errorf("disk %d: image %s is %s, not qcow2", d.Key, path, top.Format)
		case top.VirtualSize != d.Capacity:
			return fmt.Errorf("disk %d: image %s has %d bytes, the disk's capacity is %d", d.Key, path, top.VirtualSize, d.Capacity)
		case top.BackingFilename != d.Backing:
			return fmt.Errorf("disk %d: image %s has backing file %q, the manifest says %q", d.Key, path, top.BackingFilename, d.Backing)
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

// CheckImage says whether d, a disk of vm's latest backup, can be the
// backing file of the next incremental: its image and whole backing chain
// exist and open, it is the qcow2 the manifest describes (size, backing
// file) and qcow2 did not mark it corrupt. When it cannot, back that disk
// up in full, with the error as the reason.
func (r *Repo) CheckImage(vm string, d *DiskImage) error {
	ctx := context.Background()
	if d == nil {
		return errors.New("no previous image")
	}
	vd, err := r.findVM(vm)
	if err != nil {
		return err
	}
	path := filepath.Join(vd.Path, d.Image)
	if !r.exists(path) {
		return fmt.Errorf("image %s is missing", path)
	}
	chain, err := r.Tools.InfoChain(ctx, path)
	if err != nil {
		return err
	}
	top := chain[0]
	switch {
	case top.Format != "qcow2":
		return fmt.Errorf("image %s is %s, not qcow2", path, top.Format)
	case top.VirtualSize != d.Capacity:
		return fmt.Errorf("image %s has %d bytes, the manifest says %d", path, top.VirtualSize, d.Capacity)
	case top.BackingFilename != d.Backing:
		return fmt.Errorf("image %s has backing file %q, the manifest says %q", path, top.BackingFilename, d.Backing)
	}
	for _, c := range chain {
		if c.Corrupt() {
			return fmt.Errorf("qcow2 marked image %s corrupt", c.Filename)
		}
	}
	return nil
}
