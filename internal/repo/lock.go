package repo

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/sendense/capture/internal/lockfile"
)

// Each VM directory has two lock files (flock):
//
//	lock       held exclusively by a backup or a prune of the VM: they never
//	           interleave (another VM's backup may run at the same time);
//	           the holder writes who it is into the file
//	read.lock  held shared by restore and verify while they read the VM's
//	           files, and exclusively by prune while it changes them
//
// A backup only adds files, so restore and verify run next to it.
const (
	lockName     = "lock"
	readLockName = "read.lock"
)

// ErrLocked is returned when another process holds a VM's lock.
var ErrLocked = errors.New("locked")

// LockedError says which operation holds a VM's lock.
type LockedError struct {
	VM     string // VM directory
	Holder LockHolder
	Path   string
}

func (e *LockedError) Error() string {
	who := "another backup or prune"
	if e.Holder.Operation != "" {
		who = e.Holder.String()
	}
	return fmt.Sprintf("VM directory %s is locked: %s is running; retry when it has finished (lock file %s)", e.VM, who, e.Path)
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// LockHolder is what the holder of a VM's lock writes into the lock file.
type LockHolder = lockfile.Holder

// lockWriter takes a VM directory's writer lock without waiting and
// records the holder.
func (r *Repo) lockWriter(vmDir, operation string) (Lock, error) {
	path := filepath.Join(vmDir, lockName)
	l, holder, err := r.fs.TryExclusive(path, operation)
	if err != nil {
		return nil, err
	}
	if holder != nil {
		return nil, &LockedError{VM: location(r.fs, vmDir), Holder: *holder, Path: path}
	}
	return l, nil
}
