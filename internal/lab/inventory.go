package lab

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	scsiKey     = 1000
	firstDisk   = 2000
	datacenter  = "DC0"
	diskVersion = "vmx-19"
)

// buildInventory creates the datastore and the VMs through the in-process
// client, sizes and fills their disks and registers them with the tracker.
func (l *Lab) buildInventory(ctx context.Context, vc *vim25.Client) error {
	finder := find.NewFinder(vc, false)
	dc, err := finder.Datacenter(ctx, datacenter)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	finder.SetDatacenter(dc)
	hosts, err := finder.HostSystemList(ctx, "*/*")
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, h := range hosts {
		dss, err := h.ConfigManager().DatastoreSystem(ctx)
		if err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		if _, err := dss.CreateLocalDatastore(ctx, Datastore, l.dsDir); err != nil {
			return fmt.Errorf("lab: creating datastore %s: %w", Datastore, err)
		}
	}
	ds, err := finder.Datastore(ctx, Datastore)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	pool, err := finder.DefaultResourcePool(ctx)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, spec := range l.opts.VMs {
		if err := l.createVM(ctx, vc, spec, folders.VmFolder, pool, ds); err != nil {
			return err
		}
	}
	return nil
}

func folderFor(ctx context.Context, vc *vim25.Client, root *object.Folder, rel string) (*object.Folder, error) {
	f := root
	for _, name := range strings.Split(strings.Trim(rel, "/"), "/") {
		if name == "" {
			continue
		}
		children, err := f.Children(ctx)
		if err != nil {
			return nil, err
		}
		var next *object.Folder
		for _, c := range children {
			if cf, ok := c.(*object.Folder); ok {
				n, err := cf.ObjectName(ctx)
				if err == nil && n == name {
					next = cf
					break
				}
			}
		}
		if next == nil {
			if next, err = f.CreateFolder(ctx, name); err != nil {
				return nil, err
			}
		}
		f = next
	}
	return f, nil
}

func (l *Lab) createVM(ctx context.Context, vc *vim25.Client, spec VMSpec, vmFolder *object.Folder,
	pool *object.ResourcePool, ds *object.Datastore) error {

	if spec.Name == "" {
		return fmt.Errorf("lab: a VM needs a name")
	}
	dir := spec.Dir
	if dir == "" {
		dir = spec.Name
	}
	folder, err := folderFor(ctx, vc, vmFolder, spec.Folder)
	if err != nil {
		return fmt.Errorf("lab: folder %q: %w", spec.Folder, err)
	}
	dsRef := ds.Reference()
	scsi := &types.ParaVirtualSCSIController{VirtualSCSIController: types.VirtualSCSIController{
		VirtualController: types.VirtualController{
			VirtualDevice: types.VirtualDevice{Key: scsiKey},
			BusNumber:     0,
		},
		SharedBus:          types.VirtualSCSISharingNoSharing,
		ScsiCtlrUnitNumber: 7,
	}}
	changes := []types.BaseVirtualDeviceConfigSpec{&types.VirtualDeviceConfigSpec{
		Operation: types.VirtualDeviceConfigSpecOperationAdd,
		Device:    scsi,
	}}
	for i, d := range spec.Disks {
		if d.Capacity == 0 || d.Capacity%MiB != 0 {
			return fmt.Errorf("lab: VM %s disk %d: capacity %d is not a positive multiple of 1 MiB", spec.Name, i+1, d.Capacity)
		}
		unit := int32(i)
		if unit >= 7 {
			unit++ // 7 is the controller's
		}
		disk := &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key:           int32(firstDisk + i),
				ControllerKey: scsiKey,
				UnitNumber:    &unit,
				DeviceInfo:    &types.Description{Label: fmt.Sprintf("Hard disk %d", i+1), Summary: fmt.Sprintf("%d KB", d.Capacity/1024)},
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
						FileName:  fmt.Sprintf("[%s] %s/disk%d.vmdk", Datastore, dir, i+1),
						Datastore: &dsRef,
					},
					DiskMode:        string(types.VirtualDiskModePersistent),
					ThinProvisioned: types.NewBool(true),
				},
			},
			CapacityInKB:    int64(d.Capacity / 1024),
			CapacityInBytes: int64(d.Capacity),
		}
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation:     types.VirtualDeviceConfigSpecOperationAdd,
			FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate,
			Device:        disk,
		})
	}
	cfg := types.VirtualMachineConfigSpec{
		Name:                  spec.Name,
		GuestId:               string(types.VirtualMachineGuestOsIdentifierOtherGuest64),
		NumCPUs:               1,
		MemoryMB:              512,
		Version:               diskVersion,
		Files:                 &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s] %s/%s.vmx", Datastore, dir, spec.Name)},
		ChangeTrackingEnabled: types.NewBool(spec.CBT),
		DeviceChange:          changes,
	}
	if err := os.MkdirAll(filepath.Join(l.dsDir, dir), 0o755); err != nil {
		return err
	}
	task, err := folder.CreateVM(ctx, cfg, pool, nil)
	if err != nil {
		return fmt.Errorf("lab: creating VM %s: %w", spec.Name, err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return fmt.Errorf("lab: creating VM %s: %w", spec.Name, err)
	}
	ref := info.Result.(types.ManagedObjectReference)
	if spec.PowerOn {
		task, err := object.NewVirtualMachine(vc, ref).PowerOn(ctx)
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			return fmt.Errorf("lab: powering on VM %s: %w", spec.Name, err)
		}
	}
	return l.register(spec, ref, folder)
}

