package lab

import (
	"context"
	"fmt"
	"sort"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// The operations below go through the lab's own vSphere session, exactly as
// a client's would, so the tracker sees them the same way.

// SnapshotInfo describes a snapshot taken with CreateSnapshot.
type SnapshotInfo struct {
	Moref string             `json:"moref"`
	VM    string             `json:"vm"`
	Disks []SnapshotDiskInfo `json:"disks"`
}

// SnapshotDiskInfo is one disk of a snapshot.
type SnapshotDiskInfo struct {
	Key      int32  `json:"key"`
	ChangeID string `json:"change_id"` // "" when tracking was not active
	Path     string `json:"path"`      // the frozen content
}

// CreateSnapshot takes a snapshot of a VM through the vSphere API.
func (l *Lab) CreateSnapshot(ctx context.Context, vm, name string) (SnapshotInfo, error) {
	l.mu.Lock()
	v, err := l.lookup(vm)
	l.mu.Unlock()
	if err != nil {
		return SnapshotInfo{}, err
	}
	c, err := l.Client(ctx)
	if err != nil {
		return SnapshotInfo{}, err
	}
	task, err := object.NewVirtualMachine(c.Client, v.ref).CreateSnapshot(ctx, name, "taken through the Sendense lab", false, false)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("lab: snapshot of %s: %w", v.name, err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("lab: snapshot of %s: %w", v.name, err)
	}
	ref := info.Result.(types.ManagedObjectReference).Value
	l.mu.Lock()
	defer l.mu.Unlock()
	si := SnapshotInfo{Moref: ref, VM: v.name}
	if s := l.t.snaps[ref]; s != nil {
		for key, sd := range s.disks {
			si.Disks = append(si.Disks, SnapshotDiskInfo{Key: key, ChangeID: sd.changeID(), Path: sd.frozen})
		}
	}
	sort.Slice(si.Disks, func(i, j int) bool { return si.Disks[i].Key < si.Disks[j].Key })
	return si, nil
}

// RemoveSnapshot removes a snapshot (keeping its children) through the
// vSphere API.
func (l *Lab) RemoveSnapshot(ctx context.Context, moref string) error {
	c, err := l.Client(ctx)
	if err != nil {
		return err
	}
	req := types.RemoveSnapshot_Task{This: types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: moref}}
	res, err := methods.RemoveSnapshot_Task(ctx, c.Client, &req)
	if err == nil {
		err = object.NewTask(c.Client, res.Returnval).Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("lab: removing snapshot %s: %w", moref, err)
	}
	return nil
}

// SetCBT turns changeTrackingEnabled of a VM on or off through the vSphere API.
func (l *Lab) SetCBT(ctx context.Context, vm string, on bool) error {
	l.mu.Lock()
	v, err := l.lookup(vm)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	c, err := l.Client(ctx)
	if err != nil {
		return err
	}
	task, err := object.NewVirtualMachine(c.Client, v.ref).Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(on)})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("lab: setting CBT of %s: %w", v.name, err)
	}
	return nil
}

// CBTEnabled reports whether CBT is enabled on a VM (as the tracker saw it).
func (l *Lab) CBTEnabled(vm string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.lookup(vm)
	if err != nil {
		return false, err
	}
	return v.enabled, nil
}
