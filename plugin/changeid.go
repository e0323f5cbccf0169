package plugin

import (
	"context"
	"fmt"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/extent"
)

// QueryChangedAreas is the ChangeQuery of changeid=: it logs in to the
// vSphere API of server= (verifying the certificate by thumbprint=), finds
// the disk of snapshot= by disk-key= or by its backing file file=, and
// loops QueryChangedDiskAreas over the whole disk (see cbt.ChangedAreas).
func QueryChangedAreas(ctx context.Context, c *Config) (extent.List, error) {
	thumbprint, err := ParseThumbprint(c.Thumbprint)
	if err != nil {
		return nil, err
	}
	client, err := cbt.Connect(ctx, cbt.Config{
		Server:     c.Server,
		Port:       int(c.Port),
		User:       c.User,
		Password:   c.Password,
		Thumbprint: thumbprint,
		KeepAlive:  -1,
	})
	if err != nil {
		return nil, err
	}
	defer client.Close(context.WithoutCancel(ctx))
	q := cbt.Query{VM: c.VM, Snapshot: c.Snapshot, File: c.File, ChangeID: c.ChangeID}
	if c.HasDiskKey {
		q.DiskKey = c.DiskKey
	}
	disk, areas, err := client.QueryChanges(ctx, q)
	if err != nil {
		return nil, err
	}
	if areas.Capacity != 0 && disk.Capacity != 0 && areas.Capacity != disk.Capacity {
		return nil, fmt.Errorf("disk %d: QueryChangedDiskAreas covered %d bytes but the disk has %d", disk.Key, areas.Capacity, disk.Capacity)
	}
	return areas.List, nil
}
