package cbt

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Disk is a virtual disk as a VM's configuration or a snapshot's hardware
// describes it.
type Disk struct {
	Key       int32  `json:"key"`                 // device key, e.g. 2000
	UUID      string `json:"uuid,omitempty"`      // disk UUID from the backing
	Capacity  uint64 `json:"capacity"`            // bytes
	FileName  string `json:"file"`                // "[datastore] dir/disk.vmdk"
	Datastore string `json:"datastore,omitempty"` // datastore name from FileName
	ChangeID  string `json:"change_id,omitempty"` // CBT changeId (snapshot disks)
	Label     string `json:"label,omitempty"`     // "Hard disk 1"
}

// State returns what a backup records of the disk (see NeedFull).
func (d Disk) State() DiskState {
	return DiskState{Key: d.Key, UUID: d.UUID, Capacity: d.Capacity, ChangeID: d.ChangeID}
}

// disksOf extracts the virtual disks of a device list, sorted by key.
func disksOf(devices []types.BaseVirtualDevice) []Disk {
	var out []Disk
	for _, dev := range devices {
		vd, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		d := Disk{Key: vd.Key, Capacity: uint64(vd.CapacityInKB) * 1024}
		if vd.CapacityInBytes > 0 {
			d.Capacity = uint64(vd.CapacityInBytes)
		}
		if info := vd.DeviceInfo; info != nil {
			d.Label = info.GetDescription().Label
		}
		switch b := vd.Backing.(type) {
		case *types.VirtualDiskFlatVer2BackingInfo:
			d.FileName, d.UUID, d.ChangeID = b.FileName, b.Uuid, b.ChangeId
		case *types.VirtualDiskSeSparseBackingInfo:
			d.FileName, d.UUID, d.ChangeID = b.FileName, b.Uuid, b.ChangeId
		case *types.VirtualDiskSparseVer2BackingInfo:
			d.FileName, d.UUID, d.ChangeID = b.FileName, b.Uuid, b.ChangeId
		case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
			d.FileName, d.UUID, d.ChangeID = b.FileName, b.Uuid, b.ChangeId
		case *types.VirtualDiskRawDiskVer2BackingInfo:
			d.FileName, d.UUID, d.ChangeID = b.DescriptorFileName, b.Uuid, b.ChangeId
		case types.BaseVirtualDeviceFileBackingInfo:
			d.FileName = b.GetVirtualDeviceFileBackingInfo().FileName
		}
		var p object.DatastorePath
		if p.FromString(d.FileName) {
			d.Datastore = p.Datastore
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Disks lists the virtual disks of vm: from the hardware of the snapshot
// with moref snapshot (the disks a backup reads, with their changeIds), or
// from the VM's current configuration when snapshot is "".
func (c *Client) Disks(ctx context.Context, vm *VM, snapshot string) ([]Disk, error) {
	pc := property.DefaultCollector(c.vc)
	if snapshot == "" {
		var m mo.VirtualMachine
		if err := pc.RetrieveOne(ctx, vm.Reference(), []string{"config.hardware.device"}, &m); err != nil {
			return nil, fmt.Errorf("reading the disks of VM %s: %w", vm, err)
		}
		if m.Config == nil {
			return nil, fmt.Errorf("VM %s has no configuration (inaccessible?)", vm)
		}
		return disksOf(m.Config.Hardware.Device), nil
	}
	ref := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snapshot}
	var s mo.VirtualMachineSnapshot
	if err := pc.RetrieveOne(ctx, ref, []string{"config.hardware.device", "vm"}, &s); err != nil {
		if fault.Is(err, &types.ManagedObjectNotFound{}) {
			return nil, fmt.Errorf("%w: no snapshot %s on %s", ErrNotFound, snapshot, c.host)
		}
		return nil, fmt.Errorf("reading the disks of snapshot %s: %w", snapshot, err)
	}
	if s.Vm.Value == "" {
		return nil, fmt.Errorf("%w: no snapshot %s on %s", ErrNotFound, snapshot, c.host)
	}
	if s.Vm.Value != vm.Moref {
		return nil, fmt.Errorf("snapshot %s belongs to VM %s, not to %s", snapshot, s.Vm.Value, vm)
	}
	return disksOf(s.Config.Hardware.Device), nil
}

// SelectDisk picks a disk by device key, or when key is 0 by its backing
// file name ("[ds] dir/disk.vmdk"). The error lists the disks there are.
func SelectDisk(disks []Disk, key int32, file string) (Disk, error) {
	for _, d := range disks {
		if (key != 0 && d.Key == key) || (key == 0 && file != "" && sameFile(d.FileName, file)) {
			return d, nil
		}
	}
	var have []string
	for _, d := range disks {
		have = append(have, fmt.Sprintf("%d %s", d.Key, d.FileName))
	}
	what := fmt.Sprintf("device key %d", key)
	if key == 0 {
		what = fmt.Sprintf("file %q", file)
	}
	return Disk{}, fmt.Errorf("%w: no disk with %s (disks: %s)", ErrNotFound, what, strings.Join(have, ", "))
}

func sameFile(a, b string) bool {
	var pa, pb object.DatastorePath
	if pa.FromString(a) && pb.FromString(b) {
		return pa.Datastore == pb.Datastore && strings.TrimPrefix(pa.Path, "/") == strings.TrimPrefix(pb.Path, "/")
	}
	return strings.TrimSpace(a) == strings.TrimSpace(b)
}
