package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"
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
		who = fmt.Sprintf("a %s (pid %d, started %s)", e.Holder.Operation, e.Holder.PID, e.Holder.Started.Format(time.RFC3339))
	}
	return fmt.Sprintf("VM directory %s is locked: %s is running; retry when it has finished (lock file %s)", e.VM, who, e.Path)
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// LockHolder is what the holder of a VM's lock writes into the lock file.
type LockHolder struct {
	Operation string    `json:"operation"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
}

// fileLock is a held flock.
type fileLock struct{ f *os.File }

func openLockFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}

// tryLock takes the lock at path without waiting; ok is false when
// someone else holds it.
func tryLock(path string, how int) (l *fileLock, ok bool, err error) {
	f, err := openLockFile(path)
	if err != nil {
		return nil, false, fmt.Errorf("lock file %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock file %s: %w", path, err)
	}
	return &fileLock{f}, true, nil
}

// waitLock takes the lock at path, waiting (and saying so once) until it
// is free or ctx is done.
func waitLock(ctx context.Context, path string, how int, waiting string) (*fileLock, error) {
	logged := false
	for {
		l, ok, err := tryLock(path, how)
		if err != nil || ok {
			return l, err
		}
		if !logged {
			slog.Warn(waiting, "lock", path)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (l *fileLock) unlock() {
	if l != nil && l.f != nil {
		syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}

// lockWriter takes a VM directory's writer lock without waiting and
// records the holder.
func lockWriter(vmDir, operation string) (*fileLock, error) {
	path := filepath.Join(vmDir, lockName)
	l, ok, err := tryLock(path, syscall.LOCK_EX)
	if err != nil {
		return nil, err
	}
	if !ok {
		le := &LockedError{VM: vmDir, Path: path}
		if b, err := os.ReadFile(path); err == nil {
			json.Unmarshal(b, &le.Holder)
		}
		return nil, le
	}
	b, _ := json.Marshal(LockHolder{operation, os.Getpid(), time.Now().UTC()})
	if err := l.f.Truncate(0); err == nil {
		l.f.WriteAt(append(b, '\n'), 0)
	}
	return l, nil
}
