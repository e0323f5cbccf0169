package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"

	"github.com/sendense/capture/internal/qcow2"
	"github.com/sendense/capture/internal/qemu"
)

// The one check of a restore point every command relies on before it
// acts (restore, verify, prune, a backup choosing its base, list's
// restorable flag): each image of the disk's chain, found through the
// manifests only (never through an image's header), is a regular file in
// the VM directory whose qcow2 header says exactly what the manifest
// says — the disk's capacity, the backing file the manifest records (a
// plain image name of the same VM directory) in qcow2 format, no external
// data file, no encryption, not marked corrupt — and, for a deep check,
// that qemu-img opens it alone (pinned to qcow2, its backing file not
// opened) and agrees. The chain is complete: every parent's manifest is
// valid and records the image. Readers then open the chain through those
// names only (qemu.Pinned).

// DamageError says why an image or a manifest cannot be relied upon.
type DamageError struct {
	Backup   string // the backup holding the file
	Disk     int32
	File     string // the file concerned
	Kind     string // a Problem kind
	Msg      string
	Expected string
	Actual   string
}

func (e *DamageError) Error() string {
	s := fmt.Sprintf("backup %s disk %d: %s: %s", e.Backup, e.Disk, e.File, e.Msg)
	if e.Expected != "" || e.Actual != "" {
		s += fmt.Sprintf(" (expected %s, actual %s)", orNone(e.Expected), orNone(e.Actual))
	}
	return s
}

// problem is the damage as verify reports it.
func (e *DamageError) problem(vm string) Problem {
	return Problem{VM: vm, Backup: e.Backup, Disk: e.Disk, File: e.File, Kind: e.Kind, Message: e.Msg,
		Expected: e.Expected, Actual: e.Actual}
}

// layer is one checked image of a disk's chain.
type layer struct {
	m       *Manifest
	d       *DiskImage
	path    string
	cluster uint64 // the image's cluster size
}

// paths are the layers' paths, top first (what qemu.Pinned opens).
func paths(layers []layer) []string {
	out := make([]string, len(layers))
	for i, l := range layers {
		out[i] = l.path
	}
	return out
}

// checkedImage is the check of one image, cached per command.
type checkedImage struct {
	deep bool
	err  error
	hdr  *qcow2.Header
	info *qemu.ImageInfo
}

