package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sendense/capture/internal/atomicfile"
	"github.com/sendense/capture/internal/nbd"
	"github.com/sendense/capture/internal/qemu"
)

// RestoreOptions control Restore.
type RestoreOptions struct {
	VM     string  // VM name, moref, instance UUID or directory (required)
	Backup string  // backup id; "" = the latest
	To     string  // output directory (created if needed)
	Format string  // "raw" (default) or "qcow2"
	Force  bool    // replace existing output files
	Disks  []int32 // restore only these disk keys; nil = all
	// OnDisk, if set, is called after each disk.
	OnDisk func(RestoredDisk)
}

// RestoredDisk is one restored disk.
type RestoredDisk struct {
	VM       string  `json:"vm"` // VM directory
	Backup   string  `json:"backup"`
	Disk     int32   `json:"disk"`
	Label    string  `json:"label,omitempty"`
	Capacity uint64  `json:"capacity"`
	Image    string  `json:"image"` // the backup's image read
	Path     string  `json:"path"`  // the file written
	Format   string  `json:"format"`
	Seconds  float64 `json:"seconds"`
}

// RestoreOutput is the output file name of disk key of the VM in dir.
func RestoreOutput(dir, vmDir string, key int32, format string) string {
	return filepath.Join(dir, fmt.Sprintf("%s-disk%d.%s", vmDir, key, format))
}

// partialInfix marks a restore's temporary output: ".NAME.partial-RANDOM".
const partialInfix = ".partial-"

// Restore materialises one backup: each disk's chain becomes one
// standalone image named TO/<vm-dir>-disk<key>.raw or .qcow2.
//
// Before writing anything it checks every disk's chain (check.go) and
// refuses a damaged one, naming the file; an existing output is refused
// unless Force. It then reads each chain through the manifests' names
// only (openChain: a local one directly, a remote one through qemu-nbd
// with every file pinned), writes it under a temporary name locked while
// written, and checks every byte against the manifests (expect.go) as it
// goes: a mismatch is an error naming the
// backup, the disk and the offset, and the output is removed. A complete
// output is fsynced and renamed into place. Temporary outputs of an
// earlier restore that died are removed.
func (r *Repo) Restore(ctx context.Context, opts RestoreOptions) ([]RestoredDisk, error) {
	format := opts.Format
	if format == "" {
		format = "raw"
	}
	if format != "raw" && format != "qcow2" {
		return nil, fmt.Errorf("--format must be raw or qcow2, not %q", opts.Format)
	}
	if opts.To == "" {
		return nil, errors.New("no output directory: use --to DIR")
	}
	if opts.VM == "" {
		return nil, errors.New("name the VM to restore")
	}
	vd, err := r.findVM(opts.VM)
	if err != nil {
		return nil, err
	}
	ix, unlock, err := r.readIndex(ctx, vd)
	if err != nil {
		return nil, err
	}
	defer unlock()

	m, err := ix.restorePoint(opts.Backup)
	if err != nil {
		return nil, err
	}
	disks, err := selectDisks(m, vd, opts.Disks)
	if err != nil {
		return nil, err
	}

	// Check everything before writing anything.
	to, err := filepath.Abs(opts.To)
	if err != nil {
		return nil, err
	}
	chains := map[int32][]layer{}
	for _, d := range disks {
		out := RestoreOutput(to, vd.Name, d.Key, format)
		if localExists(out) && !opts.Force {
			return nil, fmt.Errorf("%s exists: remove it, choose another --to, or use --force to replace it", out)
		}
		layers, err := r.chain(ctx, ix, m, d.Key, true)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, unrestorable(vd.Name, m.ID, err)
		}
		chains[d.Key] = layers
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		return nil, fmt.Errorf("creating the output directory (--to): %w", err)
	}
	for _, d := range disks {
		removeStalePartials(RestoreOutput(to, vd.Name, d.Key, format))
	}

	var out []RestoredDisk
	for _, d := range disks {
		start := time.Now()
		dst := RestoreOutput(to, vd.Name, d.Key, format)
		if err := r.restoreDisk(ctx, chains[d.Key], dst, format); err != nil {
			return out, fmt.Errorf("restoring disk %d of backup %s of VM %s: %w", d.Key, m.ID, vd.Name, err)
		}
		rd := RestoredDisk{VM: vd.Name, Backup: m.ID, Disk: d.Key, Label: d.Label, Capacity: d.Capacity,
			Image: imagePath(vd, d.Image), Path: dst, Format: format, Seconds: time.Since(start).Seconds()}
		out = append(out, rd)
		if opts.OnDisk != nil {
			opts.OnDisk(rd)
		}
	}
	return out, nil
}

// restorePoint is backup id, or the latest restore point when id is "":
// it must be the newest backup (a newer one whose manifest is corrupt is
// not silently skipped).
func (ix *vmIndex) restorePoint(id string) (*Manifest, error) {
	if id != "" {
		return ix.point(id)
	}
	m, err := ix.latest()
	if err == nil {
		for _, id := range ix.ids {
			if compareIDs(id, m.ID) > 0 && ix.bad[id] != nil {
				return nil, fmt.Errorf("the newest backup of VM %s, %s, cannot be used: %w; name the backup to restore with --backup (see 'sendense list')", ix.vd.Name, id, ix.bad[id])
			}
		}
	} else if len(ix.bad) > 0 {
		err = fmt.Errorf("no backup of VM %s can be used: %w", ix.vd.Name, errors.Join(ix.manifestErrors()...))
	}
	return m, err
}

