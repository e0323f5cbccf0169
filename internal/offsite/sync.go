package offsite

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sendense/capture/internal/lockfile"
	"github.com/sendense/capture/internal/repo"
)

// SyncOptions control Sync.
type SyncOptions struct {
	// VMs selects VMs (name, moref, instance UUID or directory); nil: all.
	VMs []string
	// OnPoint, if set, is called for each restore point considered.
	OnPoint func(PointResult)
	// Progress, if set, is called with the bytes of each part sent or kept.
	Progress func(n int64)
}

// PointResult is what Sync did with one restore point.
type PointResult struct {
	VMDir       string      `json:"vm_dir"`
	ID          string      `json:"id"`
	Uploaded    bool        `json:"uploaded"` // false: it was in the bucket already
	Bytes       int64       `json:"bytes"`    // size of its objects
	RetainUntil time.Time   `json:"retain_until,omitzero"`
	Seconds     float64     `json:"seconds"`
	Stats       UploadStats `json:"stats"`
}

// SyncReport sums up a Sync.
type SyncReport struct {
	Points   []PointResult `json:"-"` // as OnPoint saw them
	Uploaded int           `json:"uploaded"`
	Present  int           `json:"present"`
	// Older counts local points older than the VM's oldest point in the
	// bucket and not in it: pruned there, they are not uploaded again.
	Older   int         `json:"older"`
	Stats   UploadStats `json:"stats"`
	Seconds float64     `json:"seconds"`
}

// Sync uploads every restore point of the repository (or of opts.VMs)
// that the bucket does not hold yet (except those older than the VM's
// oldest point there: offsite prune removed them), oldest first per VM: its images,
// then its manifest, then its seal, each locked until now +
// retention_days; the retention of the older points the new ones back
// onto is extended to the same date. An interrupted upload is resumed.
// The repository must be on this machine; its VM directories are
// read-locked while their points are copied (a prune waits).
func Sync(ctx context.Context, r *repo.Repo, t *Target, opts SyncOptions) (*SyncReport, error) {
	start := time.Now()
	if !r.Local() {
		return nil, fmt.Errorf("offsite sync reads the repository's files directly: run it on the machine that holds %s (with --repo DIR)", r.Location())
	}
	l, err := t.lockLocal("sendense offsite sync")
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	if err := t.putMarker(ctx, r); err != nil {
		return nil, err
	}
	vms := opts.VMs
	if len(vms) == 0 {
		if vms, err = r.VMDirs(); err != nil {
			return nil, err
		}
	}
	rep := &SyncReport{}
	var errs []error
	for _, vm := range vms {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if err := t.syncVM(ctx, r, vm, opts, rep); err != nil {
			if len(opts.VMs) > 0 || ctx.Err() != nil {
				return rep, err
			}
			errs = append(errs, err) // every VM: go on with the others
			slog.Warn("offsite sync of a VM failed", "vm", vm, "err", err)
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, errors.Join(errs...)
}

// lockLocal makes syncs and prunes of one target on this machine run one
// at a time (they would abort each other's unfinished uploads). The lock
// file is in a directory of this user only ($XDG_RUNTIME_DIR, else
// ~/.cache/sendense), never in a shared one such as /tmp.
func (t *Target) lockLocal(op string) (*lockfile.Lock, error) {
	dir, err := privateDir()
	if err != nil {
		return nil, fmt.Errorf("offsite target %s: no directory for its lock file: %w", t.Name, err)
	}
	// One lock per bucket and prefix (targets of two configurations may
	// share a name).
	where := sha256.Sum256([]byte(t.endpoint + "\x00" + t.Bucket + "\x00" + t.Prefix))
	path := filepath.Join(dir, fmt.Sprintf("sendense-offsite-%s-%x.lock", t.Name, where[:6]))
	l, holder, err := lockfile.TryExclusive(path, op)
	if err != nil {
		return nil, fmt.Errorf("offsite target %s: lock %s: %w", t.Name, path, err)
	}
	if l == nil {
		return nil, fmt.Errorf("offsite target %s is busy: %s is running (lock %s); retry when it has finished", t.Name, holder, path)
	}
	return l, nil
}

// privateDir is a directory only this user can write to.
func privateDir() (string, error) {
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(cache, "sendense")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", err
		}
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return "", fmt.Errorf("%s is not a directory of this user that others cannot write to", dir)
	}
	return dir, nil
}

