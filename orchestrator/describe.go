package orchestrator

import (
	"context"
	"strings"

	"github.com/sendense/capture/cbt"
)

// VMDescription is what `sendense vm info` and the agent API show of a VM.
type VMDescription struct {
	cbt.VM
	CBT       cbt.CBTStatus  `json:"cbt"`
	Snapshots []cbt.Snapshot `json:"snapshots"`
	Disks     []cbt.Disk     `json:"disks"`
}

// DescribeVM finds a VM and reads its CBT state, snapshots and disks.
func DescribeVM(ctx context.Context, c *cbt.Client, spec string) (*VMDescription, error) {
	vm, err := c.FindVM(ctx, spec)
	if err != nil {
		return nil, err
	}
	d := &VMDescription{VM: *vm}
	if d.CBT, err = c.CBTStatus(ctx, vm); err != nil {
		return nil, err
	}
	if d.Snapshots, err = c.Snapshots(ctx, vm); err != nil {
		return nil, err
	}
	MarkForeign(d.Snapshots)
	if d.Disks, err = c.Disks(ctx, vm, ""); err != nil {
		return nil, err
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
