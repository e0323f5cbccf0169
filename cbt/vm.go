package cbt

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// VM is a virtual machine found by FindVM or ListVMs.
type VM struct {
	Moref string `json:"moref"`          // managed object id, e.g. "vm-42"
	Name  string `json:"name"`           // display name
	Path  string `json:"path,omitempty"` // inventory path, e.g. "/DC0/vm/prod/db1"
}

// Reference returns the VM's managed object reference.
func (vm *VM) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VirtualMachine", Value: vm.Moref}
}

func (vm *VM) String() string {
	if vm.Path != "" {
		return fmt.Sprintf("%s (%s)", vm.Path, vm.Moref)
	}
	return fmt.Sprintf("%s (%s)", vm.Name, vm.Moref)
}

// VMInfo is a VM as the CLI and the API show it (docs/api.md, "Objects"):
// one line of ListVMs, `sendense vms --json`, `sendense vm info --json`,
// GET /api/v1/vms and /specs. Snapshots and Disks are never null.
type VMInfo struct {
	VM
	PowerState string     `json:"power_state"` // poweredOn, poweredOff, suspended
	CBT        CBTState   `json:"cbt"`
	Snapshots  []Snapshot `json:"snapshots"`
	Disks      []Disk     `json:"disks"`
	Capacity   uint64     `json:"capacity"` // sum of the disks' capacities
}

// CBTState is the "cbt" object of a VM.
type CBTState struct {
	Enabled   bool `json:"enabled"`   // config.changeTrackingEnabled
	Supported bool `json:"supported"` // capability.changeTrackingSupported
}

var morefRE = regexp.MustCompile(`^vm-[0-9]+$`)

// FindVM finds a virtual machine by
//   - managed object id: "vm-42" (also "moref=vm-42", as nbdkit-vddk writes
//     it; on ESXi, where ids are plain numbers, use the moref= form);
//   - inventory path: "/DC0/vm/folder/name";
//   - name: must be unique, otherwise the error lists the candidates.
//
// Errors wrap ErrNotFound or ErrAmbiguous.
func (c *Client) FindVM(ctx context.Context, spec string) (*VM, error) {
	spec = strings.TrimSpace(spec)
	switch {
	case spec == "":
		return nil, fmt.Errorf("%w: no VM given", ErrNotFound)
	case strings.HasPrefix(spec, "moref="):
		return c.vmByMoref(ctx, strings.TrimPrefix(spec, "moref="))
	case morefRE.MatchString(spec):
		return c.vmByMoref(ctx, spec)
	case strings.HasPrefix(spec, "/"):
		return c.vmByPath(ctx, spec)
	}
	return c.vmByName(ctx, spec)
}

func (c *Client) vmByMoref(ctx context.Context, id string) (*VM, error) {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: id}
	var m mo.VirtualMachine
	err := property.DefaultCollector(c.vc).RetrieveOne(ctx, ref, []string{"name"}, &m)
	if err != nil {
		if fault.Is(err, &types.ManagedObjectNotFound{}) {
			return nil, fmt.Errorf("%w: no VM with moref %s on %s", ErrNotFound, id, c.host)
		}
		return nil, fmt.Errorf("looking up VM %s: %w", id, err)
	}
	if m.Name == "" {
		return nil, fmt.Errorf("%w: no VM with moref %s on %s", ErrNotFound, id, c.host)
	}
	vm := &VM{Moref: id, Name: m.Name}
	// One call up the VM's ancestry (not a walk of the whole inventory):
	// this is the plugin's path at every open.
	if p, err := find.InventoryPath(ctx, c.vc, ref); err == nil {
		vm.Path = p
	}
	return vm, nil
}

func (c *Client) vmByPath(ctx context.Context, p string) (*VM, error) {
	ref, err := object.NewSearchIndex(c.vc).FindByInventoryPath(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("looking up VM %s: %w", p, err)
	}
	if ref == nil || ref.Reference().Type != "VirtualMachine" {
		return nil, fmt.Errorf("%w: no VM at inventory path %s", ErrNotFound, p)
	}
	vm, err := c.vmByMoref(ctx, ref.Reference().Value)
	if err != nil {
		return nil, err
	}
	vm.Path = p
	return vm, nil
}

