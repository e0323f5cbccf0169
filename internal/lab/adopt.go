package lab

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// adoptNew gives every VM created through the API since the lab started
// (restore --to-vsphere) what the lab's own VMs have: each disk's flat
// file on the lab's datastore, sized to the disk's capacity (vcsim makes
// it empty), which the fake VDDK reads and writes, and change tracking.
// It runs before every method call (handle) for a minute after each
// call that can add VMs or disks, so a VM is adopted before its
// creator's next call, whatever it is; other calls cost nothing.
func (l *Lab) adoptNew(ctx *simulator.Context, method string) {
	if !l.ready.Load() {
		return
	}
	switch method {
	case "CreateVM_Task", "CloneVM_Task", "ReconfigVM_Task", "RegisterVM_Task":
		l.adoptUntil.Store(time.Now().Add(time.Minute).UnixNano())
		return
	}
	if time.Now().UnixNano() > l.adoptUntil.Load() {
		return
	}
	for _, e := range ctx.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok || vm.Config == nil {
			continue
		}
		l.mu.Lock()
		v := l.t.vms[vm.Self.Value]
		if v == nil {
			v = &vmTrack{ref: vm.Self, name: vm.Name, path: vm.Name}
		}
		n := len(v.disks)
		if err := l.adopt(vm, v); err != nil {
			slog.Error("lab: adopting the disks of a new VM", "vm", vm.Name, "err", err)
		}
		if len(v.disks) > n && l.t.vms[vm.Self.Value] == nil {
			l.t.vms[vm.Self.Value] = v
			l.t.setEnabled(v, vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled)
		}
		l.mu.Unlock()
	}
}

// diskOf is the track of vd when it is a flat disk of the lab's
// datastore: its flat file and capacity. It is nil for another kind of
// disk, and nil with file set for a flat disk elsewhere.
func (l *Lab) diskOf(vd *types.VirtualDisk) (d *diskTrack, file string, err error) {
	b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		return nil, "", nil
	}
	var p object.DatastorePath
	if !p.FromString(b.FileName) || p.Datastore != Datastore {
		return nil, b.FileName, nil
	}
	flat := filepath.Join(l.dsDir, filepath.FromSlash(strings.TrimSuffix(p.Path, ".vmdk")+"-flat.vmdk"))
	if !strings.HasPrefix(flat, l.dsDir+string(filepath.Separator)) {
		return nil, b.FileName, fmt.Errorf("disk file %q is outside the datastore", b.FileName)
	}
	d = &diskTrack{key: vd.Key, fileName: b.FileName, flat: flat, capacity: uint64(vd.CapacityInBytes)}
	if d.capacity == 0 {
		d.capacity = uint64(vd.CapacityInKB) * 1024
	}
	return d, b.FileName, nil
}

// adopt adds to v the disks of vm on the lab's datastore it does not
// track yet, sizing their flat files. vm is still being created when
// its first disks are there (vcsim registers it first): later calls add
// the others.
func (l *Lab) adopt(vm *simulator.VirtualMachine, v *vmTrack) error {
	for _, dev := range vm.Config.Hardware.Device {
		vd, ok := dev.(*types.VirtualDisk)
		if !ok || v.disk(vd.Key) != nil {
			continue
		}
		d, _, err := l.diskOf(vd)
		if err != nil {
			return err
		}
		if d == nil {
			continue
		}
		f, err := os.OpenFile(d.flat, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		fi, err := f.Stat()
		if err == nil && uint64(fi.Size()) < d.capacity {
			err = f.Truncate(int64(d.capacity))
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("sizing %s: %w", d.flat, err)
		}
		v.disks = append(v.disks, d)
	}
	return nil
}
