package cbt

import (
	"context"
	"log/slog"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
)

// ServerID returns a stable identity of the vSphere server, whatever name
// or address it was reached by: vCenter's instance UUID
// (ServiceContent.About.InstanceUuid), for a standalone ESXi host (which
// has none) "esx-" and its hardware UUID, and only when neither is known
// "host-" and the host:port it was reached at (then differently spelt
// connections to one server get different identities). Jobs key their
// VM locks with it. It is computed once per Client.
func (c *Client) ServerID(ctx context.Context) string {
	c.idMu.Lock()
	defer c.idMu.Unlock()
	if c.id == "" {
		id, final := c.serverID(ctx)
		if !final {
			return id
		}
		c.id = id
	}
	return c.id
}

// serverID finds the identity; final is false when a cancelled ctx kept
// it from asking the server.
func (c *Client) serverID(ctx context.Context) (id string, final bool) {
	if id := strings.ToLower(strings.TrimSpace(c.vc.ServiceContent.About.InstanceUuid)); id != "" {
		return "vc-" + id, true
	}
	if !c.vc.IsVC() {
		if h, err := find.NewFinder(c.vc).DefaultHostSystem(ctx); err == nil {
			var m mo.HostSystem
			err := property.DefaultCollector(c.vc).RetrieveOne(ctx, h.Reference(), []string{"hardware.systemInfo.uuid"}, &m)
			if err == nil && m.Hardware != nil && m.Hardware.SystemInfo.Uuid != "" {
				return "esx-" + strings.ToLower(m.Hardware.SystemInfo.Uuid), true
			}
		}
	}
	fallback := "host-" + strings.ToLower(c.host)
	if ctx.Err() != nil {
		return fallback, false
	}
	slog.Warn("the vSphere server has no instance UUID: VM locks are keyed by its address as written; use one spelling of it everywhere", "server", c.host)
	return fallback, true
}
