package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/sendense/capture/internal/lockfile"
)

// confinedFS is a repository's file system as the repository uses it:
// every path must lie inside the repository's directory (checked on the
// path's text: clean, absolute, under that directory), and on this
// machine every operation goes through an os.Root opened on that
// directory, so that no name — crafted, or a symbolic link — leads
// outside it. Lock files must moreover be regular files, not links (a
// lock's holder is written into it).
type confinedFS struct {
	FS            // the machine's file system (Local or a remote one)
	dir  string   // the repository's absolute path
	root *os.Root // this machine: every operation goes through it
}

// newConfined confines fsys to dir (which exists).
func newConfined(fsys FS, dir string) (*confinedFS, error) {
	c := &confinedFS{FS: fsys, dir: filepath.Clean(dir)}
	if _, ok := fsys.(localFS); ok {
		root, err := os.OpenRoot(dir)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", dir, err)
		}
		c.root = root
	}
	return c, nil
}

// close releases the root.
func (c *confinedFS) close() {
	if c.root != nil {
		c.root.Close()
	}
}

// outsideError is a path outside the repository.
type outsideError struct{ path, dir string }

func (e *outsideError) Error() string {
	return fmt.Sprintf("%s is outside the repository %s: refused", e.path, e.dir)
}

// rel returns p relative to the repository's directory ("." for itself).
func (c *confinedFS) rel(p string) (string, error) {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return "", &outsideError{p, c.dir}
	}
	if p == c.dir {
		return ".", nil
	}
	rest, ok := strings.CutPrefix(p, c.dir+"/")
	if !ok || c.dir == "/" && !strings.HasPrefix(p, "/") {
		return "", &outsideError{p, c.dir}
	}
	if c.dir == "/" {
		rest = p[1:]
	}
	return rest, nil
}

// pathErr names the full path in an error of the root.
func (c *confinedFS) pathErr(p string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return &fs.PathError{Op: pe.Op, Path: p, Err: pe.Err}
	}
	return err
}

func (c *confinedFS) ReadFile(p string) ([]byte, error) {
	rel, err := c.rel(p)
	if err != nil {
		return nil, err
	}
	if c.root == nil {
		return c.FS.ReadFile(p)
	}
	b, err := c.root.ReadFile(rel)
	return b, c.pathErr(p, err)
}

func (c *confinedFS) ReadAt(p string, off int64, n int) ([]byte, error) {
	rel, err := c.rel(p)
	if err != nil {
		return nil, err
	}
	if c.root == nil {
		return c.FS.ReadAt(p, off, n)
	}
	f, err := c.root.Open(rel)
	if err != nil {
		return nil, c.pathErr(p, err)
	}
	defer f.Close()
	b, err := readAt(f, off, n)
	return b, c.pathErr(p, err)
}

// tempName is the name of an atomic write's temporary file for name:
// ".NAME.tmp-RANDOM" (what leftovers recognises).
func tempName(name string) string {
	var b [6]byte
	rand.Read(b[:])
	return "." + name + ".tmp-" + hex.EncodeToString(b[:])
}

