// Package lockfile holds advisory locks (flock) on files, optionally
// recording who holds them, for jobs that must not interleave.
package lockfile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"
)

// Lock is a held flock.
type Lock struct{ f *os.File }

// Holder is what the holder of an exclusive lock writes into its file.
type Holder struct {
	Operation string    `json:"operation"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
}

func (h Holder) String() string {
	if h.Operation == "" {
		return "another process"
	}
	return fmt.Sprintf("a %s (pid %d, started %s)", h.Operation, h.PID, h.Started.Format(time.RFC3339))
}

// Opener opens the lock file at path for a lock (exclusive or shared). A
// nil file without an error means no lock is needed (a file system
// nothing can write to): the lock is then taken, and holds nothing.
type Opener func(path string, exclusive bool) (*os.File, error)

// openFile is the Opener of a plain path: created 0600 if needed.
func openFile(path string, _ bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file %s: %w", path, err)
	}
	return f, nil
}

// TryLock takes the lock at path (created 0600 if needed) without waiting;
// ok is false when someone else holds it.
func TryLock(path string, exclusive bool) (l *Lock, ok bool, err error) {
	return TryLockWith(openFile, path, exclusive)
}

// TryLockWith is TryLock on the file open opens.
func TryLockWith(open Opener, path string, exclusive bool) (l *Lock, ok bool, err error) {
	f, err := open(path, exclusive)
	if err != nil {
		return nil, false, err
	}
	if f == nil {
		return &Lock{}, true, nil
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock file %s: %w", path, err)
	}
	return &Lock{f}, true, nil
}

// Wait takes the lock at path, waiting (and logging waiting once) until
// it is free or ctx is done.
func Wait(ctx context.Context, path string, exclusive bool, waiting string) (*Lock, error) {
	return WaitWith(ctx, openFile, path, exclusive, waiting)
}

// WaitWith is Wait on the file open opens.
func WaitWith(ctx context.Context, open Opener, path string, exclusive bool, waiting string) (*Lock, error) {
	logged := false
	for {
		l, ok, err := TryLockWith(open, path, exclusive)
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

// TryExclusive takes the lock at path exclusively without waiting and
// records operation as its holder. When someone else holds it, it returns
// a nil Lock and what the holder recorded.
func TryExclusive(path, operation string) (*Lock, *Holder, error) {
	return TryExclusiveWith(openFile, os.ReadFile, path, operation)
}

// TryExclusiveWith is TryExclusive on the file open opens, the holder's
// record read with read.
func TryExclusiveWith(open Opener, read func(path string) ([]byte, error), path, operation string) (*Lock, *Holder, error) {
	l, ok, err := TryLockWith(open, path, true)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		var h Holder
		if b, err := read(path); err == nil {
			json.Unmarshal(b, &h)
		}
		return nil, &h, nil
	}
	if l.f != nil {
		b, _ := json.Marshal(Holder{operation, os.Getpid(), time.Now().UTC()})
		if err := l.f.Truncate(0); err == nil {
			l.f.WriteAt(append(b, '\n'), 0)
		}
	}
	return l, nil, nil
}

// Unlock releases the lock; it is safe to call on nil and twice.
func (l *Lock) Unlock() {
	if l != nil && l.f != nil {
		syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}
