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
		b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		var p object.DatastorePath
		if !p.FromString(b.FileName) || p.Datastore != Datastore {
			continue
		}
		flat := filepath.Join(l.dsDir, filepath.FromSlash(strings.TrimSuffix(p.Path, ".vmdk")+"-flat.vmdk"))
		if !strings.HasPrefix(flat, l.dsDir+string(filepath.Separator)) {
			return fmt.Errorf("disk file %q is outside the datastore", b.FileName)
		}
		capacity := uint64(vd.CapacityInBytes)
		if capacity == 0 {
			capacity = uint64(vd.CapacityInKB) * 1024
		}
		f, err := os.OpenFile(flat, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		fi, err := f.Stat()
		if err == nil && uint64(fi.Size()) < capacity {
			err = f.Truncate(int64(capacity))
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("sizing %s: %w", flat, err)
		}
		v.disks = append(v.disks, &diskTrack{key: vd.Key, fileName: b.FileName, flat: flat, capacity: capacity})
	}
	return nil
}