func (c *Client) vmByName(ctx context.Context, name string) (*VM, error) {
	var vms []mo.VirtualMachine
	if err := c.retrieveVMs(ctx, []string{"name", "parent"}, &vms); err != nil {
		return nil, err
	}
	paths, err := c.inventoryPaths(ctx)
	if err != nil {
		return nil, err
	}
	var found []*VM
	for _, m := range vms {
		if m.Name == name {
			found = append(found, &VM{Moref: m.Self.Value, Name: m.Name, Path: paths.path(m.Self, m.Name)})
		}
	}
	switch len(found) {
	case 0:
		if strings.Trim(name, "0123456789") == "" { // an ESXi moref
			return c.vmByMoref(ctx, name)
		}
		return nil, fmt.Errorf("%w: no VM named %q on %s", ErrNotFound, name, c.host)
	case 1:
		return found[0], nil
	}
	var list []string
	for _, vm := range found {
		list = append(list, vm.String())
	}
	sort.Strings(list)
	return nil, fmt.Errorf("%w: %d VMs are named %q, please specify one by inventory path or moref: %s",
		ErrAmbiguous, len(found), name, strings.Join(list, ", "))
}

func (c *Client) retrieveVMs(ctx context.Context, props []string, dst any) error {
	m := view.NewManager(c.vc)
	v, err := m.CreateContainerView(ctx, c.vc.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		return fmt.Errorf("listing VMs: %w", err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, props, dst); err != nil {
		return fmt.Errorf("listing VMs: %w", err)
	}
	return nil
}

// pathIndex maps inventory objects to their name and parent.
type pathIndex struct {
	root types.ManagedObjectReference
	obj  map[types.ManagedObjectReference]mo.ManagedEntity
	vms  map[types.ManagedObjectReference]types.ManagedObjectReference // VM → parent
}

// inventoryPaths retrieves the folders, datacenters and vApps (the possible
// ancestors of a VM in the VM folder tree) in one call.
func (c *Client) inventoryPaths(ctx context.Context) (*pathIndex, error) {
	m := view.NewManager(c.vc)
	root := c.vc.ServiceContent.RootFolder
	v, err := m.CreateContainerView(ctx, root, []string{"Folder", "Datacenter", "VirtualApp", "VirtualMachine"}, true)
	if err != nil {
		return nil, fmt.Errorf("reading the inventory: %w", err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var ents []mo.ManagedEntity
	if err := v.Retrieve(ctx, []string{"ManagedEntity"}, []string{"name", "parent"}, &ents); err != nil {
		return nil, fmt.Errorf("reading the inventory: %w", err)
	}
	idx := &pathIndex{root: root, obj: map[types.ManagedObjectReference]mo.ManagedEntity{}}
	for _, e := range ents {
		idx.obj[e.Self] = e
	}
	return idx, nil
}

// path returns the inventory path of ref ("" if it cannot be built).
func (p *pathIndex) path(ref types.ManagedObjectReference, name string) string {
	parts := []string{name}
	e, ok := p.obj[ref]
	if !ok || e.Parent == nil {
		return ""
	}
	cur := *e.Parent
	for i := 0; i < 64 && cur != p.root; i++ {
		e, ok := p.obj[cur]
		if !ok || e.Parent == nil {
			return ""
		}
		parts = append(parts, e.Name)
		cur = *e.Parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return "/" + strings.Join(parts, "/")
}

// ListVMs lists every VM with its inventory path, power state, CBT state and
// disks (current configuration), sorted by path.
func (c *Client) ListVMs(ctx context.Context) ([]VMInfo, error) {
	var vms []mo.VirtualMachine
	props := []string{"name", "parent", "runtime.powerState", "config.changeTrackingEnabled", "capability.changeTrackingSupported",
		"config.hardware.device", "snapshot"}
	if err := c.retrieveVMs(ctx, props, &vms); err != nil {
		return nil, err
	}
	paths, err := c.inventoryPaths(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]VMInfo, 0, len(vms))
	for _, m := range vms {
		info := VMInfo{
			VM:         VM{Moref: m.Self.Value, Name: m.Name, Path: paths.path(m.Self, m.Name)},
			PowerState: string(m.Runtime.PowerState),
			CBT:        CBTState{Supported: m.Capability.ChangeTrackingSupported},
			Snapshots:  []Snapshot{},
			Disks:      []Disk{},
		}
		if m.Config != nil {
			info.CBT.Enabled = m.Config.ChangeTrackingEnabled != nil && *m.Config.ChangeTrackingEnabled
			if d := disksOf(m.Config.Hardware.Device); d != nil {
				info.Disks = d
			}
			for _, d := range info.Disks {
				info.Capacity += d.Capacity
			}
		}
		if m.Snapshot != nil {
			info.Snapshots = flattenSnapshots(m.Snapshot.RootSnapshotList, "", m.Snapshot.CurrentSnapshot)
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Moref < out[j].Moref
	})
	return out, nil
}
