package remote

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/sftp"

	"github.com/sendense/capture/internal/lockfile"
	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/tunnel"
)

// Host is the file system of a remote repository.
var _ repo.FS = (*Host)(nil)

// pathErr names the operation, the file and the machine.
func (h *Host) pathErr(op, p string, err error) error {
	if err == nil {
		return nil
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &fs.PathError{Op: op, Path: h.where + ":" + p, Err: err}
}

// Abs returns dir as an absolute path there: "~" and relative paths are
// relative to the remote home directory.
func (h *Host) Abs(dir string) (string, error) {
	if path.IsAbs(dir) && !strings.HasPrefix(dir, "/~") {
		return path.Clean(dir), nil
	}
	dir = strings.TrimPrefix(strings.TrimPrefix(dir, "/"), "~")
	var home string
	err := h.sftpOp(func(sc *sftp.Client) error {
		var err error
		home, err = sc.Getwd()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("home directory on %s: %w", h.where, err)
	}
	return path.Join(home, strings.TrimPrefix(dir, "/")), nil
}

// noLock is the shared lock of a file system nothing can write to.
type noLock struct{}

func (noLock) Unlock() {}

// ReadAt reads at most n bytes of a remote file at off.
func (h *Host) ReadAt(p string, off int64, n int) ([]byte, error) {
	var b []byte
	err := h.sftpOp(func(sc *sftp.Client) error {
		f, err := sc.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		b = make([]byte, n)
		k, err := f.ReadAt(b, off)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		b = b[:k]
		return err
	})
	return b, h.pathErr("read", p, err)
}

// ReadFile reads a remote file.
func (h *Host) ReadFile(p string) ([]byte, error) {
	var b []byte
	err := h.sftpOp(func(sc *sftp.Client) error {
		f, err := sc.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		b, err = io.ReadAll(f)
		return err
	})
	return b, h.pathErr("read", p, err)
}

// WriteFileAtomic replaces p with data: a temporary file in the same
// directory is written, made p's mode, fsynced (fsync@openssh.com),
// renamed over p (posix-rename@openssh.com) and the directory fsynced, so
// a crash of either side leaves the old or the new content.
func (h *Host) WriteFileAtomic(p string, data []byte, perm fs.FileMode) error {
	dir, base := path.Split(p)
	var b [6]byte
	rand.Read(b[:])
	tmp := path.Join(dir, "."+base+".tmp-"+hex.EncodeToString(b[:]))
	err := h.sftpOp(func(sc *sftp.Client) error {
		f, err := sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err != nil {
			return h.pathErr("create", tmp, err)
		}
		renamed := false
		defer func() {
			if !renamed {
				sc.Remove(tmp)
			}
		}()
		if err := f.Chmod(perm); err != nil {
			f.Close()
			return h.pathErr("chmod", tmp, err)
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return h.pathErr("write", tmp, err)
		}
		if err := h.syncFile(f); err != nil {
			f.Close()
			return h.pathErr("fsync", tmp, err)
		}
		if err := f.Close(); err != nil {
			return h.pathErr("close", tmp, err)
		}
		if err := sc.PosixRename(tmp, p); err != nil {
			return h.pathErr("rename", tmp, err)
		}
		renamed = true
		return nil
	})
	if err != nil {
		return err
	}
	return h.SyncDir(path.Dir(p))
}

var _ qemu.FileCreator = (*Host)(nil)

// CreateFile implements qemu.FileCreator: the file is created there with
// O_EXCL, made 0600 before anything is written, written, sized, fsynced;
// on error the file it created is removed.
func (h *Host) CreateFile(p string, size int64, parts []qemu.FilePart) error {
	return h.sftpOp(func(sc *sftp.Client) (err error) {
		f, err := sc.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err != nil {
			return h.pathErr("create", p, err)
		}
		defer func() {
			if cerr := f.Close(); err == nil && cerr != nil {
				err = h.pathErr("close", p, cerr)
			}
			if err != nil {
				sc.Remove(p) // ours: O_EXCL created it
			}
		}()
		if err := f.Chmod(0o600); err != nil {
			return h.pathErr("chmod", p, err)
		}
		for _, part := range parts {
			if _, err := f.WriteAt(part.Data, part.Off); err != nil {
				return h.pathErr("write", p, err)
			}
		}
		if err := f.Truncate(size); err != nil {
			return h.pathErr("truncate", p, err)
		}
		return h.pathErr("fsync", p, h.syncFile(f))
	})
}

// syncFile fsyncs an open remote file, or the whole file system there
// when the server lacks fsync@openssh.com.
func (h *Host) syncFile(f *sftp.File) error {
	err := f.Sync()
	var se *sftp.StatusError
	if errors.As(err, &se) && se.FxCode() == sftp.ErrSSHFxOpUnsupported {
		return h.syncCmd(f.Name())
	}
	return err
}

// syncCmd runs "sync FILE" there (coreutils fsyncs each file named).
func (h *Host) syncCmd(p string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, _, err := h.run(ctx, tunnel.ShellQuote("sync", "--", p))
	return err
}

// ReadDir lists a remote directory, sorted by name.
func (h *Host) ReadDir(dir string) ([]fs.DirEntry, error) {
	var out []fs.DirEntry
	err := h.sftpOp(func(sc *sftp.Client) error {
		fis, err := sc.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, fi := range fis {
			out = append(out, fs.FileInfoToDirEntry(fi))
		}
		return nil
	})
	slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return out, h.pathErr("readdir", dir, err)
}

// Stat stats a remote file, following symlinks.
func (h *Host) Stat(p string) (fs.FileInfo, error) {
	var fi fs.FileInfo
	err := h.sftpOp(func(sc *sftp.Client) error {
		var err error
		fi, err = sc.Stat(p)
		return err
	})
	return fi, h.pathErr("stat", p, err)
}

// Lstat stats a remote file without following symlinks.
func (h *Host) Lstat(p string) (fs.FileInfo, error) {
	var fi fs.FileInfo
	err := h.sftpOp(func(sc *sftp.Client) error {
		var err error
		fi, err = sc.Lstat(p)
		return err
	})
	return fi, h.pathErr("lstat", p, err)
}

// Remove removes a remote file or empty directory.
func (h *Host) Remove(p string) error {
	return h.pathErr("remove", p, h.sftpOp(func(sc *sftp.Client) error { return sc.Remove(p) }))
}

// Rename renames old to new there, replacing new (posix-rename).
func (h *Host) Rename(old, new string) error {
	return h.pathErr("rename", old, h.sftpOp(func(sc *sftp.Client) error { return sc.PosixRename(old, new) }))
}

// MkdirAll creates dir and its missing parents there with mode perm.
func (h *Host) MkdirAll(dir string, perm fs.FileMode) error {
	return h.sftpOp(func(sc *sftp.Client) error {
		var missing []string
		for d := path.Clean(dir); ; d = path.Dir(d) {
			fi, err := sc.Stat(d)
			if err == nil {
				if !fi.IsDir() {
					return h.pathErr("mkdir", d, syscall.ENOTDIR)
				}
				break
			}
			if !errors.Is(err, os.ErrNotExist) {
				return h.pathErr("mkdir", d, err)
			}
			missing = append(missing, d)
			if d == "/" || d == "." {
				break
			}
		}
		for i := len(missing) - 1; i >= 0; i-- {
			d := missing[i]
			if err := sc.Mkdir(d); err != nil {
				if fi, serr := sc.Stat(d); serr == nil && fi.IsDir() {
					continue // made meanwhile
				}
				return h.pathErr("mkdir", d, err)
			}
			if err := sc.Chmod(d, perm); err != nil {
				return h.pathErr("chmod", d, err)
			}
		}
		return nil
	})
}

// SyncDir fsyncs a remote directory: opened through SFTP and fsynced
// (OpenSSH's sftp-server opens directories like files), else with a
// "sync DIR" command.
func (h *Host) SyncDir(dir string) error {
	err := h.sftpOp(func(sc *sftp.Client) error {
		f, err := sc.Open(dir)
		if err != nil {
			return err
		}
		defer f.Close()
		return f.Sync()
	})
	if err != nil {
		if cerr := h.syncCmd(dir); cerr != nil {
			return h.pathErr("fsync", dir, fmt.Errorf("%v; sync: %w", err, cerr))
		}
	}
	return nil
}

// SyncFile fsyncs an existing remote file.
func (h *Host) SyncFile(p string) error {
	return h.pathErr("fsync", p, h.sftpOp(func(sc *sftp.Client) error {
		f, err := sc.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return h.syncFile(f)
	}))
}

// Usage returns the space each remote file takes (0 when missing or on
// errors), with one command per 500 files.
func (h *Host) Usage(paths ...string) []int64 {
	out := make([]int64, len(paths))
	for start := 0; start < len(paths); start += 500 {
		batch := paths[start:min(len(paths), start+500)]
		ctx, cancel := context.WithTimeout(context.Background(), h.opts.DialTimeout+time.Minute)
		stdout, _, err := h.run(ctx, script(usageScript, "sendense-usage", batch...))
		cancel()
		if err != nil {
			h.log.Warn("measuring file sizes", "err", err)
			continue
		}
		for i, line := range scanLines(string(stdout)) {
			f := strings.Fields(line)
			if i >= len(batch) || len(f) != 2 {
				break
			}
			blocks, _ := strconv.ParseInt(f[0], 10, 64)
			size, _ := strconv.ParseInt(f[1], 10, 64)
			out[start+i] = blocks * size
		}
	}
	return out
}

// TryLock takes the flock at p there without waiting (see remoteLock).
func (h *Host) TryLock(p string, exclusive bool) (repo.Lock, bool, error) {
	mode := "-s"
	if exclusive {
		mode = "-x"
	}
	ctx, cancel := context.WithTimeout(h.ctx, h.opts.DialTimeout+30*time.Second)
	defer cancel()
	o, status, err := h.launch(ctx, nil, lockScript, "sleep", nil, p, mode)
	switch status {
	case 75:
		return nil, false, nil
	case 74:
		return noLock{}, true, nil
	case 73:
		return nil, false, fmt.Errorf("lock file %s on %s: %w", p, h.where, repo.ErrReadOnly)
	}
	if err != nil {
		return nil, false, fmt.Errorf("lock file %s on %s: %w", p, h.where, err)
	}
	return &remoteLock{o: o, path: p}, true, nil
}

// TryExclusive takes the lock at p exclusively and records operation as
// its holder, or returns what the holder recorded.
func (h *Host) TryExclusive(p, operation string) (repo.Lock, *repo.LockHolder, error) {
	l, ok, err := h.TryLock(p, true)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		var holder lockfile.Holder
		if b, err := h.ReadFile(p); err == nil {
			json.Unmarshal(b, &holder)
		}
		return nil, &holder, nil
	}
	b, _ := json.Marshal(lockfile.Holder{Operation: operation, PID: os.Getpid(), Started: time.Now().UTC()})
	err = h.sftpOp(func(sc *sftp.Client) error {
		f, err := sc.OpenFile(p, os.O_WRONLY|os.O_TRUNC)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		slog.Debug("recording the lock holder", "lock", p, "err", err)
	}
	return l, nil, nil
}

// WaitLock takes the lock at p, trying every 250 ms (logging waiting
// once) until it is free or ctx is done.
func (h *Host) WaitLock(ctx context.Context, p string, exclusive bool, waiting string) (repo.Lock, error) {
	logged := false
	for {
		l, ok, err := h.TryLock(p, exclusive)
		if err != nil || ok {
			return l, err
		}
		if !logged {
			h.log.Warn(waiting, "lock", p)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for lock %s on %s: %w", p, h.where, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}