// putMarker copies the repository marker, so that the bucket says what it
// holds (docs/offsite.md).
func (t *Target) putMarker(ctx context.Context, r *repo.Repo) error {
	b, err := os.ReadFile(filepath.Join(r.Dir, repo.RepoFileName))
	if err != nil {
		return err
	}
	_, _, err = t.putSmall(ctx, t.key(repoMarker), b, time.Time{})
	return err
}

func (t *Target) syncVM(ctx context.Context, r *repo.Repo, vm string, opts SyncOptions, rep *SyncReport) error {
	points, unlock, err := r.ReadPoints(ctx, vm)
	if err != nil {
		return err
	}
	defer unlock()
	if len(points) == 0 {
		return nil
	}
	dir := points[0].VMDir
	ix, err := t.Index(ctx, dir)
	if err != nil {
		return err
	}
	for _, e := range ix.Errors {
		slog.Warn("offsite: a seal cannot be read; its point is uploaded again", "err", e)
	}
	oldest := ""
	if seals := ix.Seals(dir); len(seals) > 0 {
		oldest = seals[0].ID
	}
	for _, p := range points {
		if err := ctx.Err(); err != nil {
			return err
		}
		if oldest != "" && compareIDs(p.ID, oldest) < 0 && ix.Find(dir, p.ID) == nil {
			// Removed from the bucket by offsite prune (it removes only
			// points older than those it keeps): not uploaded again.
			rep.Older++
			continue
		}
		if s := ix.Find(dir, p.ID); s != nil {
			res := PointResult{VMDir: dir, ID: p.ID, RetainUntil: s.RetainUntil}
			for _, o := range s.Objects {
				res.Bytes += o.Size
			}
			rep.Present++
			rep.Points = append(rep.Points, res)
			if opts.OnPoint != nil {
				opts.OnPoint(res)
			}
			continue
		}
		res, seal, err := t.uploadPoint(ctx, p, ix, opts.Progress)
		rep.Stats.add(res.Stats)
		if err != nil {
			return fmt.Errorf("offsite sync of backup %s of VM %s to %s: %w", p.ID, dir, t.Name, err)
		}
		ix.VMs[dir] = append(ix.VMs[dir], seal)
		rep.Uploaded++
		rep.Points = append(rep.Points, res)
		if opts.OnPoint != nil {
			opts.OnPoint(res)
		}
	}
	return nil
}