// selectDisks are the disks of m with the keys given (nil: every disk),
// in key order.
func selectDisks(m *Manifest, vd *vmDir, keys []int32) ([]*DiskImage, error) {
	var disks []*DiskImage
	for _, key := range sortedKeys(m) {
		if keys == nil || slices.Contains(keys, key) {
			disks = append(disks, m.Disk(key))
		}
	}
	for _, key := range keys {
		if m.Disk(key) == nil {
			return nil, fmt.Errorf("backup %s of VM %s has no disk %d (it has %v)", m.ID, vd.Name, key, sortedKeys(m))
		}
	}
	return disks, nil
}

// restoreDisk writes the content of the chain (top first) to dst, on
// this machine, checked as it is written.
func (r *Repo) restoreDisk(ctx context.Context, layers []layer, dst, format string) (err error) {
	exp := expect(layers)
	if err := r.completeCuts(ctx, layers, exp); err != nil {
		return restoreMismatch(err)
	}
	rd, err := r.openChain(ctx, layers, false)
	if err != nil {
		return err
	}
	defer rd.Close()
	entries, err := rd.extents(ctx)
	if err != nil {
		return err
	}
	out, err := createPartial(ctx, dst, format, exp.capacity)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			out.remove()
		}
	}()
	if err := out.connect(rd.workers()); err != nil {
		return err
	}
	_, err = r.checkStream(ctx, rd, entries, layers, exp, false, out.write)
	if cerr := rd.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return restoreMismatch(err)
	}
	return out.commit(dst)
}

// restoreMismatch says what a mismatch means for the output.
func restoreMismatch(err error) error {
	var me *MismatchError
	if errors.As(err, &me) {
		return fmt.Errorf("%w: the backup is damaged, the output was removed (run 'sendense verify' for every problem)", err)
	}
	return err
}

// partialOutput is a restore's output being written: a file named
// .NAME.partial-RANDOM next to it, locked (flock) while it is written so
// that a later restore can tell a dead restore's leftover from a live
// one. A qcow2 output is written through a local qemu-nbd.
type partialOutput struct {
	path   string
	f      *os.File // holds the lock; the raw output's data goes through it
	format string
	srv    *qemu.Server
	hs     []*nbd.Handle
	mu     sync.Mutex // serializes raw writes
	dirty  uint64     // bytes written since the last write-back started
}

// writebackEvery is how many bytes of a raw output are written between
// two starts of its write-back.
const writebackEvery = 32 << 20

// createPartial creates dst's temporary output (0600).
func createPartial(ctx context.Context, dst, format string, capacity uint64) (*partialOutput, error) {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+partialInfix+"*")
	if err != nil {
		return nil, err
	}
	o := &partialOutput{path: f.Name(), f: f, format: format}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		o.remove()
		return nil, fmt.Errorf("locking %s: %w", o.path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		o.remove()
		return nil, err
	}
	if format == "raw" {
		if err := f.Truncate(int64(capacity)); err != nil {
			o.remove()
			return nil, err
		}
		return o, nil
	}
	if err := qemu.Default.FormatImage(ctx, o.path, capacity); err != nil {
		o.remove()
		return nil, err
	}
	o.srv, err = qemu.Default.ServeNBD(ctx, o.path, qemu.ServeOptions{Format: "qcow2", Backing: []string{}})
	if err != nil {
		o.remove()
		return nil, err
	}
	return o, nil
}

// connect opens one NBD connection per reading goroutine (qcow2).
func (o *partialOutput) connect(n int) error {
	if o.srv == nil {
		return nil
	}
	for range n {
		h, err := nbd.Dial(o.srv.URI())
		if err != nil {
			return fmt.Errorf("writing %s: %w", o.path, err)
		}
		o.hs = append(o.hs, h)
	}
	return nil
}

// write writes data at off (reading goroutine worker).
func (o *partialOutput) write(worker int, off uint64, data []byte) error {
	if o.srv == nil {
		// One writer at a time: parallel writes to one file only spin on
		// its inode lock (the readers and hashing stay parallel).
		o.mu.Lock()
		defer o.mu.Unlock()
		if _, err := o.f.WriteAt(data, int64(off)); err != nil {
			return err
		}
		// Start the write-back as the data comes, so that the fsync at
		// the end waits for little (the kernel would wait for its dirty
		// limits otherwise).
		if o.dirty += uint64(len(data)); o.dirty >= writebackEvery {
			o.dirty = 0
			unix.SyncFileRange(int(o.f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
		}
		return nil
	}
	return o.hs[worker].Pwrite(data, off, 0)
}

// commit makes the output durable and renames it to dst.
func (o *partialOutput) commit(dst string) error {
	if o.srv != nil {
		for _, h := range o.hs {
			if err := h.Flush(0); err != nil {
				return fmt.Errorf("writing %s: %w", o.path, err)
			}
			h.Close()
		}
		o.hs = nil
		err := o.srv.Close()
		o.srv = nil
		if err != nil {
			return err
		}
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", o.path, err)
	}
	if err := atomicfile.Rename(o.path, dst); err != nil {
		return err
	}
	o.f.Close() // releases the lock
	return nil
}

// remove removes the temporary output.
func (o *partialOutput) remove() {
	for _, h := range o.hs {
		h.Close()
	}
	if o.srv != nil {
		o.srv.Close()
	}
	os.Remove(o.path)
	o.f.Close()
}

// removeStalePartials removes the temporary outputs for dst that a
// restore that died left behind (their lock is free).
func removeStalePartials(dst string) {
	dir, prefix := filepath.Dir(dst), "."+filepath.Base(dst)+partialInfix
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW, 0)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			slog.Info("removing the temporary output of an interrupted restore", "file", p)
			os.Remove(p)
		}
		f.Close()
	}
}

// localExists is exists on this machine.
func localExists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
