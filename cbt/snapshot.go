package cbt

import (
	"context"
	"fmt"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Snapshot is one snapshot of a VM.
type Snapshot struct {
	Moref       string    `json:"moref"` // e.g. "snapshot-7"
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	Parent      string    `json:"parent,omitempty"` // moref of the parent snapshot
	Current     bool      `json:"current,omitempty"`
	// Owner is the job that took the snapshot, when its description is a
	// valid owner marker (SnapshotOwner).
	Owner *SnapshotOwner `json:"owner,omitempty"`
	// Foreign marks a snapshot named like a job's ("sendense-*") that
	// carries no valid owner marker: no job ever removes it. Set by the
	// orchestrator.
	Foreign bool `json:"foreign,omitempty"`
}

func flattenSnapshots(tree []types.VirtualMachineSnapshotTree, parent string, cur *types.ManagedObjectReference) []Snapshot {
	var out []Snapshot
	for _, t := range tree {
		owner, _ := ParseSnapshotOwner(t.Description)
		out = append(out, Snapshot{
			Moref:       t.Snapshot.Value,
			Name:        t.Name,
			Description: t.Description,
			Created:     t.CreateTime,
			Parent:      parent,
			Current:     cur != nil && *cur == t.Snapshot,
			Owner:       owner,
		})
		out = append(out, flattenSnapshots(t.ChildSnapshotList, t.Snapshot.Value, cur)...)
	}
	return out
}

// Snapshots lists the snapshots of vm, parents before children, with
// their owner markers. The orchestrator uses it to remove the snapshots
// of dead jobs.
func (c *Client) Snapshots(ctx context.Context, vm *VM) ([]Snapshot, error) {
	var m mo.VirtualMachine
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, vm.Reference(), []string{"snapshot"}, &m); err != nil {
		return nil, fmt.Errorf("listing the snapshots of VM %s: %w", vm, err)
	}
	if m.Snapshot == nil {
		return nil, nil
	}
	return flattenSnapshots(m.Snapshot.RootSnapshotList, "", m.Snapshot.CurrentSnapshot), nil
}

// CreateSnapshot takes a snapshot of vm and returns its moref.
func (c *Client) CreateSnapshot(ctx context.Context, vm *VM, name, description string, quiesce, memory bool) (string, error) {
	obj := object.NewVirtualMachine(c.vc, vm.Reference())
	task, err := obj.CreateSnapshot(ctx, name, description, memory, quiesce)
	if err != nil {
		return "", fmt.Errorf("creating snapshot %q of VM %s: %w", name, vm, err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return "", fmt.Errorf("creating snapshot %q of VM %s: %w", name, vm, err)
	}
	ref, ok := info.Result.(types.ManagedObjectReference)
	if !ok {
		return "", fmt.Errorf("creating snapshot %q of VM %s: the task returned no snapshot", name, vm)
	}
	return ref.Value, nil
}

// RemoveSnapshot removes (consolidates) the snapshot with the given moref,
// keeping its children.
func (c *Client) RemoveSnapshot(ctx context.Context, moref string) error {
	ref := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: moref}
	consolidate := true
	req := types.RemoveSnapshot_Task{This: ref, RemoveChildren: false, Consolidate: &consolidate}
	res, err := methods.RemoveSnapshot_Task(ctx, c.vc, &req)
	if err != nil {
		return fmt.Errorf("removing snapshot %s: %w", moref, err)
	}
	if err := object.NewTask(c.vc, res.Returnval).Wait(ctx); err != nil {
		return fmt.Errorf("removing snapshot %s: %w", moref, err)
	}
	return nil
}
