package offsite

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/sendense/capture/internal/repo"
)

// StageOptions say what Stage downloads.
type StageOptions struct {
	// VM selects one VM (name, moref, instance UUID or directory); "" all.
	VM string
	// Backup selects one backup of VM and the points it needs; "" the
	// latest when Latest, else every point.
	Backup string
	Latest bool
	// Images downloads the images too (restore, verify); otherwise only
	// the manifests (list).
	Images bool
	// In is the directory the private staging directory is made in
	// ("" = $TMPDIR).
	In string
	// Progress, if set, is called with the bytes of each range downloaded.
	Progress func(n int64)
}

// Staged is a local repository holding what a command needs from the
// bucket, in a private directory (mode 0700) that Close removes.
type Staged struct {
	Dir    string // the repository to open
	Backup string // the backup selected (Backup or the latest), if any
	// Problems are objects whose content differs from their seal (their
	// files hold what the bucket returned).
	Problems []repo.Problem
	// Errors are seals that cannot be read (their points are left out).
	Errors []error

	root   string
	t      *Target
	sizes  map[string]int64
	prefix string
	ix     *Index
	images bool // the images were staged too
}

// Close removes the staging directory.
func (s *Staged) Close() error { return os.RemoveAll(s.root) }

// PointStatus says, when only manifests were staged, whether a point can
// be restored from the bucket as far as its seals tell: its objects and
// those of every point it needs are listed with the sizes sealed (their
// content is checked when read). With the images staged, the staged
// repository's own check decides (ok and why empty, known false).
func (s *Staged) PointStatus(vmDir, id string) (ok bool, why string, known bool) {
	if s.images {
		return false, "", false
	}
	seal := s.ix.Find(vmDir, id)
	if seal == nil {
		return false, "its seal cannot be read", true
	}
	if _, err := s.ix.chain(seal); err != nil {
		return false, err.Error(), true
	}
	return true, "", true
}

// StoredBytes is the size in the bucket of a point's objects.
func (s *Staged) StoredBytes(vmDir, id string) int64 { return s.sizes[vmDir+"/"+id] }

// Display turns a path in the staging repository into the object's name
// (s3://NAME/vm-dir/file).
func (s *Staged) Display(path string) string {
	if rel, ok := strings.CutPrefix(path, s.Dir+string(filepath.Separator)); ok {
		return s.prefix + filepath.ToSlash(rel)
	}
	return path
}

// Stage downloads what opts select into a new local repository: the
// manifests of the selected points and, with Images, their images and
// those of the points they need, each checked against the SHA-256 and
// size its seal records.
func (t *Target) Stage(ctx context.Context, opts StageOptions) (_ *Staged, err error) {
	ix, err := t.Index(ctx, "")
	if err != nil {
		return nil, err
	}
	if !ix.Marker && len(ix.VMs) == 0 && len(ix.Errors) == 0 {
		return nil, fmt.Errorf("offsite target %s: bucket %s holds no sendense repository under prefix %q (no %s): check bucket and prefix, or run 'sendense offsite sync' first", t.Name, t.Bucket, t.Prefix, repoMarker)
	}
	root, err := os.MkdirTemp(opts.In, ".sendense-s3-")
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	st := &Staged{Dir: filepath.Join(root, "repo"), Errors: ix.Errors, root: root, t: t, sizes: map[string]int64{},
		prefix: "s3://" + t.Name + "/", ix: ix, images: opts.Images}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if err := t.initStaging(ctx, ix, st.Dir); err != nil {
		return nil, err
	}
	for d, seals := range ix.VMs {
		for _, s := range seals {
			for _, o := range s.Objects {
				st.sizes[d+"/"+s.ID] += o.Size
			}
		}
	}

	// Which VM directories: a directory name, else the VM the newest
	// manifests identify (as a local repository does).
	dirs := ix.Dirs()
	if opts.VM != "" {
		if _, ok := ix.VMs[opts.VM]; ok {
			dirs = []string{opts.VM}
		} else {
			var newest []fetch
			for _, d := range dirs {
				s := ix.VMs[d][len(ix.VMs[d])-1]
				newest = append(newest, fetch{d, s, *s.Object(manifestName(s.ID))})
			}
			if err := st.download(ctx, newest, nil); err != nil {
				return nil, err
			}
			r, err := repo.Open(st.Dir)
			if err != nil {
				return nil, err
			}
			res, err := r.List(ctx, opts.VM)
			if err != nil {
				return nil, fmt.Errorf("%w (in the bucket of offsite target %s)", err, t.Name)
			}
			dirs = nil
			for _, p := range res.Points {
				if !slices.Contains(dirs, p.VMDir) {
					dirs = append(dirs, p.VMDir)
				}
			}
		}
	}

	var points []*Seal
	switch {
	case opts.Backup != "" || opts.Latest:
		if len(dirs) != 1 {
			return nil, errors.New("name the VM whose backup to read")
		}
		seals := ix.VMs[dirs[0]]
		var s *Seal
		if opts.Backup == "" {
			s = seals[len(seals)-1]
		} else if s = ix.Find(dirs[0], opts.Backup); s == nil {
			return nil, fmt.Errorf("%w: backup %s of VM %s is not in the bucket of offsite target %s (see 'sendense list --repo s3://%s/')", repo.ErrNoBackup, opts.Backup, dirs[0], t.Name, t.Name)
		}
		st.Backup = s.ID
		chain, err := ix.chain(s)
		if err != nil {
			return nil, err
		}
		points = chain
	default:
		for _, d := range dirs {
			points = append(points, ix.VMs[d]...)
		}
	}
	var todo []fetch
	for _, s := range points {
		for _, o := range s.Objects {
			if o.Name == manifestName(s.ID) || opts.Images {
				todo = append(todo, fetch{s.VMDir, s, o})
			}
		}
	}
	if err := st.download(ctx, todo, opts.Progress); err != nil {
		return nil, err
	}
	// The images' headers: their backing files must be images of the
	// same VM directory in the bucket, named plainly.
	for _, fe := range todo {
		if _, ok := imageID(fe.obj.Name); !ok {
			continue
		}
		backing, err := checkImage(filepath.Join(st.Dir, fe.dir, fe.obj.Name))
		if errors.Is(err, os.ErrNotExist) {
			continue // damaged: in Problems
		}
		if err != nil {
			return nil, fmt.Errorf("%s%s/%s: %v: the object cannot be restored", st.prefix, fe.dir, fe.obj.Name, err)
		}
		if backing == "" {
			continue
		}
		bid, ok := imageID(backing)
		if bs := ix.Find(fe.dir, bid); !ok || bs == nil || bs.Object(backing) == nil {
			return nil, fmt.Errorf("%s%s/%s: its backing file %q is not an image of that VM in the bucket: the object cannot be restored", st.prefix, fe.dir, fe.obj.Name, backing)
		}
	}
	return st, nil
}

