package repo

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/sendense/capture/internal/qemu"
)

// OpenPointOptions select what OpenPoint opens.
type OpenPointOptions struct {
	VM     string  // VM name, moref, instance UUID or directory (required)
	Backup string  // backup id; "" = the latest
	Disks  []int32 // only these disk keys; nil = all
}

// OpenDisk is one disk of an opened restore point.
type OpenDisk struct {
	Key      int32
	Label    string
	Capacity uint64
	// Node is the disk's content as a read-only qemu block node: the
	// checked chain with every layer pinned (a local repository), or the
	// NBD export of a pinned qemu-nbd on the repository's machine reached
	// through the SSH tunnel (a remote one).
	Node map[string]any
	// URI is the NBD URI of that qemu-nbd (a remote repository only).
	URI string
}

// OpenPoint is a restore point held open for reading: its VM directory's
// read lock is held (prune cannot remove what it reads) until Close.
type OpenPoint struct {
	VM       string // VM directory
	Backup   string
	Manifest *Manifest
	Disks    []OpenDisk
	close    []func() error
}

// Close stops the servers and releases the lock.
func (p *OpenPoint) Close() error {
	var errs []error
	for i := len(p.close) - 1; i >= 0; i-- {
		errs = append(errs, p.close[i]())
	}
	p.close = nil
	return errors.Join(errs...)
}

// OpenPoint checks every disk of a restore point that opts select (each
// chain as restore checks it, check.go: every image there, its header as
// the manifests say) and holds it open for reading without copying it:
// what 'sendense mount' serves. The repository is never written. The
// data is not checked against the manifests' SHA-256s as it is read
// (verify does that).
func (r *Repo) OpenPoint(ctx context.Context, opts OpenPointOptions) (_ *OpenPoint, err error) {
	if opts.VM == "" {
		return nil, errors.New("name the VM")
	}
	vd, err := r.findVM(opts.VM)
	if err != nil {
		return nil, err
	}
	ix, unlock, err := r.readIndex(ctx, vd)
	if err != nil {
		return nil, err
	}
	p := &OpenPoint{VM: vd.Name, close: []func() error{func() error { unlock(); return nil }}}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	m, err := ix.restorePoint(opts.Backup)
	if err != nil {
		return nil, err
	}
	p.Backup, p.Manifest = m.ID, m
	disks, err := selectDisks(m, vd, opts.Disks)
	if err != nil {
		return nil, err
	}
	chains := map[int32][]layer{}
	for _, d := range disks {
		layers, err := r.chain(ctx, ix, m, d.Key, true)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("backup %s of VM %s cannot be opened: %w (run 'sendense verify %s --backup %s' for every problem)", m.ID, vd.Name, err, vd.Name, m.ID)
		}
		chains[d.Key] = layers
	}
	for _, d := range disks {
		all := paths(chains[d.Key])
		od := OpenDisk{Key: d.Key, Label: d.Label, Capacity: d.Capacity}
		if r.fs.root != nil && !r.Encrypted() {
			od.Node = qemu.PinnedNode(all...)
		} else { // remote, or encrypted: a pinned qemu-nbd (with the images' secrets) serves it
			srv, err := r.Tools.ServeNBD(ctx, all[0], qemu.ServeOptions{ReadOnly: true, Backing: all[1:]})
			if err != nil {
				return nil, fmt.Errorf("serving disk %d of backup %s of VM %s: %w", d.Key, m.ID, vd.Name, err)
			}
			p.close = append(p.close, srv.Close)
			od.URI = srv.URI()
			if od.Node, err = nbdNode(od.URI); err != nil {
				return nil, err
			}
		}
		p.Disks = append(p.Disks, od)
	}
	return p, nil
}

// nbdNode is the raw block node of the NBD export at a local
// nbd+unix:///?socket=PATH URI.
func nbdNode(uri string) (map[string]any, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "nbd+unix" || u.Query().Get("socket") == "" {
		return nil, fmt.Errorf("unexpected NBD URI %q", uri)
	}
	return map[string]any{
		"driver": "raw",
		"file": map[string]any{"driver": "nbd", "export": "",
			"server": map[string]any{"type": "unix", "path": u.Query().Get("socket")}},
	}, nil
}
