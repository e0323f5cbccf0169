package lab

import (
	"fmt"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// taskMethods are methods whose SOAP name ends in _Task; InjectFault
// accepts them with or without the suffix.
var taskMethods = map[string]bool{
	"CreateSnapshot": true, "CreateSnapshotEx": true, "RemoveSnapshot": true, "RemoveAllSnapshots": true,
	"RevertToSnapshot": true, "ReconfigVM": true, "PowerOnVM": true, "PowerOffVM": true,
	"ConsolidateVMDisks": true,
}

// InjectFault makes the next count calls of method (a vSphere method name
// such as "CreateSnapshot", "RemoveSnapshot_Task" or
// "QueryChangedDiskAreas") on VM vm (name, moref or path; for snapshot
// methods, on the VM's snapshots) fail with a SystemError fault saying it
// was injected by the lab. count ≤ 0 means 1.
func (l *Lab) InjectFault(method, vm string, count int) error {
	method = strings.TrimSpace(method)
	if method == "" {
		return fmt.Errorf("lab: no method given for the fault")
	}
	if taskMethods[method] {
		method += "_Task"
	}
	if count <= 0 {
		count = 1
	}
	l.mu.Lock()
	v, err := l.lookup(vm)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	ref := v.ref
	match := func(obj mo.Reference) bool {
		switch x := obj.(type) {
		case *simulator.VirtualMachineSnapshot:
			return x.Vm == ref
		case nil:
			return false
		}
		return obj.Reference() == ref
	}
	l.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName:              method,
		ObjectType:              "*",
		ObjectName:              "*",
		InclusionPropertyFilter: match,
		Probability:             1,
		FaultType:               simulator.FaultTypeCustom,
		Fault:                   &types.SystemError{Reason: "injected by the Sendense lab"},
		Message:                 fmt.Sprintf("%s on VM %s failed: fault injected by the Sendense lab (simulator)", method, v.name),
		MaxCount:                count,
		Enabled:                 true,
	})
	return nil
}

// ClearFaults removes every injected fault.
func (l *Lab) ClearFaults() { l.model.Service.ClearFaultRules() }