// chain returns s and every point it needs, recursively.
func (ix *Index) chain(s *Seal) ([]*Seal, error) {
	var out []*Seal
	seen := map[string]bool{}
	var walk func(s *Seal) error
	walk = func(s *Seal) error {
		if seen[s.ID] {
			return nil
		}
		seen[s.ID] = true
		out = append(out, s)
		for _, n := range s.Needs {
			ns := ix.Find(s.VMDir, n)
			if ns == nil {
				return fmt.Errorf("backup %s of VM %s needs backup %s, which is not in the bucket (or its seal cannot be read): it cannot be restored from there", s.ID, s.VMDir, n)
			}
			if err := walk(ns); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk(s)
}

type fetch struct {
	dir  string
	seal *Seal
	obj  Object
}

// download fetches objects into the staging repository, in ranges of
// PartSize on Conns connections, then checks each file's size and
// SHA-256 against the seal.
func (st *Staged) download(ctx context.Context, todo []fetch, progress func(int64)) error {
	t := st.t
	type rng struct {
		f        *os.File
		key, ver string
		off, n   int64
	}
	var ranges []rng
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var fetched []fetch
	for _, fe := range todo {
		dir := filepath.Join(st.Dir, fe.dir)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		path := filepath.Join(dir, fe.obj.Name)
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue // already staged
		}
		if err != nil {
			return err
		}
		files = append(files, f)
		fetched = append(fetched, fe)
		if err := f.Truncate(fe.obj.Size); err != nil {
			return err
		}
		key := t.vmKey(fe.dir, fe.obj.Name)
		for off := int64(0); off < fe.obj.Size; off += t.PartSize {
			ranges = append(ranges, rng{f, key, fe.obj.VersionID, off, min(t.PartSize, fe.obj.Size-off)})
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(ranges))
	parallel(ctx, t.Conns, len(ranges), func(i int) {
		r := ranges[i]
		o := minio.GetObjectOptions{VersionID: r.ver}
		if err := o.SetRange(r.off, r.off+r.n-1); err != nil {
			errs[i] = err
			return
		}
		rc, _, _, err := t.c.GetObject(ctx, t.Bucket, r.key, o)
		if err != nil {
			errs[i] = t.wrap(err, "reading "+r.key)
			cancel()
			return
		}
		defer rc.Close()
		n, err := io.Copy(io.NewOffsetWriter(r.f, r.off), io.LimitReader(rc, r.n))
		if err == nil && n != r.n {
			err = fmt.Errorf("the object is shorter than its seal says (%d bytes at %d)", n, r.off)
		}
		if err != nil {
			errs[i] = t.wrap(err, "reading "+r.key)
			cancel()
			return
		}
		if progress != nil {
			progress(n)
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Check every file against its seal.
	sums := make([]string, len(fetched))
	herrs := make([]error, len(fetched))
	parallel(ctx, t.Conns, len(fetched), func(i int) {
		h := sha256.New()
		herrs[i] = copyRange(ctx, h, files[i], 0, fetched[i].obj.Size)
		sums[i] = hex.EncodeToString(h.Sum(nil))
	})
	if err := errors.Join(herrs...); err != nil {
		return err
	}
	for i, fe := range fetched {
		if sums[i] != fe.obj.SHA256 {
			st.Problems = append(st.Problems, repo.Problem{VM: fe.dir, Backup: fe.seal.ID, File: st.prefix + fe.dir + "/" + fe.obj.Name,
				Kind: ProblemObjectSHA256, Expected: fe.obj.SHA256, Actual: sums[i],
				Message: "the object's SHA-256 differs from the one its seal recorded at upload"})
			// Not staged: nothing reads bytes that are not what was sent.
			if err := os.Remove(files[i].Name()); err != nil {
				return err
			}
			continue
		}
		if err := files[i].Sync(); err != nil {
			return err
		}
	}
	return nil
}

// ProblemObjectSHA256 is the problem kind of an object whose content
// differs from its seal.
const ProblemObjectSHA256 = "object-sha256"

// initStaging makes dir the staging repository: a plain one, or for an
// encrypted repository's bucket one with its marker (its key slots: the
// sealed manifests and encrypted images open with the same passphrase).
func (t *Target) initStaging(ctx context.Context, ix *Index, dir string) error {
	if ix.Marker {
		b, err := t.getSmall(ctx, t.key(repoMarker), "", 1<<20)
		if err != nil {
			return err
		}
		if repo.MarkerEncrypted(b) {
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, repo.RepoFileName), b, 0o600)
		}
	}
	_, err := repo.Init(dir)
	return err
}
