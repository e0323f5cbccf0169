package repo

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

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

// lockWriter takes a VM directory's writer lock and records the holder.
// It does not wait for a backup or a prune, but tries a few times within
// half a second: verify holds the lock shared for an instant to see
// whether one runs (leftovers).
func (r *Repo) lockWriter(vmDir, operation string) (Lock, error) {
	path := filepath.Join(vmDir, lockName)
	for try := 0; ; try++ {
		l, holder, err := r.fs.TryExclusive(path, operation)
		if err != nil {
			return nil, r.asReadOnly(err)
		}
		if holder == nil {
			return l, nil
		}
		if try == 4 {
			return nil, &LockedError{VM: location(r.fs, vmDir), Holder: *holder, Path: path}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writerRunning says whether a backup or a prune of the VM may hold its
// writer lock (false on a repository where nothing can write).
func (r *Repo) writerRunning(vmDir string) bool {
	l, ok, err := r.fs.TryLock(filepath.Join(vmDir, lockName), false)
	if err != nil || !ok {
		return true
	}
	l.Unlock()
	return false
}
