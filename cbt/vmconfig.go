package cbt

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/capture/internal/vmconfig"
)

// VMConfig reads the virtual hardware of snapshot (moref) of vm: what a
// backup records in its manifest.
func (c *Client) VMConfig(ctx context.Context, vm *VM, snapshot string) (*vmconfig.Config, error) {
	ref := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snapshot}
	var s mo.VirtualMachineSnapshot
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, []string{"config", "vm"}, &s); err != nil {
		return nil, fmt.Errorf("reading the configuration of snapshot %s of VM %s: %w", snapshot, vm, err)
	}
	if s.Vm.Value != vm.Moref {
		return nil, fmt.Errorf("snapshot %s belongs to VM %s, not to %s", snapshot, s.Vm.Value, vm)
	}
	return configOf(&s.Config), nil
}

// configOf converts vSphere's configuration.
func configOf(ci *types.VirtualMachineConfigInfo) *vmconfig.Config {
	cfg := &vmconfig.Config{
		CPUs: ci.Hardware.NumCPU, MemoryMB: int64(ci.Hardware.MemoryMB),
		Firmware: ci.Firmware, GuestID: ci.GuestId, HardwareVersion: ci.Version,
	}
	if n := ci.Hardware.NumCoresPerSocket; n != nil {
		cfg.CoresPerSocket = *n
	}
	if cfg.Firmware == "" {
		cfg.Firmware = "bios"
	}
	for _, dev := range ci.Hardware.Device {
		d := dev.GetVirtualDevice()
		if t := controllerType(dev); t != "" {
			cfg.Controllers = append(cfg.Controllers, vmconfig.Controller{Key: d.Key, Type: t, Bus: dev.(types.BaseVirtualController).GetVirtualController().BusNumber})
			continue
		}
		switch x := dev.(type) {
		case *types.VirtualDisk:
			vd := vmconfig.Disk{Key: d.Key, Controller: d.ControllerKey, Capacity: uint64(x.CapacityInKB) * 1024, Provisioning: "thick-lazy"}
			if x.CapacityInBytes > 0 {
				vd.Capacity = uint64(x.CapacityInBytes)
			}
			if d.UnitNumber != nil {
				vd.Unit = *d.UnitNumber
			}
			if d.DeviceInfo != nil {
				vd.Label = d.DeviceInfo.GetDescription().Label
			}
			if b, ok := x.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				switch {
				case b.ThinProvisioned != nil && *b.ThinProvisioned:
					vd.Provisioning = "thin"
				case b.EagerlyScrub != nil && *b.EagerlyScrub:
					vd.Provisioning = "thick-eager"
				}
			}
			cfg.Disks = append(cfg.Disks, vd)
		case types.BaseVirtualEthernetCard:
			e := x.GetVirtualEthernetCard()
			n := vmconfig.NIC{Key: d.Key, Type: nicType(dev), MACPolicy: strings.ToLower(e.AddressType), MAC: e.MacAddress}
			switch b := d.Backing.(type) {
			case *types.VirtualEthernetCardNetworkBackingInfo:
				n.Network = b.DeviceName
			case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
				n.Network = "dvportgroup:" + b.Port.PortgroupKey
			}
			if n.MACPolicy == "" {
				n.MACPolicy = "generated"
			}
			if n.Type != "" {
				cfg.NICs = append(cfg.NICs, n)
			}
		}
	}
	return cfg
}

func controllerType(dev types.BaseVirtualDevice) string {
	switch dev.(type) {
	case *types.ParaVirtualSCSIController:
		return "pvscsi"
	case *types.VirtualLsiLogicController:
		return "lsilogic"
	case *types.VirtualLsiLogicSASController:
		return "lsilogic-sas"
	case *types.VirtualBusLogicController:
		return "buslogic"
	case *types.VirtualIDEController:
		return "ide"
	case *types.VirtualAHCIController:
		return "sata"
	case *types.VirtualNVMEController:
		return "nvme"
	}
	return ""
}

func nicType(dev types.BaseVirtualDevice) string {
	switch dev.(type) {
	case *types.VirtualVmxnet3:
		return "vmxnet3"
	case *types.VirtualVmxnet2:
		return "vmxnet2"
	case *types.VirtualE1000:
		return "e1000"
	case *types.VirtualE1000e:
		return "e1000e"
	case *types.VirtualPCNet32:
		return "pcnet32"
	case *types.VirtualSriovEthernetCard:
		return "sriov"
	}
	return ""
}

