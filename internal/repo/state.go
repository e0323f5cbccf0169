package repo

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"
)

// State formats (REPO/<vm-dir>/state.json).
const (
	StateFormat  = "sendense-vm-state"
	StateVersion = 1
)

// State is what the next backup of a VM must know that no manifest says:
// which disks must be copied in full, and why (a CBT query fault, a reset
// changeId, CBT enabled while snapshots existed…).
type State struct {
	Format  string    `json:"format"`  // "sendense-vm-state"
	Version int       `json:"version"` // 1
	VM      VMRef     `json:"vm"`
	Updated time.Time `json:"updated"`
	// ForceFull maps the device key of each disk whose next backup must be
	// full to the reason (for the manifest's reason and the user). Never
	// nil in a State that ReadState returns.
	ForceFull map[int32]string `json:"force_full"`
	// EarlierNames are names the VM had before (a name given to a
	// command matches them too; several VMs matching is an error).
	EarlierNames []string `json:"earlier_names,omitempty"`
}

// readState reads dir/state.json; a missing file is (nil, nil).
func (r *Repo) readState(dir string) (*State, error) {
	path := filepath.Join(dir, stateName)
	b, err := r.readMeta(path, stateAD)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w (remove it: the next backup of each disk is then decided from the manifests)", path, err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt (not valid JSON: %v): remove it (the next backup of each disk is then decided from the manifests)", path, err)
	}
	switch {
	case st.Format != StateFormat:
		return nil, fmt.Errorf("state file %s is corrupt: format %q, not %q", path, st.Format, StateFormat)
	case st.Version > StateVersion:
		return nil, fmt.Errorf("state file %s has version %d, newer than this sendense understands: upgrade sendense", path, st.Version)
	case st.Version < 1:
		return nil, fmt.Errorf("state file %s is corrupt: version %d", path, st.Version)
	}
	return &st, nil
}

// ReadState returns the state of vm (a VM name, moref, instance UUID or
// directory name): an empty State when the VM or its state file does not
// exist yet, an error naming the file when it is corrupt.
func (r *Repo) ReadState(vm string) (*State, error) {
	vd, err := r.findVM(vm)
	if errors.Is(err, ErrNoVM) {
		return &State{Format: StateFormat, Version: StateVersion, ForceFull: map[int32]string{}}, nil
	}
	if err != nil {
		return nil, err
	}
	return r.stateOf(vd)
}

// stateOf reads a VM directory's state (an empty one when there is none).
func (r *Repo) stateOf(vd *vmDir) (*State, error) {
	st, err := r.readState(vd.Path)
	if err != nil {
		return nil, err
	}
	if st == nil {
		st = &State{Format: StateFormat, Version: StateVersion, VM: vd.VM}
	}
	if st.ForceFull == nil {
		st.ForceFull = map[int32]string{}
	}
	return st, nil
}

// WriteState replaces the state of vm (a VM name, moref, instance UUID or
// directory name; its directory exists once a backup began) atomically.
// It sets Format, Version and Updated, and VM when empty.
func (r *Repo) WriteState(vm string, st *State) error {
	vd, err := r.findVM(vm)
	if err != nil {
		return err
	}
	if st.VM == (VMRef{}) {
		st.VM = vd.VM
	}
	return r.writeState(vd, st.VM, st)
}

func (r *Repo) writeState(vd *vmDir, vm VMRef, st *State) error {
	st.Format, st.Version, st.VM, st.Updated = StateFormat, StateVersion, vm, r.now().UTC()
	if st.ForceFull == nil {
		st.ForceFull = map[int32]string{}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(vd.Path, stateName)
	if err := r.writeMeta(path, stateAD, append(b, '\n')); err != nil {
		return fmt.Errorf("writing state file %s: %w", path, err)
	}
	return nil
}
