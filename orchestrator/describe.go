package orchestrator

import (
	"context"

	"github.com/sendense/capture/cbt"
)

// VMDescription is what `sendense vm info` and the agent API show of a
// VM: the VM object of every listing (docs/api.md, "Objects").
type VMDescription = cbt.VMInfo

// DescribeVM finds a VM and reads its power and CBT state, snapshots and
// disks.
func DescribeVM(ctx context.Context, c *cbt.Client, spec string) (*VMDescription, error) {
	vm, err := c.FindVM(ctx, spec)
	if err != nil {
		return nil, err
	}
	d := &VMDescription{VM: *vm, Snapshots: []cbt.Snapshot{}, Disks: []cbt.Disk{}}
	st, err := c.CBTStatus(ctx, vm)
	if err != nil {
		return nil, err
	}
	d.PowerState, d.CBT = st.PowerState, cbt.CBTState{Enabled: st.Enabled, Supported: st.Supported}
	snaps, err := c.Snapshots(ctx, vm)
	if err != nil {
		return nil, err
	}
	disks, err := c.Disks(ctx, vm, "")
	if err != nil {
		return nil, err
	}
	if snaps != nil {
		d.Snapshots = snaps
	}
	if disks != nil {
		d.Disks = disks
	}
	for _, disk := range d.Disks {
		d.Capacity += disk.Capacity
	}
	return d, nil
}
