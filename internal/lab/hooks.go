package lab

import (
	"log/slog"
	"os"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// How the lab is wired into vcsim (see docs/design.md, "The lab", and docs/lab.md):
//
//   - vcsim has no QueryChangedDiskAreas. handle (the registry's Handler)
//     puts a cbtVM, which embeds the *simulator.VirtualMachine and adds the
//     method, into the caller's session registry; vcsim's dispatch prefers
//     session objects. The VM itself is never replaced in the registry
//     (Map().Put of a wrapper breaks snapshots).
//   - labHooks is a registry handler (Map().AddHandler): PutObject sees each
//     new snapshot (freeze the disks, stamp changeIds on the snapshot's own
//     copy of the hardware), UpdateObject sees changeTrackingEnabled change,
//     RemoveObject sees snapshots go.

// labHooks is the Lab as a simulator.RegisterObject (kept off the Lab's API).
type labHooks struct{ l *Lab }

// Reference implements simulator.RegisterObject.
func (h labHooks) Reference() types.ManagedObjectReference { return h.l.ref }

// handle is the registry's Handler, called before every method dispatch.
func (l *Lab) handle(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	l.pauses.wait(m.Name)
	l.adoptNew(ctx, m.Name)
	if m.This.Type != "VirtualMachine" || ctx.Session == nil {
		return nil, nil
	}
	vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
	if !ok {
		return nil, nil
	}
	w, ok := ctx.Session.Get(m.This).(*cbtVM)
	mine := ok && w.lab == l && w.VirtualMachine == vm
	switch {
	case m.Name == "QueryChangedDiskAreas" && !mine:
		ctx.Session.Put(&cbtVM{VirtualMachine: vm, lab: l}) // once per session and VM
	case ok && !mine:
		// A wrapper left in a session by another lab of this process (the
		// in-process session is shared) must not catch this lab's calls.
		ctx.Session.Remove(ctx, m.This)
	}
	return nil, nil
}

// cbtVM adds QueryChangedDiskAreas to a simulator VM.
type cbtVM struct {
	*simulator.VirtualMachine
	lab *Lab
}

// QueryChangedDiskAreas answers from the lab's tracker. vcsim holds the VM's
// lock while it runs.
func (w *cbtVM) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := new(methods.QueryChangedDiskAreasBody)
	snap := req.Snapshot
	if snap == nil {
		if w.Snapshot == nil || w.Snapshot.CurrentSnapshot == nil || w.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			body.Fault_ = simulator.Fault("A specified parameter was not correct: snapshot: without a snapshot, changes can only be computed for a powered-off VM with a current snapshot",
				&types.InvalidArgument{InvalidProperty: "snapshot"})
			return body
		}
		snap = w.Snapshot.CurrentSnapshot
	}
	info, f := w.lab.query(w.Self, snap.Value, req.DeviceKey, req.StartOffset, req.ChangeId)
	if f != nil {
		body.Fault_ = simulator.Fault(f.msg, f.fault)
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: info}
	return body
}

func (l *Lab) query(vm types.ManagedObjectReference, snap string, key int32, start int64, changeID string) (types.DiskChangeInfo, *qfault) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.t.vms[vm.Value]
	if v == nil {
		return types.DiskChangeInfo{}, cbtFault("", "VM %s is not a lab VM: changed block tracking is not simulated for it", vm.Value)
	}
	lim := queryLimits{pageLimit: l.opts.PageLimit, maxWindow: l.opts.MaxWindow}
	return l.t.query(v, snap, key, start, changeID, lim, allocatedAreas)
}

// PutObject implements simulator.RegisterObject: a new snapshot freezes the
// VM's disks and gets its changeIds. The snapshot task holds the VM's lock.
func (h labHooks) PutObject(_ *simulator.Context, obj mo.Reference) {
	l := h.l
	snap, ok := obj.(*simulator.VirtualMachineSnapshot)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.t.vms[snap.Vm.Value]
	if v == nil {
		return
	}
	frozen := map[int32]string{}
	for _, d := range v.disks {
		p := snapshotPath(d.flat, snap.Self.Value)
		if err := freeze(d, p, l.opts.SnapshotLinks); err != nil {
			slog.Error("lab: freezing disk for snapshot", "vm", v.name, "disk", d.key, "snapshot", snap.Self.Value, "err", err)
			continue
		}
		frozen[d.key] = p
	}
	s := l.t.snapshot(v, snap.Self.Value, frozen)
	if vm := l.vmObject(snap.Vm); vm != nil && vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
		s.parent = vm.Snapshot.CurrentSnapshot.Value
	}
	// The snapshot's Config is its own deep copy of the VM's: stamping it
	// leaves the VM's current backing alone.
	for _, dev := range snap.Config.Hardware.Device {
		vd, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		if b, ok := vd.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			if sd := s.disks[vd.Key]; sd != nil {
				b.ChangeId = sd.changeID()
			}
		}
	}
}

// UpdateObject implements simulator.RegisterObject: it follows
// config.changeTrackingEnabled of the lab's VMs.
func (h labHooks) UpdateObject(_ *simulator.Context, obj mo.Reference, _ []types.PropertyChange) {
	l := h.l
	m, ok := obj.(*mo.VirtualMachine)
	if !ok {
		return
	}
	on := m.Config != nil && m.Config.ChangeTrackingEnabled != nil && *m.Config.ChangeTrackingEnabled
	l.mu.Lock()
	defer l.mu.Unlock()
	if v := l.t.vms[m.Self.Value]; v != nil {
		l.t.setEnabled(v, on)
	}
}

// RemoveObject implements simulator.RegisterObject: removed snapshots lose
// their frozen files. vcsim removes only the snapshot named in
// RemoveSnapshot_Task from its registry, even with removeChildren, so every
// snapshot of the VM that is no longer in its tree goes too.
//
// vcsim also leaves the VM's current snapshot pointing into a removed
// subtree (and then panics on the next snapshot): the current snapshot is
// moved to the nearest remaining ancestor, as vSphere does.
func (h labHooks) RemoveObject(ctx *simulator.Context, ref types.ManagedObjectReference) {
	l := h.l
	if ref.Type != "VirtualMachineSnapshot" {
		return
	}
	l.mu.Lock()
	s := l.t.snaps[ref.Value]
	l.mu.Unlock()
	if s == nil {
		return
	}
	live := map[string]bool{}
	vm := l.vmObject(s.vm.ref)
	if vm != nil && vm.Snapshot != nil {
		var walk func([]types.VirtualMachineSnapshotTree)
		walk = func(tree []types.VirtualMachineSnapshotTree) {
			for _, t := range tree {
				live[t.Snapshot.Value] = true
				walk(t.ChildSnapshotList)
			}
		}
		walk(vm.Snapshot.RootSnapshotList)
		if cur := vm.Snapshot.CurrentSnapshot; cur != nil && !live[cur.Value] && ctx != nil {
			var parent *types.ManagedObjectReference
			l.mu.Lock()
			for p := l.t.snaps[cur.Value]; p != nil; p = l.t.snaps[p.parent] {
				if live[p.parent] {
					parent = &types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: p.parent}
					break
				}
			}
			l.mu.Unlock()
			ctx.Update(vm, []types.PropertyChange{{Name: "snapshot.currentSnapshot", Val: parent}})
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var files []string
	for r, o := range l.t.snaps {
		if o.vm == s.vm && (r == ref.Value || !live[r]) {
			files = append(files, l.t.forget(r)...)
		}
	}
	for _, f := range files {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			slog.Error("lab: removing frozen snapshot disk", "file", f, "err", err)
		}
	}
}
