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

// TryLock takes the lock at path (created 0600 if needed) without waiting;
// ok is false when someone else holds it.
func TryLock(path string, exclusive bool) (l *Lock, ok bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("lock file %s: %w", path, err)
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
	logged := false
	for {
		l, ok, err := TryLock(path, exclusive)
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
	l, ok, err := TryLock(path, true)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		var h Holder
		if b, err := os.ReadFile(path); err == nil {
			json.Unmarshal(b, &h)
		}
		return nil, &h, nil
	}
	b, _ := json.Marshal(Holder{operation, os.Getpid(), time.Now().UTC()})
	if err := l.f.Truncate(0); err == nil {
		l.f.WriteAt(append(b, '\n'), 0)
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