func (c *confinedFS) WriteFileAtomic(p string, data []byte, perm fs.FileMode) error {
	rel, err := c.rel(p)
	if err != nil {
		return err
	}
	if c.root == nil {
		return c.FS.WriteFileAtomic(p, data, perm)
	}
	dir := filepath.Dir(rel)
	tmp := filepath.Join(dir, tempName(filepath.Base(rel)))
	f, err := c.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return c.pathErr(filepath.Join(c.dir, tmp), err)
	}
	renamed := false
	defer func() {
		if !renamed {
			c.root.Remove(tmp)
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if err := c.root.Rename(tmp, rel); err != nil {
		return c.pathErr(p, err)
	}
	renamed = true
	return c.syncDir(dir)
}

func (c *confinedFS) ReadDir(p string) ([]fs.DirEntry, error) {
	rel, err := c.rel(p)
	if err != nil {
		return nil, err
	}
	if c.root == nil {
		return c.FS.ReadDir(p)
	}
	f, err := c.root.Open(rel)
	if err != nil {
		return nil, c.pathErr(p, err)
	}
	defer f.Close()
	entries, err := f.ReadDir(-1)
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return entries, c.pathErr(p, err)
}

func (c *confinedFS) Stat(p string) (fs.FileInfo, error) {
	rel, err := c.rel(p)
	if err != nil {
		return nil, err
	}
	if c.root == nil {
		return c.FS.Stat(p)
	}
	fi, err := c.root.Stat(rel)
	return fi, c.pathErr(p, err)
}

func (c *confinedFS) Lstat(p string) (fs.FileInfo, error) {
	rel, err := c.rel(p)
	if err != nil {
		return nil, err
	}
	if c.root == nil {
		return c.FS.Lstat(p)
	}
	fi, err := c.root.Lstat(rel)
	return fi, c.pathErr(p, err)
}

func (c *confinedFS) Remove(p string) error {
	rel, err := c.rel(p)
	if err != nil {
		return err
	}
	if c.root == nil {
		return c.FS.Remove(p)
	}
	return c.pathErr(p, c.root.Remove(rel))
}

func (c *confinedFS) Rename(old, new string) error {
	ro, err := c.rel(old)
	if err != nil {
		return err
	}
	rn, err := c.rel(new)
	if err != nil {
		return err
	}
	if c.root == nil {
		return c.FS.Rename(old, new)
	}
	return c.pathErr(old, c.root.Rename(ro, rn))
}

func (c *confinedFS) MkdirAll(p string, perm fs.FileMode) error {
	rel, err := c.rel(p)
	if err != nil {
		return err
	}
	if c.root == nil {
		return c.FS.MkdirAll(p, perm)
	}
	return c.pathErr(p, c.root.MkdirAll(rel, perm))
}

func (c *confinedFS) SyncDir(p string) error {
	rel, err := c.rel(p)
	if err != nil {
		return err
	}
	if c.root == nil {
		return c.FS.SyncDir(p)
	}
	return c.syncDir(rel)
}

func (c *confinedFS) syncDir(rel string) error {
	d, err := c.root.Open(rel)
	if err != nil {
		return c.pathErr(filepath.Join(c.dir, rel), err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("fsync directory %s: %w", filepath.Join(c.dir, rel), err)
	}
	return nil
}

func (c *confinedFS) SyncFile(p string) error {
	rel, err := c.rel(p)
	if err != nil {
		return err
	}
	if c.root == nil {
		return c.FS.SyncFile(p)
	}
	f, err := c.root.OpenFile(rel, os.O_RDWR, 0)
	if err != nil {
		return c.pathErr(p, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	return nil
}

func (c *confinedFS) Usage(paths ...string) []int64 {
	for _, p := range paths {
		if _, err := c.rel(p); err != nil {
			return make([]int64, len(paths))
		}
	}
	if c.root == nil {
		return c.FS.Usage(paths...)
	}
	out := make([]int64, len(paths))
	for i, p := range paths {
		rel, _ := c.rel(p)
		if fi, err := c.root.Lstat(rel); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				out[i] = st.Blocks * 512
			}
		}
	}
	return out
}

// Locks. On this machine a lock file is opened through the root, must be
// a regular file (a link could make the holder's record overwrite another
// file), and a shared lock needs no write access: on a read-only file
// system (a read-only mount, an immutable copy) it is taken on a file
// opened read-only, or — when the file does not exist and cannot be
// created — not at all, since nothing can change the files there.

// noLock is the shared lock of a repository nothing can write to.
type noLock struct{}

func (noLock) Unlock() {}

// readOnly says whether err means the file system or the permissions
// forbid writing.
func readOnly(err error) bool {
	return errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)
}

// openLock opens the lock file rel; nil (no error) for a shared lock
// that cannot exist on a read-only repository.
func (c *confinedFS) openLock(p, rel string, exclusive bool) (*os.File, error) {
	notRegular := fmt.Errorf("lock file %s is not a regular file (a symbolic link?): a repository's lock files always are; remove it", p)
	if fi, err := c.root.Lstat(rel); err == nil && !fi.Mode().IsRegular() {
		return nil, notRegular
	}
	f, err := c.root.OpenFile(rel, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil && readOnly(err) {
		if exclusive {
			return nil, &ReadOnlyError{Where: location(c.FS, c.dir), Err: c.pathErr(p, err)}
		}
		f, err = c.root.OpenFile(rel, os.O_RDONLY, 0)
		if err != nil && (errors.Is(err, fs.ErrNotExist) || readOnly(err)) {
			slog.Debug("read-only repository: reading without a lock", "lock", p)
			return nil, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("lock file %s: %w", p, c.pathErr(p, err))
	}
	fi, err := f.Stat()
	if err == nil && fi.Mode().IsRegular() {
		var lfi fs.FileInfo
		if lfi, err = c.root.Lstat(rel); err == nil && lfi.Mode().IsRegular() {
			return f, nil
		}
	}
	f.Close()
	return nil, notRegular
}

// openLockAt is the lockfile.Opener of the confined file system.
func (c *confinedFS) openLockAt(p string, exclusive bool) (*os.File, error) {
	rel, err := c.rel(p)
	if err != nil {
		return nil, err
	}
	return c.openLock(p, rel, exclusive)
}

func (c *confinedFS) TryLock(p string, exclusive bool) (Lock, bool, error) {
	if c.root == nil {
		if _, err := c.rel(p); err != nil {
			return nil, false, err
		}
		return c.FS.TryLock(p, exclusive)
	}
	l, ok, err := lockfile.TryLockWith(c.openLockAt, p, exclusive)
	if !ok || err != nil {
		return nil, ok, err
	}
	return l, true, nil
}

func (c *confinedFS) TryExclusive(p, operation string) (Lock, *LockHolder, error) {
	if c.root == nil {
		if _, err := c.rel(p); err != nil {
			return nil, nil, err
		}
		return c.FS.TryExclusive(p, operation)
	}
	l, h, err := lockfile.TryExclusiveWith(c.openLockAt, c.ReadFile, p, operation)
	if l == nil {
		return nil, h, err
	}
	return l, h, err
}

func (c *confinedFS) WaitLock(ctx context.Context, p string, exclusive bool, waiting string) (Lock, error) {
	if c.root == nil {
		if _, err := c.rel(p); err != nil {
			return nil, err
		}
		return c.FS.WaitLock(ctx, p, exclusive, waiting)
	}
	l, err := lockfile.WaitWith(ctx, c.openLockAt, p, exclusive, waiting)
	if l == nil {
		return nil, err
	}
	return l, err
}

// ErrReadOnly matches a ReadOnlyError.
var ErrReadOnly = errors.New("read-only repository")

// ReadOnlyError says that a command that writes (backup, prune) met a
// repository it cannot write to: a read-only file system or permissions.
type ReadOnlyError struct {
	Where string // the repository
	Err   error  // what failed
}

func (e *ReadOnlyError) Error() string {
	return fmt.Sprintf("repository %s is read-only (%v): backup and prune need write access to it; list, verify and restore work on a read-only repository", e.Where, e.Err)
}

func (e *ReadOnlyError) Unwrap() []error { return []error{ErrReadOnly, e.Err} }

// asReadOnly turns a write refused by the file system into a
// ReadOnlyError.
func (r *Repo) asReadOnly(err error) error {
	var ro *ReadOnlyError
	if err == nil || errors.As(err, &ro) || !(readOnly(err) || errors.Is(err, ErrReadOnly)) {
		return err
	}
	return &ReadOnlyError{Where: r.Location(), Err: err}
}

// Writable checks that the repository can be written to (a file is
// created and removed at its top): a ReadOnlyError when it cannot.
func (r *Repo) Writable() error {
	p := filepath.Join(r.Dir, tempName("sendense-write-test"))
	if err := r.fs.WriteFileAtomic(p, nil, 0o600); err != nil {
		return r.asReadOnly(err)
	}
	return r.fs.Remove(p)
}