// newController is a controller device of type t.
func newController(t string, key, bus int32) types.BaseVirtualDevice {
	vc := types.VirtualController{VirtualDevice: types.VirtualDevice{Key: key}, BusNumber: bus}
	scsi := types.VirtualSCSIController{VirtualController: vc, SharedBus: types.VirtualSCSISharingNoSharing}
	switch t {
	case "pvscsi":
		return &types.ParaVirtualSCSIController{VirtualSCSIController: scsi}
	case "lsilogic":
		return &types.VirtualLsiLogicController{VirtualSCSIController: scsi}
	case "lsilogic-sas":
		return &types.VirtualLsiLogicSASController{VirtualSCSIController: scsi}
	case "buslogic":
		return &types.VirtualBusLogicController{VirtualSCSIController: scsi}
	case "ide":
		return &types.VirtualIDEController{VirtualController: vc}
	case "sata":
		return &types.VirtualAHCIController{VirtualSATAController: types.VirtualSATAController{VirtualController: vc}}
	case "nvme":
		return &types.VirtualNVMEController{VirtualController: vc}
	}
	return nil
}

func newNIC(t string, card types.VirtualEthernetCard) types.BaseVirtualDevice {
	switch t {
	case "vmxnet3":
		return &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: card}}
	case "vmxnet2":
		return &types.VirtualVmxnet2{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: card}}
	case "e1000":
		return &types.VirtualE1000{VirtualEthernetCard: card}
	case "e1000e":
		return &types.VirtualE1000e{VirtualEthernetCard: card}
	case "pcnet32":
		return &types.VirtualPCNet32{VirtualEthernetCard: card}
	}
	return nil
}

// CreateOptions say where CreateVM puts the new VM.
type CreateOptions struct {
	Name         string // required; no VM of that name may exist
	Datastore    string // required: the datastore of the VM's files and disks
	Folder       string // inventory path of a VM folder ("": the datacenter's)
	ResourcePool string // inventory path ("": the default one)
}

// CreatedDisk is a disk of a new VM, by the key it had in the
// configuration it was created from.
type CreatedDisk struct {
	From int32 // key in the configuration
	Disk
}