// register sizes and fills the VM's flat files and adds the VM to the tracker.
func (l *Lab) register(spec VMSpec, ref types.ManagedObjectReference, folder *object.Folder) error {
	vm, ok := l.model.Map().Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return fmt.Errorf("lab: VM %s (%s) not found in the simulator", spec.Name, ref.Value)
	}
	v := &vmTrack{ref: ref, name: spec.Name, path: l.inventoryPath(folder.Reference(), spec.Name)}
	for _, dev := range vm.Config.Hardware.Device {
		vd, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		d, file, err := l.diskOf(vd)
		switch {
		case err != nil:
			return fmt.Errorf("lab: %w", err)
		case d == nil && file != "":
			return fmt.Errorf("lab: unexpected disk file %q", file)
		case d == nil:
			continue
		}
		i := int(vd.Key - firstDisk)
		if i < 0 || i >= len(spec.Disks) {
			return fmt.Errorf("lab: VM %s: unexpected disk key %d", spec.Name, vd.Key)
		}
		if err := os.Truncate(d.flat, int64(d.capacity)); err != nil {
			return fmt.Errorf("lab: sizing %s: %w", d.flat, err)
		}
		if err := fillInitialData(d.flat, d.capacity, spec.Disks[i].Data, spec.Disks[i].Seed); err != nil {
			return fmt.Errorf("lab: writing the initial data of %s: %w", d.flat, err)
		}
		v.disks = append(v.disks, d)
	}
	if len(v.disks) != len(spec.Disks) {
		return fmt.Errorf("lab: VM %s has %d disks, want %d", spec.Name, len(v.disks), len(spec.Disks))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.vms[ref.Value] = v
	l.t.setEnabled(v, vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled)
	return nil
}

// inventoryPath builds "/DC0/vm/<folders>/<name>" from the simulator's registry.
func (l *Lab) inventoryPath(folder types.ManagedObjectReference, name string) string {
	parts := []string{name}
	ref := folder
	root := l.model.Map().Get(l.model.ServiceContent.RootFolder.Reference())
	for i := 0; i < 64; i++ {
		obj := l.model.Map().Get(ref)
		if obj == nil || obj == root {
			break
		}
		e, ok := obj.(interface{ Entity() *mo.ManagedEntity })
		if !ok {
			break
		}
		me := e.Entity()
		parts = append(parts, me.Name)
		if me.Parent == nil {
			break
		}
		ref = *me.Parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return path.Join(append([]string{"/"}, parts...)...)
}
