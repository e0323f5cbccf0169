package orchestrator

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/vmware/govmomi/object"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
)

// VSphereRestoreOptions control RestoreToVSphere.
type VSphereRestoreOptions struct {
	VM     string  // the VM in the repository (name, moref, UUID, directory)
	Backup string  // backup id; "" = the latest
	Disks  []int32 // only these disks; nil = all

	// A new VM (InPlace false).
	Name         string // "" = <original name>-restored
	Datastore    string // "" = the datastore of the original's first disk
	Folder       string
	ResourcePool string
	PowerOn      bool

	// InPlace writes the point back over the original VM's disks (it
	// must be powered off): only what CBT says changed since the backup,
	// else everything.
	InPlace bool
}

// VSphereRestoreDisk is one disk written.
type VSphereRestoreDisk struct {
	Key      int32  `json:"key"`      // in the backup
	Target   int32  `json:"target"`   // the written disk's key
	File     string `json:"file"`     // its backing file
	Capacity uint64 `json:"capacity"` // bytes
	// Mode is "new" (a new VM's disk: allocated extents only), "changed"
	// (in place, the areas CBT reported) or "full" (in place, everything:
	// Reason says why).
	Mode         string  `json:"mode"`
	Reason       string  `json:"reason,omitempty"`
	Changed      uint64  `json:"bytes_changed"` // in place: what CBT reported changed
	BytesWritten uint64  `json:"bytes_written"` // data written
	BytesZeroed  uint64  `json:"bytes_zeroed"`  // zeroes written
	Seconds      float64 `json:"seconds"`
}

// VSphereRestoreReport is what RestoreToVSphere did.
type VSphereRestoreReport struct {
	VM      string               `json:"vm"` // repository directory
	Backup  string               `json:"backup"`
	Target  string               `json:"target"` // the VM written
	Moref   string               `json:"moref"`
	Created bool                 `json:"created"`
	Disks   []VSphereRestoreDisk `json:"disks"`
	Seconds float64              `json:"seconds"`
}