// checkImage checks the image of disk d of backup m (see above).
func (r *Repo) checkImage(ctx context.Context, ix *vmIndex, m *Manifest, d *DiskImage, deep bool) (*checkedImage, error) {
	if c := ix.images[d.Image]; c != nil && (c.deep || !deep || c.err != nil) {
		return c, c.err
	}
	path := ix.path(d.Image)
	damage := func(kind, msg, expected, actual string) error {
		return &DamageError{Backup: m.ID, Disk: d.Key, File: path, Kind: kind, Msg: msg, Expected: expected, Actual: actual}
	}
	c := &checkedImage{deep: deep}
	ix.images[d.Image] = c
	fi, err := r.fs.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.err = damage(ProblemMissingImage, "the image is missing", "", "")
		return c, c.err
	case err != nil:
		c.err = damage(ProblemImage, "the image cannot be read: "+err.Error(), "", "")
		return c, c.err
	case !fi.Mode().IsRegular():
		c.err = damage(ProblemImage, fmt.Sprintf("the image is not a regular file (%s): a repository image always is", fi.Mode().Type()), "", "")
		return c, c.err
	}
	hdr, err := qcow2.ReadHeader(func(off int64, n int) ([]byte, error) { return r.fs.ReadAt(path, off, n) })
	if err != nil {
		c.err = damage(ProblemImage, "the image's qcow2 header cannot be read: "+err.Error(), "", "")
		return c, c.err
	}
	c.hdr = hdr
	if c.err = checkHeader(hdr, d, r.Encrypted(), damage); c.err != nil {
		return c, c.err
	}
	if !deep {
		return c, nil
	}
	// Every table and data cluster within the file: a truncated image
	// would read zeroes where its data was.
	if err := r.checkBounds(ctx, path, hdr, uint64(fi.Size())); err != nil {
		if ctx.Err() != nil {
			delete(ix.images, d.Image)
			return nil, ctx.Err()
		}
		c.err = damage(ProblemImage, err.Error(), "", "")
		return c, c.err
	}
	info, err := r.Tools.Info(ctx, path)
	if err != nil {
		if ctx.Err() != nil {
			delete(ix.images, d.Image)
			return nil, ctx.Err()
		}
		c.err = damage(ProblemImage, "qemu-img cannot open the image: "+err.Error(), "", "")
		return c, c.err
	}
	c.info = info
	switch {
	case info.Format != "qcow2":
		c.err = damage(ProblemImage, "qemu-img does not read the image as qcow2", "qcow2", info.Format)
	case info.DataFile() != "":
		c.err = damage(ProblemDataFile, "the image keeps its data in another file: a repository image never does; it is not opened", "", info.DataFile())
	case info.Corrupt():
		c.err = damage(ProblemImage, "qcow2 marked the image corrupt (see qemu-img check)", "", "")
	case info.BackingFilename != d.Backing:
		c.err = damage(ProblemBacking, "qemu-img reads another backing file in the image than the manifest records", d.Backing, info.BackingFilename)
	case info.VirtualSize != d.Capacity:
		c.err = damage(ProblemSize, "qemu-img reads another size than the disk's capacity", fmt.Sprint(d.Capacity), fmt.Sprint(info.VirtualSize))
	}
	return c, c.err
}

// checkHeader compares an image's header with its disk record.
func checkHeader(hdr *qcow2.Header, d *DiskImage, encrypted bool, damage func(kind, msg, expected, actual string) error) error {
	switch {
	case hdr.ExternalData():
		return damage(ProblemDataFile, "the image keeps its data in another file: a repository image never does; it is not opened", "", hdr.DataFile)
	case hdr.CryptMethod != 0 && !encrypted:
		return damage(ProblemImage, "the image is encrypted: sendense does not write such images in a plain repository", "", "")
	case hdr.CryptMethod != qcow2.CryptLUKS && encrypted:
		return damage(ProblemImage, "the image is not LUKS-encrypted: in an encrypted repository sendense writes only such images", "luks (crypt method 2)", fmt.Sprint(hdr.CryptMethod))
	case hdr.Corrupt():
		return damage(ProblemImage, "qcow2 marked the image corrupt (see qemu-img check)", "", "")
	case hdr.BackingFile != d.Backing:
		return damage(ProblemBacking, "the image's header names another backing file than the manifest records", d.Backing, hdr.BackingFile)
	case d.Backing != "" && hdr.BackingFormat != "qcow2":
		return damage(ProblemBacking, "the image's header does not record its backing file as qcow2", "qcow2", hdr.BackingFormat)
	case hdr.Size != d.Capacity:
		return damage(ProblemSize, "the image's size is not the disk's capacity", fmt.Sprint(d.Capacity), fmt.Sprint(hdr.Size))
	}
	return nil
}

