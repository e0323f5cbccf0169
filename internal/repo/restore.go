package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sendense/capture/internal/atomicfile"
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

// Restore materialises one backup: each disk's image, with its backing
// chain, becomes one standalone image (qemu-img convert) named
// TO/<vm-dir>-disk<key>.raw or .qcow2. Existing outputs are refused unless
// Force; a missing image, backing file or manifest is an error naming it.
// Outputs are written under a temporary name and renamed when complete.
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
	rl, err := r.readLock(ctx, vd)
	if err != nil {
		return nil, err
	}
	defer rl.Unlock()

	var m *Manifest
	if opts.Backup == "" {
		m, err = r.latestIn(vd)
	} else {
		m, err = r.manifestByID(vd, opts.Backup)
	}
	if err != nil {
		return nil, err
	}
	var disks []*DiskImage
	for _, key := range sortedKeys(m) {
		if opts.Disks == nil || slices.Contains(opts.Disks, key) {
			disks = append(disks, m.Disk(key))
		}
	}
	for _, key := range opts.Disks {
		if m.Disk(key) == nil {
			return nil, fmt.Errorf("backup %s of VM %s has no disk %d (it has %v)", m.ID, vd.Name, key, sortedKeys(m))
		}
	}

	// Check everything before writing anything.
	to, err := filepath.Abs(opts.To)
	if err != nil {
		return nil, err
	}
	for _, d := range disks {
		out := RestoreOutput(to, vd.Name, d.Key, format)
		if localExists(out) && !opts.Force {
			return nil, fmt.Errorf("%s exists: remove it, choose another --to, or use --force to replace it", out)
		}
		if err := r.checkChain(ctx, vd, m, d); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		return nil, fmt.Errorf("creating the output directory (--to): %w", err)
	}

	var out []RestoredDisk
	for _, d := range disks {
		start := time.Now()
		dst := RestoreOutput(to, vd.Name, d.Key, format)
		if err := r.convert(ctx, filepath.Join(vd.Path, d.Image), dst, format); err != nil {
			return out, fmt.Errorf("restoring disk %d of backup %s: %w", d.Key, m.ID, err)
		}
		rd := RestoredDisk{VM: vd.Name, Backup: m.ID, Disk: d.Key, Label: d.Label, Capacity: d.Capacity,
			Image: filepath.Join(vd.Path, d.Image), Path: dst, Format: format, Seconds: time.Since(start).Seconds()}
		out = append(out, rd)
		if opts.OnDisk != nil {
			opts.OnDisk(rd)
		}
	}
	return out, nil
}

// checkChain makes sure the image of d and every backing file it needs
// exist, following the images' own headers (what qemu reads), and that
// the manifests of the backups holding them exist.
func (r *Repo) checkChain(ctx context.Context, vd *vmDir, m *Manifest, d *DiskImage) error {
	j, _ := r.readJournal(vd.Path)
	img := filepath.Join(vd.Path, d.Image)
	if !r.exists(img) {
		return fmt.Errorf("backup %s disk %d: image %s is missing", m.ID, d.Key, img)
	}
	for depth := 0; ; depth++ {
		if depth > 10000 {
			return fmt.Errorf("backup %s disk %d: the backing chain of %s loops", m.ID, d.Key, img)
		}
		info, err := r.Tools.Info(ctx, img)
		if err != nil {
			return fmt.Errorf("backup %s disk %d: %w", m.ID, d.Key, err)
		}
		if info.BackingFilename == "" {
			return nil
		}
		next := info.BackingFilename
		if !filepath.IsAbs(next) {
			next = filepath.Join(filepath.Dir(img), next)
		}
		if !r.exists(next) {
			return fmt.Errorf("backup %s disk %d: the backing file %s of %s is missing: this backup cannot be restored (an earlier one may be)", m.ID, d.Key, next, filepath.Base(img))
		}
		// The backup holding it must still be a backup (or be merged by a
		// pending prune, which keeps the files until done).
		if id, _, ok := parseImageName(filepath.Base(next)); ok && filepath.Dir(next) == vd.Path && (j == nil || !slices.Contains(j.Drop, id)) {
			if mp := filepath.Join(vd.Path, id+".json"); !r.exists(mp) {
				return fmt.Errorf("backup %s disk %d: the manifest %s of backup %s, which holds the backing file %s, is missing", m.ID, d.Key, mp, id, filepath.Base(next))
			}
		}
		img = next
	}
}

// convert writes src's content to dst (on this machine) via a temporary
// file in dst's directory, fsynced and renamed into place. A remote
// repository's image is served read-only by qemu-nbd where it is, and
// qemu-img here converts what it reads through the tunnel: the data
// crosses the network once, holes are not sent, nothing is written on
// the remote side.
func (r *Repo) convert(ctx context.Context, src, dst, format string) error {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".partial-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Close()
	os.Remove(tmp) // qemu-img creates it
	defer os.Remove(tmp)
	opts := qemu.ConvertOptions{SrcFormat: "qcow2", OutFormat: format, OutOfOrder: format == "raw"}
	if r.Local() {
		err = r.Tools.Convert(ctx, src, tmp, opts)
	} else {
		var srv *qemu.Server
		srv, err = r.Tools.ServeNBD(ctx, src, qemu.ServeOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		opts.SrcFormat = "raw" // what the NBD export is
		err = qemu.Default.Convert(ctx, srv.URI(), tmp, opts)
		if cerr := srv.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", location(r.fs, src), err)
		}
	}
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	if err := Local.SyncFile(tmp); err != nil {
		return err
	}
	return atomicfile.Rename(tmp, dst)
}

// localExists is exists on this machine.
func localExists(path string) bool { return existsIn(Local, path) }
