package cbt

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sendense/capture/internal/extent"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// Areas is the answer of ChangedAreas: the changed byte ranges of a disk
// (normal form: sorted, merged, inside the disk), the disk's capacity and the
// number of QueryChangedDiskAreas calls it took.
type Areas struct {
	List     extent.List `json:"areas"`
	Capacity uint64      `json:"capacity"`
	Calls    int         `json:"calls"`
}

// ChangedAreas returns the areas of disk diskKey in snapshot (a moref) that
// changed since changeID, or with AllAreas ("*") every area vSphere
// considers in use. It loops over QueryChangedDiskAreas until the whole disk
// is covered and merges the areas (see the package documentation).
func (c *Client) ChangedAreas(ctx context.Context, vm *VM, snapshot string, diskKey int32, changeID string) (Areas, error) {
	if snapshot == "" {
		return Areas{}, errors.New("ChangedAreas needs a snapshot: changes are computed for a snapshot's disks")
	}
	disks, err := c.Disks(ctx, vm, snapshot)
	if err != nil {
		return Areas{}, err
	}
	d, err := SelectDisk(disks, diskKey, "")
	if err != nil {
		return Areas{}, fmt.Errorf("snapshot %s of VM %s: %w", snapshot, vm, err)
	}
	return c.changedAreas(ctx, vm, snapshot, d, changeID)
}

func (c *Client) changedAreas(ctx context.Context, vm *VM, snapshot string, d Disk, changeID string) (Areas, error) {
	if strings.TrimSpace(changeID) == "" {
		return Areas{}, errors.New("no changeId given (use \"*\" for all areas in use)")
	}
	snap := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snapshot}
	query := func(ctx context.Context, start uint64) (types.DiskChangeInfo, error) {
		req := types.QueryChangedDiskAreas{
			This:        vm.Reference(),
			Snapshot:    &snap,
			DeviceKey:   d.Key,
			StartOffset: int64(start),
			ChangeId:    changeID,
		}
		res, err := methods.QueryChangedDiskAreas(ctx, c.vc, &req)
		if err != nil {
			return types.DiskChangeInfo{}, fmt.Errorf("QueryChangedDiskAreas(VM %s, snapshot %s, disk %d, startOffset %d, changeId %q): %w",
				vm.Moref, snapshot, d.Key, start, changeID, err)
		}
		return res.Returnval, nil
	}
	return collectAreas(ctx, d.Capacity, query)
}

// collectAreas runs the QueryChangedDiskAreas loop of the CBT rules of docs/design.md:
// next = StartOffset+Length until the capacity is reached; an empty window is
// not the end; areas are clipped to the disk and merged.
func collectAreas(ctx context.Context, capacity uint64, query func(context.Context, uint64) (types.DiskChangeInfo, error)) (Areas, error) {
	a := Areas{Capacity: capacity}
	var list []extent.Extent
	for start := uint64(0); start < capacity; {
		if err := ctx.Err(); err != nil {
			return Areas{}, err
		}
		info, err := query(ctx, start)
		a.Calls++
		if err != nil {
			return Areas{}, err
		}
		if info.StartOffset < 0 || info.Length < 0 {
			return Areas{}, fmt.Errorf("QueryChangedDiskAreas returned a negative window (startOffset %d, length %d)", info.StartOffset, info.Length)
		}
		for _, ar := range info.ChangedArea {
			if ar.Start < 0 || ar.Length < 0 {
				return Areas{}, fmt.Errorf("QueryChangedDiskAreas returned a negative area (%d+%d)", ar.Start, ar.Length)
			}
			s, e := uint64(ar.Start), uint64(ar.Start)+uint64(ar.Length)
			e = min(e, capacity)
			if s < e {
				list = append(list, extent.Extent{Offset: s, Length: e - s})
			}
		}
		next := uint64(info.StartOffset) + uint64(info.Length)
		if next <= start {
			return Areas{}, fmt.Errorf("QueryChangedDiskAreas made no progress at offset %d (window %d+%d)", start, info.StartOffset, info.Length)
		}
		start = next
	}
	a.List = extent.Normalize(list)
	return a, nil
}

// Query names one disk of one snapshot and the changeId to compare with, as
// the nbdkit plugin receives them.
type Query struct {
	VM       string // FindVM spec: "vm-42", "moref=vm-42", a path or a name
	Snapshot string // snapshot moref, e.g. "snapshot-7"
	DiskKey  int32  // device key; 0 = find the disk by File
	File     string // backing file "[ds] dir/disk.vmdk", when DiskKey is 0
	ChangeID string // previous changeId, or "*"
}

// QueryChanges is the plugin's one call at open: it finds the VM, the disk in
// the snapshot's hardware and returns the disk with its changed areas.
func (c *Client) QueryChanges(ctx context.Context, q Query) (Disk, Areas, error) {
	if q.Snapshot == "" {
		return Disk{}, Areas{}, errors.New("no snapshot given: changed areas are computed for a snapshot")
	}
	vm, err := c.FindVM(ctx, q.VM)
	if err != nil {
		return Disk{}, Areas{}, err
	}
	disks, err := c.Disks(ctx, vm, q.Snapshot)
	if err != nil {
		return Disk{}, Areas{}, err
	}
	d, err := SelectDisk(disks, q.DiskKey, q.File)
	if err != nil {
		return Disk{}, Areas{}, fmt.Errorf("snapshot %s of VM %s: %w", q.Snapshot, vm, err)
	}
	a, err := c.changedAreas(ctx, vm, q.Snapshot, d, q.ChangeID)
	return d, a, err
}
