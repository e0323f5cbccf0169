package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/sendense/capture/internal/atomicfile"
	"github.com/sendense/capture/internal/lockfile"
)

// FS is the file system a repository lives on: this machine's (Local) or
// another machine's (internal/remote, over SSH). Paths are absolute paths
// on that machine. Errors for missing files match fs.ErrNotExist.
type FS interface {
	// Name names the machine in messages and locations: "" for this one,
	// "ssh://user@host:port" for a remote one.
	Name() string
	// Abs returns dir as an absolute path.
	Abs(dir string) (string, error)

	ReadFile(path string) ([]byte, error)
	// ReadAt reads at most n bytes at off (fewer at the end of the file).
	ReadAt(path string, off int64, n int) ([]byte, error)
	// WriteFileAtomic replaces path with data so that a crash leaves the
	// old or the new content: a temporary file in the same directory is
	// written and fsynced, renamed over path, and the directory fsynced.
	WriteFileAtomic(path string, data []byte, perm fs.FileMode) error
	// ReadDir lists dir sorted by name (types as lstat sees them).
	ReadDir(dir string) ([]fs.DirEntry, error)
	Stat(path string) (fs.FileInfo, error)
	Lstat(path string) (fs.FileInfo, error)
	Remove(path string) error
	// Rename renames old to new, replacing new; SyncDir makes it durable.
	Rename(old, new string) error
	MkdirAll(dir string, perm fs.FileMode) error
	// SyncDir fsyncs a directory (renames and removals in it).
	SyncDir(dir string) error
	// SyncFile fsyncs an existing file.
	SyncFile(path string) error
	// Usage returns the space each file takes on disk (0 when missing).
	Usage(paths ...string) []int64

	// TryLock takes the advisory lock at path (created 0600 if needed)
	// without waiting; ok is false when someone else holds it. A lock
	// lives until Unlock or until its holder ends.
	TryLock(path string, exclusive bool) (l Lock, ok bool, err error)
	// TryExclusive takes the lock at path exclusively without waiting and
	// records operation as its holder. When someone else holds it, it
	// returns a nil Lock and what the holder recorded.
	TryExclusive(path, operation string) (Lock, *LockHolder, error)
	// WaitLock takes the lock at path, waiting (and logging waiting once)
	// until it is free or ctx is done.
	WaitLock(ctx context.Context, path string, exclusive bool, waiting string) (Lock, error)
}

// Lock is a held lock of an FS.
type Lock interface {
	// Unlock releases the lock; it is safe to call twice.
	Unlock()
}

// lockErr is implemented by locks that can be lost while held (a remote
// lock whose holder lost its connection for longer than its lease): Err
// says so.
type lockErr interface {
	Err() error
}

// Local is this machine's file system.
var Local FS = localFS{}

type localFS struct{}

func (localFS) Name() string                         { return "" }
func (localFS) Abs(dir string) (string, error)       { return filepath.Abs(dir) }
func (localFS) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }
func (localFS) WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return atomicfile.WriteFile(path, data, perm)
}
func (localFS) ReadDir(dir string) ([]fs.DirEntry, error) { return os.ReadDir(dir) }
func (localFS) ReadAt(path string, off int64, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAt(f, off, n)
}
func (localFS) Stat(path string) (fs.FileInfo, error)       { return os.Stat(path) }
func (localFS) Lstat(path string) (fs.FileInfo, error)      { return os.Lstat(path) }
func (localFS) Remove(path string) error                    { return os.Remove(path) }
func (localFS) Rename(old, new string) error                { return os.Rename(old, new) }
func (localFS) MkdirAll(dir string, perm fs.FileMode) error { return os.MkdirAll(dir, perm) }
func (localFS) SyncDir(dir string) error                    { return atomicfile.SyncDir(dir) }

func (localFS) SyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

func (localFS) Usage(paths ...string) []int64 {
	out := make([]int64, len(paths))
	for i, p := range paths {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err == nil {
			out[i] = st.Blocks * 512
		}
	}
	return out
}

func (localFS) TryLock(path string, exclusive bool) (Lock, bool, error) {
	l, ok, err := lockfile.TryLock(path, exclusive)
	if !ok || err != nil {
		return nil, ok, err
	}
	return l, true, nil
}

func (localFS) TryExclusive(path, operation string) (Lock, *LockHolder, error) {
	l, h, err := lockfile.TryExclusive(path, operation)
	if l == nil {
		return nil, h, err
	}
	return l, h, err
}

func (localFS) WaitLock(ctx context.Context, path string, exclusive bool, waiting string) (Lock, error) {
	l, err := lockfile.Wait(ctx, path, exclusive, waiting)
	if l == nil {
		return nil, err
	}
	return l, err
}

// readAt reads at most n bytes of f at off.
func readAt(f io.ReaderAt, off int64, n int) ([]byte, error) {
	b := make([]byte, n)
	k, err := f.ReadAt(b, off)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return b[:k], err
}

// exists says whether path exists (errors other than "not found" count as
// existing, so nothing is overwritten by mistake).
func (r *Repo) exists(path string) bool {
	_, err := r.fs.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// allocated is the space a file takes on disk, 0 when it is missing.
func (r *Repo) allocated(path string) int64 { return r.fs.Usage(path)[0] }

// rename renames old to new and fsyncs new's directory.
func (r *Repo) rename(old, new string) error {
	if err := r.fs.Rename(old, new); err != nil {
		return err
	}
	return r.fs.SyncDir(filepath.Dir(new))
}

// glob lists the names in dir that start with prefix and end with suffix,
// sorted.
func (r *Repo) glob(dir, prefix, suffix string) []string {
	entries, err := r.fs.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, prefix) && strings.HasSuffix(n, suffix) && len(n) >= len(prefix)+len(suffix) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
