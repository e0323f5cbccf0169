package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/atomicfile"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/lockfile"
)

// ReplicationStateFormat names the replication state file format.
const ReplicationStateFormat = "sendense-replication-state"

// ReplicationState is what replication remembers per target: which disk
// of which VM it holds and up to which changeId, so the next run is an
// incremental in place. It lives in one JSON file (by default next to the
// configuration), written atomically.
type ReplicationState struct {
	Format  string                  `json:"format"`
	Version int                     `json:"version"`
	Targets map[string]*TargetState `json:"targets"` // by target URI
}

// TargetState is one replication target's state.
type TargetState struct {
	VM        string    `json:"vm"`
	Moref     string    `json:"moref"`
	DiskKey   int32     `json:"disk_key"`
	DiskUUID  string    `json:"disk_uuid,omitempty"`
	Capacity  uint64    `json:"capacity"`
	ChangeID  string    `json:"change_id,omitempty"`  // what the target holds; base of the next incremental
	ForceFull string    `json:"force_full,omitempty"` // why the next run must be full (a failed CBT query)
	Updated   time.Time `json:"updated"`
}

func (t *TargetState) diskState() *cbt.DiskState {
	if t == nil {
		return nil
	}
	return &cbt.DiskState{Key: t.DiskKey, UUID: t.DiskUUID, Capacity: t.Capacity, ChangeID: t.ChangeID}
}

// readReplicationState reads the state file; a missing file is an empty
// state, a corrupt one an error naming it.
func readReplicationState(path string) (*ReplicationState, error) {
	st := &ReplicationState{Format: ReplicationStateFormat, Version: 1, Targets: map[string]*TargetState{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("replication state: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("replication state %s is corrupt: %w (move it away to start over with full copies)", path, err)
	}
	if st.Format != ReplicationStateFormat || st.Version != 1 {
		return nil, fmt.Errorf("replication state %s: not a %s version 1 file", path, ReplicationStateFormat)
	}
	if st.Targets == nil {
		st.Targets = map[string]*TargetState{}
	}
	return st, nil
}

// updateReplicationState applies update to the state file under its
// lock (other jobs may update other targets at the same time) and writes
// it atomically.
func updateReplicationState(ctx context.Context, path string, update func(*ReplicationState)) error {
	l, err := lockfile.Wait(ctx, path+".lock", true, "waiting for another job to update the replication state")
	if err != nil {
		return err
	}
	defer l.Unlock()
	st, err := readReplicationState(path)
	if err != nil {
		return err
	}
	update(st)
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing the replication state %s: %w", path, err)
	}
	return nil
}

// DefaultReplicationState is where replication state is kept by default:
// sendense-replication.json next to the configuration file, else
// $XDG_STATE_HOME/sendense/replication.json.
func DefaultReplicationState(cfg *config.Config) string {
	if cfg.File != "" {
		return filepath.Join(filepath.Dir(cfg.File), "sendense-replication.json")
	}
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "sendense", "replication.json")
}