// RestoreToVSphere writes a restore point into vSphere: into a new VM
// created with the configuration the backup recorded, or (InPlace) back
// over the original VM's disks. The point's chains are checked first
// (repo.OpenPoint) and served read-only by qemu-storage-daemon; each
// target disk is written through nbdkit and our plugin (writable) by the
// copier. A new VM's disks are new and empty: only allocated extents are
// written (thin disks stay thin). The original VM is written only with
// InPlace.
func RestoreToVSphere(ctx context.Context, s *Services, r *repo.Repo, o VSphereRestoreOptions) (*VSphereRestoreReport, error) {
	start := time.Now()
	p, err := r.OpenPoint(ctx, repo.OpenPointOptions{VM: o.VM, Backup: o.Backup, Disks: o.Disks})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	m := p.Manifest
	rep := &VSphereRestoreReport{VM: p.VM, Backup: p.Backup}

	dir, err := os.MkdirTemp(s.TempDir, "sendense-restore-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	do := qemu.DaemonOptions{}
	for _, d := range p.Disks {
		do.Exports = append(do.Exports, qemu.Export{Name: strconv.Itoa(int(d.Key)), Node: d.Node})
	}
	dmn, err := qemu.Default.StartDaemon(ctx, do)
	if err != nil {
		return nil, fmt.Errorf("serving backup %s of VM %s: %w", p.Backup, p.VM, err)
	}
	defer dmn.Close()

	type target struct {
		key    int32
		disk   cbt.Disk
		mode   string
		reason string
		areas  extent.List // "changed": what to write
	}
	var vm *cbt.VM
	var targets []target
	unlock := func() {}
	defer func() { unlock() }()
	if o.InPlace {
		vm, targets, err = func() (*cbt.VM, []target, error) {
			vm, err := s.Client.FindVM(ctx, m.VM.Moref)
			if err != nil {
				return nil, nil, fmt.Errorf("the original VM of backup %s: %w", m.ID, err)
			}
			// No backup or other job of this host on the VM meanwhile.
			lock, err := lockVM(ctx, s, vm, "in-place restore")
			if err != nil {
				return nil, nil, err
			}
			unlock = lock.Unlock
			if st, err := s.Client.PowerState(ctx, vm); err != nil {
				return nil, nil, err
			} else if st != "poweredOff" {
				return nil, nil, fmt.Errorf("VM %s is %s: power it off before an in-place restore", vm, st)
			}
			changes, err := quickRollback(ctx, s, vm, m, p.Disks)
			if err != nil {
				return nil, nil, err
			}
			var ts []target
			for _, c := range changes {
				ts = append(ts, target{key: c.key, disk: c.disk, mode: c.mode, reason: c.reason, areas: c.areas})
			}
			return vm, ts, nil
		}()
		if err != nil {
			return nil, err
		}
		rep.Target, rep.Moref = vm.Name, vm.Moref
	} else {
		cfg := m.VMConfig
		if cfg == nil {
			return nil, fmt.Errorf("backup %s of VM %s has no VM configuration (it was taken by an older sendense, or reading it failed): restore its disks with --to DIR instead", m.ID, p.VM)
		}
		co := cbt.CreateOptions{Name: o.Name, Datastore: o.Datastore, Folder: o.Folder, ResourcePool: o.ResourcePool}
		if co.Name == "" {
			co.Name = m.VM.Name + "-restored"
		}
		if co.Datastore == "" {
			var dp object.DatastorePath
			if len(m.Disks) > 0 && dp.FromString(m.Disks[0].File) {
				co.Datastore = dp.Datastore
			}
		}
		var keys []int32
		for _, d := range p.Disks {
			keys = append(keys, d.Key)
		}
		var created []cbt.CreatedDisk
		vm, created, err = s.Client.CreateVM(ctx, cfg, keys, co)
		if vm != nil {
			rep.Target, rep.Moref, rep.Created = vm.Name, vm.Moref, true
		}
		if err != nil {
			if vm != nil {
				err = fmt.Errorf("%w (the new VM %s is left as it is: remove it)", err, vm)
			}
			return rep, err
		}
		for _, c := range created {
			targets = append(targets, target{key: c.From, disk: c.Disk, mode: "new"})
		}
	}

	cfg := s.Config
	host, port := s.Cred.HostPort()
	for _, t := range targets {
		ts := time.Now()
		d := VSphereRestoreDisk{Key: t.key, Target: t.disk.Key, File: t.disk.FileName, Capacity: t.disk.Capacity, Mode: t.mode, Reason: t.reason}
		opts := copier.Options{Limiter: s.Limiter}
		switch t.mode {
		case "new":
			opts.DestinationIsZero = true
		case "changed":
			d.Changed = t.areas.Bytes()
			opts.Skip = complement(t.areas, t.disk.Capacity)
		}
		if len(opts.Skip) == 1 && opts.Skip[0].Length == t.disk.Capacity {
			// Nothing changed: nothing to write.
			d.Seconds = time.Since(ts).Seconds()
			rep.Disks = append(rep.Disks, d)
			continue
		}
		n, err := StartNBDKit(ctx, PluginSource{
			Plugin: s.Plugin, Libdir: cfg.VDDK.Libdir, Server: host, Port: port, User: s.Cred.User,
			Password: s.Cred.Password, Thumbprint: s.Cred.Thumbprint, VM: vm.Moref, File: t.disk.FileName,
			Transports: cfg.VDDK.Transports, VDDKConfig: cfg.VDDK.Config, Verbose: s.Verbose, Writable: true,
		}, dir, "disk"+strconv.Itoa(int(t.disk.Key)))
		if err != nil {
			return rep, fmt.Errorf("disk %d of VM %s: %w", t.disk.Key, vm, err)
		}
		res, err := copyURIs(ctx, dmn.URI(strconv.Itoa(int(t.key))), n.URI(), opts)
		if err != nil {
			err = n.Explain(err)
		}
		n.Stop()
		if err != nil {
			return rep, fmt.Errorf("writing disk %d of backup %s to disk %d of VM %s: %w", t.key, m.ID, t.disk.Key, vm, err)
		}
		d.BytesWritten, d.BytesZeroed, d.Seconds = res.BytesWritten, res.BytesZeroed, time.Since(ts).Seconds()
		rep.Disks = append(rep.Disks, d)
	}
	if o.PowerOn {
		if err := s.Client.PowerOn(ctx, vm); err != nil {
			return rep, err
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// complement is [0, size) without l.
func complement(l extent.List, size uint64) extent.List {
	var out []extent.Extent
	var at uint64
	for _, e := range l {
		if e.Offset > at {
			out = append(out, extent.Extent{Offset: at, Length: e.Offset - at})
		}
		at = max(at, e.End())
	}
	if at < size {
		out = append(out, extent.Extent{Offset: at, Length: size - at})
	}
	return extent.Normalize(out)
}

// rollbackDisk is what an in-place restore writes to one disk.
type rollbackDisk struct {
	key    int32
	disk   cbt.Disk
	mode   string // "changed" or "full"
	reason string
	areas  extent.List
}

// quickRollback asks CBT, through a snapshot of the powered-off VM taken
// and removed here, what changed on each disk since the backup's
// changeId. A disk CBT cannot answer for (off, reset, another disk) is
// written whole, with the reason.
func quickRollback(ctx context.Context, s *Services, vm *cbt.VM, m *repo.Manifest, disks []repo.OpenDisk) (out []rollbackDisk, err error) {
	cur, err := s.Client.Disks(ctx, vm, "")
	if err != nil {
		return nil, err
	}
	for _, od := range disks {
		i := slices.IndexFunc(cur, func(d cbt.Disk) bool { return d.Key == od.Key })
		if i < 0 {
			return nil, fmt.Errorf("VM %s has no disk %d any more: restore to a new VM (--to-vsphere without --in-place)", vm, od.Key)
		}
		if cur[i].Capacity != od.Capacity {
			return nil, fmt.Errorf("disk %d of VM %s is %d bytes, the backup's %d: restore to a new VM (--to-vsphere without --in-place)", od.Key, vm, cur[i].Capacity, od.Capacity)
		}
		out = append(out, rollbackDisk{key: od.Key, disk: cur[i], mode: "full"})
	}
	desc := "Sendense capture in-place restore; removed when it ends"
	if o, err := cbt.NewSnapshotOwner("restore", time.Now()); err == nil {
		desc = o.Description()
	}
	snap, err := s.Client.CreateSnapshot(ctx, vm, "sendense-restore", desc, false, false)
	if err != nil {
		for i := range out {
			out[i].reason = fmt.Sprintf("no snapshot to ask CBT with: %v", err)
		}
		return out, nil
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotRemoveTimeout)
		defer cancel()
		if rerr := s.Client.RemoveSnapshot(rctx, snap); rerr != nil && err == nil {
			err = fmt.Errorf("removing the snapshot %s of VM %s: %w; nothing was written", snap, vm, rerr)
		}
	}()
	for i := range out {
		d := m.Disk(out[i].key)
		switch {
		case d.ChangeID == "" || d.ChangeID == "*":
			out[i].reason = "the backup recorded no changeId for the disk"
			continue
		case d.UUID != "" && out[i].disk.UUID != "" && d.UUID != out[i].disk.UUID:
			out[i].reason = "the disk's UUID is not the backup's (another disk)"
			continue
		}
		areas, qerr := s.Client.ChangedAreas(ctx, vm, snap, out[i].key, d.ChangeID)
		if qerr != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			out[i].reason = fmt.Sprintf("CBT cannot say what changed since the backup: %v", qerr)
			continue
		}
		out[i].mode, out[i].areas = "changed", areas.List
	}
	return out, err
}