// chain checks disk key of backup m and every image its content needs,
// following the manifests, and returns the layers, top first (the last
// one a full). deep adds qemu-img's view of each image (see checkImage).
func (r *Repo) chain(ctx context.Context, ix *vmIndex, m *Manifest, key int32, deep bool) ([]layer, error) {
	d := m.Disk(key)
	if d == nil {
		return nil, fmt.Errorf("backup %s of VM %s has no disk %d (it has %v)", m.ID, ix.vd.Name, key, sortedKeys(m))
	}
	var layers []layer
	for cur, cd := m, d; ; {
		c, err := r.checkImage(ctx, ix, cur, cd, deep)
		if err != nil {
			var de *DamageError
			if len(layers) > 0 && errors.As(err, &de) {
				e := *de
				e.Msg += fmt.Sprintf(" (it is the backing file of %s)", layers[len(layers)-1].d.Image)
				return nil, &e
			}
			return nil, err
		}
		layers = append(layers, layer{m: cur, d: cd, path: ix.path(cd.Image), cluster: c.hdr.ClusterSize()})
		if cd.Backing == "" {
			return layers, nil
		}
		pid := cur.Parent
		pm := ix.byID[pid]
		if pm == nil {
			file := ix.path(pid + ".json")
			msg := fmt.Sprintf("the manifest of backup %s, which holds %s (the backing file of %s), is missing", pid, cd.Backing, cd.Image)
			if err := ix.bad[pid]; err != nil {
				var me *ManifestError
				if errors.As(err, &me) {
					file = me.Path
				}
				msg = fmt.Sprintf("the manifest of backup %s, which holds %s (the backing file of %s), cannot be used: %v", pid, cd.Backing, cd.Image, err)
			}
			return nil, &DamageError{Backup: pid, Disk: key, File: file, Kind: ProblemManifest, Msg: msg}
		}
		pd := pm.Disk(key)
		switch {
		case pd == nil || pd.Image != cd.Backing:
			return nil, &DamageError{Backup: cur.ID, Disk: key, File: ix.path(cd.Image), Kind: ProblemBacking,
				Msg: fmt.Sprintf("its backing file %s is not an image recorded by backup %s", cd.Backing, pid)}
		case pd.Capacity != cd.Capacity:
			return nil, &DamageError{Backup: cur.ID, Disk: key, File: ix.path(cd.Image), Kind: ProblemSize,
				Msg: fmt.Sprintf("its backing file %s has another capacity", cd.Backing), Expected: fmt.Sprint(cd.Capacity), Actual: fmt.Sprint(pd.Capacity)}
		}
		cur, cd = pm, pd
	}
}

// checkPoint checks every disk of restore point m.
func (r *Repo) checkPoint(ctx context.Context, ix *vmIndex, m *Manifest, deep bool) error {
	for _, key := range sortedKeys(m) {
		if _, err := r.chain(ctx, ix, m, key, deep); err != nil {
			return err
		}
	}
	return nil
}

// unrestorable says that backup id of a VM cannot be restored, and why.
func unrestorable(vm, id string, err error) error {
	return fmt.Errorf("backup %s of VM %s cannot be restored: %w; nothing was written (run 'sendense verify %s --backup %s' for every problem; see docs/restore-verify-prune.md)",
		id, vm, err, vm, id)
}

// imagePath is the path of image name of a VM directory.
func imagePath(vd *vmDir, name string) string { return filepath.Join(vd.Path, name) }

// checkBounds says whether the image's tables and data clusters lie
// within its file: read here (qcow2.Bounds) in a local repository, by
// qemu-img check where a remote one is (reading every table over SFTP
// would take a round trip each).
func (r *Repo) checkBounds(ctx context.Context, path string, hdr *qcow2.Header, size uint64) error {
	if !r.Local() {
		res, err := r.Tools.Check(ctx, path)
		switch {
		case err != nil:
			return fmt.Errorf("qemu-img check cannot check the image: %w", err)
		case !res.OK():
			return fmt.Errorf("qemu-img check finds %d corruptions and %d errors in the image (a truncated or damaged file)", res.Corruptions, res.CheckErrors)
		}
		return nil
	}
	return qcow2.Bounds(fsReaderAt{r.fs, path}, hdr, size)
}

// fsReaderAt reads one file through the repository's (confined) file
// system.
type fsReaderAt struct {
	fs   FS
	path string
}

func (f fsReaderAt) ReadAt(p []byte, off int64) (int, error) {
	b, err := f.fs.ReadAt(f.path, off, len(p))
	n := copy(p, b)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}
