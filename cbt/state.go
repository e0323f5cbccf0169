package cbt

import (
	"context"
	"fmt"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// NoticeTrackingStarts is the notice given whenever CBT had to be enabled
// (or reset): vSphere starts tracking at the next snapshot, and no earlier
// changeId of the VM's disks is usable.
const NoticeTrackingStarts = "tracking starts at the next snapshot; the next backup of each disk is full"

// CBTStatus is the Changed Block Tracking state of a VM.
type CBTStatus struct {
	Enabled    bool   `json:"enabled"`     // config.changeTrackingEnabled
	Supported  bool   `json:"supported"`   // capability.changeTrackingSupported
	Snapshots  int    `json:"snapshots"`   // number of snapshots the VM has
	PowerState string `json:"power_state"` // poweredOn, poweredOff, suspended
}

// CBTStatus returns the CBT state of vm.
func (c *Client) CBTStatus(ctx context.Context, vm *VM) (CBTStatus, error) {
	var m mo.VirtualMachine
	props := []string{"config.changeTrackingEnabled", "capability.changeTrackingSupported", "snapshot", "runtime.powerState"}
	if err := property.DefaultCollector(c.vc).RetrieveOne(ctx, vm.Reference(), props, &m); err != nil {
		return CBTStatus{}, fmt.Errorf("reading the CBT state of VM %s: %w", vm, err)
	}
	st := CBTStatus{PowerState: string(m.Runtime.PowerState)}
	if m.Config != nil && m.Config.ChangeTrackingEnabled != nil {
		st.Enabled = *m.Config.ChangeTrackingEnabled
	}
	st.Supported = m.Capability.ChangeTrackingSupported
	if m.Snapshot != nil {
		st.Snapshots = len(flattenSnapshots(m.Snapshot.RootSnapshotList, "", nil))
	}
	return st, nil
}

// EnableResult says what EnableCBT did.
type EnableResult struct {
	AlreadyEnabled bool   `json:"already_enabled"`
	Notice         string `json:"notice,omitempty"` // for the user; "" when nothing changed
}

// EnableCBT turns Changed Block Tracking on for vm. When it had to turn it
// on, the Notice says that tracking starts at the next snapshot and that the
// next backup of each disk is full, and mentions the snapshots that existed
// (vSphere does not track changes for them).
func (c *Client) EnableCBT(ctx context.Context, vm *VM) (EnableResult, error) {
	st, err := c.CBTStatus(ctx, vm)
	if err != nil {
		return EnableResult{}, err
	}
	if st.Enabled {
		return EnableResult{AlreadyEnabled: true}, nil
	}
	if !st.Supported {
		return EnableResult{}, fmt.Errorf("%w: VM %s does not support Changed Block Tracking (needs virtual hardware 7 or later and supported disks)", ErrNotSupported, vm)
	}
	if err := c.setCBT(ctx, vm, true); err != nil {
		return EnableResult{}, err
	}
	notice := fmt.Sprintf("CBT enabled on VM %s: %s", vm, NoticeTrackingStarts)
	if st.Snapshots > 0 {
		notice += fmt.Sprintf(" (the VM had %d snapshot(s) when CBT was enabled; changes are not tracked for them)", st.Snapshots)
	}
	return EnableResult{Notice: notice}, nil
}

// DisableCBT turns Changed Block Tracking off for vm. Every changeId of its
// disks becomes invalid.
func (c *Client) DisableCBT(ctx context.Context, vm *VM) error {
	return c.setCBT(ctx, vm, false)
}

// ResetCBT resets Changed Block Tracking of vm the way VMware documents it:
// disable, stun the VM (snapshot create and remove), enable, and stun again
// so tracking starts. Every earlier changeId becomes invalid; the returned
// notice says so.
func (c *Client) ResetCBT(ctx context.Context, vm *VM) (notice string, err error) {
	if err := c.setCBT(ctx, vm, false); err != nil {
		return "", err
	}
	if err := c.stun(ctx, vm); err != nil {
		_ = c.setCBT(ctx, vm, true)
		return "", fmt.Errorf("resetting CBT of VM %s: %w (CBT was enabled again)", vm, err)
	}
	if err := c.setCBT(ctx, vm, true); err != nil {
		return "", fmt.Errorf("resetting CBT of VM %s: CBT is now DISABLED: %w", vm, err)
	}
	if err := c.stun(ctx, vm); err != nil {
		return "", fmt.Errorf("resetting CBT of VM %s: %w", vm, err)
	}
	return fmt.Sprintf("CBT reset on VM %s: earlier changeIds are invalid; %s", vm, NoticeTrackingStarts), nil
}

// stun creates and removes a snapshot, which makes vSphere apply CBT
// changes to a running VM.
func (c *Client) stun(ctx context.Context, vm *VM) error {
	desc := "temporary snapshot to apply a CBT change"
	if o, err := NewSnapshotOwner("cbt-reset-"+time.Now().UTC().Format("20060102T150405Z"), time.Now()); err == nil {
		desc = o.Description() // a crash leaves it to the next job to remove
	}
	s, err := c.CreateSnapshot(ctx, vm, "sendense-cbt-reset", desc, false, false)
	if err != nil {
		return err
	}
	return c.RemoveSnapshot(ctx, s)
}

func (c *Client) setCBT(ctx context.Context, vm *VM, on bool) error {
	what := "disabling"
	if on {
		what = "enabling"
	}
	spec := types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(on)}
	task, err := object.NewVirtualMachine(c.vc, vm.Reference()).Reconfigure(ctx, spec)
	if err != nil {
		return fmt.Errorf("%s CBT on VM %s: %w", what, vm, err)
	}
	if err := task.Wait(ctx); err != nil {
		return fmt.Errorf("%s CBT on VM %s: %w", what, vm, err)
	}
	return nil
}