// uploadPoint uploads one point: images, manifest, seal; then extends the
// retention of the points it needs.
func (t *Target) uploadPoint(ctx context.Context, p repo.Point, ix *Index, progress func(int64)) (PointResult, *Seal, error) {
	start := time.Now()
	dir, vmPath := p.VMDir, filepath.Dir(p.Path)
	res := PointResult{VMDir: dir, ID: p.ID, Uploaded: true}
	until := t.lockUntil()
	seal := &Seal{Format: SealFormat, Version: SealVersion, VMDir: dir, ID: p.ID, LockMode: string(t.Mode), RetainUntil: until}
	// Every backing file must be in the bucket already: the chain is
	// uploaded oldest first.
	for _, d := range p.Disks {
		if d.Backing == "" {
			continue
		}
		bid, ok := imageID(d.Backing)
		if !ok {
			return res, nil, fmt.Errorf("disk %d: backing file %q is not a backup image name", d.Key, d.Backing)
		}
		bs := ix.Find(dir, bid)
		if bs == nil || bs.Object(d.Backing) == nil {
			return res, nil, fmt.Errorf("disk %d: its backing file %s (backup %s) is not in the bucket", d.Key, d.Backing, bid)
		}
		if !slices.Contains(seal.Needs, bid) {
			seal.Needs = append(seal.Needs, bid)
		}
	}
	slices.SortFunc(seal.Needs, compareIDs)
	for _, d := range p.Disks {
		obj, st, err := t.uploadFile(ctx, t.vmKey(dir, d.Image), filepath.Join(vmPath, d.Image), until, progress)
		res.Stats.add(st)
		if err != nil {
			return res, nil, err
		}
		obj.Name = d.Image
		seal.Objects = append(seal.Objects, obj)
	}
	mb, err := os.ReadFile(p.Path)
	if err != nil {
		return res, nil, err
	}
	mo, skipped, err := t.putSmall(ctx, t.vmKey(dir, manifestName(p.ID)), mb, until)
	if err != nil {
		return res, nil, err
	}
	if skipped {
		res.Stats.Skipped++
	} else {
		res.Stats.Objects++
	}
	mo.Name = manifestName(p.ID)
	seal.Objects = append(seal.Objects, mo)
	seal.Uploaded = t.now().UTC().Truncate(time.Second)
	for _, o := range seal.Objects {
		res.Bytes += o.Size
	}
	sb, _ := json.MarshalIndent(seal, "", "  ")
	so, _, err := t.putSmall(ctx, t.sealKey(dir, p.ID), append(sb, '\n'), until)
	if err != nil {
		return res, nil, err
	}
	seal.SealVersionID = so.VersionID
	res.Stats.Objects++
	if !until.IsZero() {
		n, err := t.extendChain(ctx, ix, seal, until)
		res.Stats.LockExtended += n
		if err != nil {
			return res, nil, err
		}
	}
	res.RetainUntil = until
	res.Seconds = time.Since(start).Seconds()
	return res, seal, nil
}

// extendChain makes every object of seal's point and of the points it
// needs (recursively) retained at least until until.
func (t *Target) extendChain(ctx context.Context, ix *Index, seal *Seal, until time.Time) (int, error) {
	chain, err := ix.chain(seal)
	if err != nil {
		return 0, err
	}
	type obj struct{ key, version string }
	var objs []obj
	for _, s := range chain {
		for _, o := range s.Objects {
			objs = append(objs, obj{t.vmKey(s.VMDir, o.Name), o.VersionID})
		}
		objs = append(objs, obj{t.sealKey(s.VMDir, s.ID), s.SealVersionID})
	}
	errs := make([]error, len(objs))
	extended := make([]bool, len(objs))
	parallel(ctx, t.Conns, len(objs), func(i int) {
		extended[i], errs[i] = t.extend(ctx, objs[i].key, objs[i].version, until)
	})
	n := 0
	for _, e := range extended {
		if e {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// extend sets the retention of one object version to until when it ends
// earlier; the mode stays what it is (a COMPLIANCE lock is never
// weakened).
func (t *Target) extend(ctx context.Context, key, version string, until time.Time) (bool, error) {
	mode, cur, err := t.c.GetObjectRetention(ctx, t.Bucket, key, version)
	if err != nil && code(err) != "NoSuchObjectLockConfiguration" {
		return false, t.wrap(err, "reading the retention of "+key)
	}
	if cur != nil && !cur.Before(until) {
		return false, nil
	}
	m := t.Mode
	if mode != nil && mode.IsValid() {
		m = *mode
	}
	err = t.c.PutObjectRetention(ctx, t.Bucket, key, minio.PutObjectRetentionOptions{Mode: &m, RetainUntilDate: &until, VersionID: version})
	if err != nil {
		return false, t.wrap(err, "extending the retention of "+key)
	}
	return true, nil
}
