package orchestrator

import (
	"context"
	"strings"

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
		MarkForeign(snaps)
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

// MarkForeign sets Foreign on the snapshots named like a job's
// ("sendense-*") that carry no valid owner marker: a user's, which no job
// ever removes.
func MarkForeign(snaps []cbt.Snapshot) {
	for i := range snaps {
		snaps[i].Foreign = strings.HasPrefix(snaps[i].Name, SnapshotPrefix) && snaps[i].Owner == nil
	}
}

// ForeignSnapshots returns the foreign ones of snaps (see MarkForeign).
func ForeignSnapshots(snaps []cbt.Snapshot) []cbt.Snapshot {
	var out []cbt.Snapshot
	for _, s := range snaps {
		if s.Foreign {
			out = append(out, s)
		}
	}
	return out
}