// CreateVM creates a new VM with the virtual hardware of cfg (only the
// disks in keys), powered off, each disk new and empty. NICs get
// generated MAC addresses (the original VM may still use its own). It
// returns the VM and its disks.
func (c *Client) CreateVM(ctx context.Context, cfg *vmconfig.Config, keys []int32, opts CreateOptions) (*VM, []CreatedDisk, error) {
	if opts.Name == "" || opts.Datastore == "" {
		return nil, nil, errors.New("create VM: the name and the datastore are needed")
	}
	if _, err := c.vmByName(ctx, opts.Name); err == nil || !errors.Is(err, ErrNotFound) {
		if err == nil {
			return nil, nil, fmt.Errorf("a VM named %q exists: choose another name with --name", opts.Name)
		}
		return nil, nil, err
	}
	finder := find.NewFinder(c.vc, false)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("create VM: %w", err)
	}
	finder.SetDatacenter(dc)
	ds, err := finder.Datastore(ctx, opts.Datastore)
	if err != nil {
		return nil, nil, fmt.Errorf("datastore %q (--datastore): %w", opts.Datastore, err)
	}
	var folder *object.Folder
	if opts.Folder != "" {
		folder, err = finder.Folder(ctx, opts.Folder)
	} else {
		var fs *object.DatacenterFolders
		if fs, err = dc.Folders(ctx); err == nil {
			folder = fs.VmFolder
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("folder %q (--folder): %w", opts.Folder, err)
	}
	var pool *object.ResourcePool
	if opts.ResourcePool != "" {
		pool, err = finder.ResourcePool(ctx, opts.ResourcePool)
	} else {
		pool, err = finder.DefaultResourcePool(ctx)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("resource pool %q (--resource-pool): %w", opts.ResourcePool, err)
	}
	dsRef := ds.Reference()

	// New devices get negative (temporary) keys; disks are found again
	// by controller and unit.
	var changes []types.BaseVirtualDeviceConfigSpec
	add := func(dev types.BaseVirtualDevice, create bool) {
		s := &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: dev}
		if create {
			s.FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
		changes = append(changes, s)
	}
	ctrlKey := map[int32]int32{}
	ctrlOf := map[int32]vmconfig.Controller{}
	for i, k := range cfg.Controllers {
		ctrlKey[k.Key] = int32(-100 - i)
		ctrlOf[k.Key] = k
		add(newController(k.Type, ctrlKey[k.Key], k.Bus), false)
	}
	type slot struct {
		typ      string
		bus, unt int32
	}
	want := map[slot]int32{}
	for i, d := range cfg.Disks {
		found := false
		for _, k := range keys {
			found = found || k == d.Key
		}
		if !found {
			continue
		}
		unit := d.Unit
		b := &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: fmt.Sprintf("[%s]", opts.Datastore), Datastore: &dsRef},
			DiskMode:                     string(types.VirtualDiskModePersistent),
			ThinProvisioned:              types.NewBool(d.Provisioning == "thin"),
		}
		if d.Provisioning == "thick-eager" {
			b.EagerlyScrub = types.NewBool(true)
		}
		add(&types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{Key: int32(-200 - i), ControllerKey: ctrlKey[d.Controller], UnitNumber: &unit, Backing: b},
			CapacityInKB:  int64((d.Capacity + 1023) / 1024), CapacityInBytes: int64(d.Capacity),
		}, true)
		c := ctrlOf[d.Controller]
		want[slot{c.Type, c.Bus, d.Unit}] = d.Key
	}
	for i, n := range cfg.NICs {
		if strings.HasPrefix(n.Network, "dvportgroup:") || n.Network == "" {
			return nil, nil, fmt.Errorf("NIC %d: network %q: only standard port groups are restored; remove the NIC after restoring or restore it by hand", n.Key, n.Network)
		}
		net, err := finder.Network(ctx, n.Network)
		if err != nil {
			return nil, nil, fmt.Errorf("NIC %d: network %q: %w", n.Key, n.Network, err)
		}
		card := types.VirtualEthernetCard{VirtualDevice: types.VirtualDevice{Key: int32(-300 - i),
			Backing: &types.VirtualEthernetCardNetworkBackingInfo{
				VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: n.Network},
				Network:                        types.NewReference(net.Reference())}},
			AddressType: string(types.VirtualEthernetCardMacTypeGenerated)}
		if dev := newNIC(n.Type, card); dev != nil {
			add(dev, false)
		}
	}
	spec := types.VirtualMachineConfigSpec{
		Name: opts.Name, GuestId: cfg.GuestID, NumCPUs: cfg.CPUs,
		MemoryMB: cfg.MemoryMB, Firmware: cfg.Firmware, Version: cfg.HardwareVersion,
		Files:        &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", opts.Datastore)},
		DeviceChange: changes,
	}
	if cfg.CoresPerSocket > 0 {
		spec.NumCoresPerSocket = &cfg.CoresPerSocket
	}
	task, err := folder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("creating VM %s: %w", opts.Name, err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("creating VM %s: %w", opts.Name, err)
	}
	ref := info.Result.(types.ManagedObjectReference)
	vm := &VM{Moref: ref.Value, Name: opts.Name}
	var m mo.VirtualMachine
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, []string{"config.hardware.device"}, &m); err != nil || m.Config == nil {
		return vm, nil, fmt.Errorf("reading the disks of the new VM %s: %v", vm, err)
	}
	ctrls := map[int32]slot{}
	for _, dev := range m.Config.Hardware.Device {
		if t := controllerType(dev); t != "" {
			ctrls[dev.GetVirtualDevice().Key] = slot{typ: t, bus: dev.(types.BaseVirtualController).GetVirtualController().BusNumber}
		}
	}
	var out []CreatedDisk
	for _, dev := range m.Config.Hardware.Device {
		vd, ok := dev.(*types.VirtualDisk)
		if !ok || vd.UnitNumber == nil {
			continue
		}
		s := ctrls[vd.ControllerKey]
		s.unt = *vd.UnitNumber
		if from, ok := want[s]; ok {
			for _, d := range disksOf([]types.BaseVirtualDevice{vd}) {
				out = append(out, CreatedDisk{From: from, Disk: d})
			}
		}
	}
	if len(out) != len(want) {
		return vm, out, fmt.Errorf("the new VM %s has %d of the %d disks asked for", vm, len(out), len(want))
	}
	return vm, out, nil
}

// PowerOn powers vm on.
func (c *Client) PowerOn(ctx context.Context, vm *VM) error {
	task, err := object.NewVirtualMachine(c.vc, vm.Reference()).PowerOn(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("powering on VM %s: %w", vm, err)
	}
	return nil
}

// PowerState is vm's runtime.powerState (poweredOn, poweredOff, suspended).
func (c *Client) PowerState(ctx context.Context, vm *VM) (string, error) {
	var m mo.VirtualMachine
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, vm.Reference(), []string{"runtime.powerState"}, &m); err != nil {
		return "", fmt.Errorf("reading the power state of VM %s: %w", vm, err)
	}
	return string(m.Runtime.PowerState), nil
}
