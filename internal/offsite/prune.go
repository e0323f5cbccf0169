package offsite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/retention"
)

// PruneOptions control Prune.
type PruneOptions struct {
	// VMs selects VMs (directory in the bucket, name, moref or instance
	// UUID); nil: every VM in the bucket.
	VMs []string
	// Keep is how many of each VM's newest points to keep (at least 1)
	// when Select is nil; the points they need are kept too.
	Keep int
	// Select, when set, decides which points of a VM to keep: given the
	// VM's points in the bucket, newest first (their time: the backup id's),
	// it returns the kept ids with the reasons (a retention policy,
	// internal/retention). The newest point is always kept, and the points
	// the kept ones need.
	Select func(points []retention.Point) map[string][]string
	DryRun bool
	// BypassGovernance removes objects under a GOVERNANCE lock (the
	// credentials need s3:BypassGovernanceRetention). COMPLIANCE locks are
	// never bypassed.
	BypassGovernance bool
	// OnPoint, if set, is called for each point.
	OnPoint func(PrunedPoint)
}

// Actions of PrunedPoint.
const (
	PruneKept        = "kept"
	PruneRemoved     = "removed"
	PruneWouldRemove = "would-remove"
	PruneLocked      = "locked"     // retention has not ended: nothing of it was removed
	PrunePartly      = "partly"     // its seal is gone, some objects are still locked
	PruneLeftover    = "unfinished" // objects of an upload that never finished
)

// PrunedPoint is what Prune did with one point.
type PrunedPoint struct {
	VMDir   string   `json:"vm_dir"`
	ID      string   `json:"id"`
	Action  string   `json:"action"`
	Reasons []string `json:"reasons,omitempty"` // why kept
	// LockedUntil is the end of the retention that kept objects.
	LockedUntil time.Time `json:"locked_until,omitzero"`
	LockMode    string    `json:"lock_mode,omitempty"`
	Locked      []string  `json:"locked_objects,omitempty"`
	Bytes       int64     `json:"bytes"` // removed (or to remove)
}

// PruneReport sums up a Prune.
type PruneReport struct {
	Points  []PrunedPoint `json:"-"` // as OnPoint saw them
	Kept    int           `json:"kept"`
	Removed int           `json:"removed"`
	Locked  int           `json:"locked"`
	Bytes   int64         `json:"bytes"`
}

// Prune removes from the bucket the points of each VM that opts does not
// keep (the newest Keep, or Select's) and no kept point needs, newest first, each seal first (so a point
// is either listed and whole, or gone). A version still under retention
// is refused by the server: Prune reports the point as locked, with the
// date, and goes on; that is not an error. Objects of uploads that never
// finished (older than the VM's newest point) are removed too.
func Prune(ctx context.Context, t *Target, opts PruneOptions) (*PruneReport, error) {
	if opts.Select == nil && opts.Keep < 1 {
		return nil, errors.New("--keep must be at least 1: the newest point of a VM is never removed")
	}
	l, err := t.lockLocal("sendense offsite prune")
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	ix, err := t.Index(ctx, "")
	if err != nil {
		return nil, err
	}
	if len(ix.Errors) > 0 {
		return nil, fmt.Errorf("nothing was removed: %w", errors.Join(ix.Errors...))
	}
	dirs, err := t.selectDirs(ctx, ix, opts.VMs)
	if err != nil {
		return nil, err
	}
	rep := &PruneReport{}
	for _, d := range dirs {
		if err := t.pruneVM(ctx, ix, d, opts, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// selectDirs maps VM arguments to VM directories of the bucket: a
// directory name, or the name, moref or instance UUID recorded in a VM's
// newest manifest.
func (t *Target) selectDirs(ctx context.Context, ix *Index, vms []string) ([]string, error) {
	if len(vms) == 0 {
		return ix.Dirs(), nil
	}
	refs := map[string]repo.VMRef{}
	var out []string
	for _, vm := range vms {
		if _, ok := ix.VMs[vm]; ok {
			out = append(out, vm)
			continue
		}
		var found []string
		for _, d := range ix.Dirs() {
			ref, ok := refs[d]
			if !ok {
				s := ix.VMs[d][len(ix.VMs[d])-1]
				b, err := t.getSmall(ctx, t.vmKey(d, manifestName(s.ID)), s.Object(manifestName(s.ID)).VersionID, 64<<20)
				if err != nil {
					return nil, err
				}
				var m repo.Manifest
				if err := json.Unmarshal(b, &m); err != nil {
					return nil, fmt.Errorf("manifest %s is corrupt: %v", t.vmKey(d, manifestName(s.ID)), err)
				}
				ref, refs[d] = m.VM, m.VM
			}
			if ref.Name == vm || ref.Moref == vm || (ref.InstanceUUID != "" && strings.EqualFold(ref.InstanceUUID, vm)) {
				found = append(found, d)
			}
		}
		switch len(found) {
		case 0:
			return nil, fmt.Errorf("%w: no backups of VM %q in the bucket of offsite target %s", repo.ErrNoVM, vm, t.Name)
		case 1:
			out = append(out, found[0])
		default:
			return nil, fmt.Errorf("VM %q is ambiguous in the bucket of offsite target %s: directories %s; name the directory", vm, t.Name, strings.Join(found, ", "))
		}
	}
	return out, nil
}

func (t *Target) pruneVM(ctx context.Context, ix *Index, dir string, opts PruneOptions, rep *PruneReport) error {
	seals := ix.VMs[dir]
	reasons := map[string][]string{}
	if opts.Select != nil {
		points := make([]retention.Point, 0, len(seals))
		for i := len(seals) - 1; i >= 0; i-- {
			t, _ := repo.IDTime(seals[i].ID)
			points = append(points, retention.Point{ID: seals[i].ID, Time: t})
		}
		for id, r := range opts.Select(points) {
			if ix.Find(dir, id) != nil {
				reasons[id] = slices.Clone(r)
			}
		}
	} else {
		for i := max(0, len(seals)-opts.Keep); i < len(seals); i++ {
			reasons[seals[i].ID] = append(reasons[seals[i].ID], fmt.Sprintf("one of the %d newest", opts.Keep))
		}
	}
	if newest := seals[len(seals)-1].ID; reasons[newest] == nil {
		reasons[newest] = []string{"the newest point: never removed"}
	}
	for i := len(seals) - 1; i >= 0; i-- { // newest first: needs point back
		s := seals[i]
		if reasons[s.ID] == nil {
			continue
		}
		for _, n := range s.Needs {
			reasons[n] = append(reasons[n], "needed by "+s.ID)
		}
	}
	keys, err := t.listVersions(ctx, dir+"/")
	if err != nil {
		return err
	}
	byID := map[string][]string{} // backup id → its keys
	for k := range keys {
		name := strings.TrimPrefix(k, t.dirKey(dir))
		id, ok := strings.CutSuffix(name, SealSuffix)
		if !ok {
			id, ok = strings.CutSuffix(name, ".json")
		}
		if !ok || !validID(id) {
			id, ok = imageID(name)
		}
		if ok && validID(id) {
			byID[id] = append(byID[id], k)
		}
	}
	newest := seals[len(seals)-1].ID
	// Points, newest first, then leftovers of unfinished uploads.
	var order []string
	for i := len(seals) - 1; i >= 0; i-- {
		order = append(order, seals[i].ID)
	}
	var leftovers []string
	for id := range byID {
		if ix.Find(dir, id) == nil && compareIDs(id, newest) < 0 {
			leftovers = append(leftovers, id)
		}
	}
	slices.SortFunc(leftovers, func(a, b string) int { return compareIDs(b, a) })
	for _, id := range append(order, leftovers...) {
		if err := ctx.Err(); err != nil {
			return err
		}
		s := ix.Find(dir, id)
		p := PrunedPoint{VMDir: dir, ID: id}
		if r := reasons[id]; r != nil {
			p.Action, p.Reasons = PruneKept, r
			rep.Kept++
			rep.Points = append(rep.Points, p)
			if opts.OnPoint != nil {
				opts.OnPoint(p)
			}
			continue
		}
		ks := byID[id]
		for _, k := range ks {
			for _, v := range keys[k].versions {
				p.Bytes += v.Size
			}
		}
		switch {
		case opts.DryRun:
			p.Action = PruneWouldRemove
		default:
			sealKey := t.sealKey(dir, id)
			// The seal first: while it is there the point is whole.
			slices.SortStableFunc(ks, func(a, b string) int {
				return boolCmp(b == sealKey, a == sealKey)
			})
			p.Action = PruneRemoved
			if s == nil {
				p.Action = PruneLeftover
			}
			for _, k := range ks {
				locked, err := t.removeVersions(ctx, k, keys[k].versions, opts.BypassGovernance, &p)
				if err != nil {
					return err
				}
				if locked && k == sealKey {
					p.Action = PruneLocked
					break
				}
				if locked && p.Action == PruneRemoved {
					p.Action = PrunePartly
				}
			}
		}
		switch p.Action {
		case PruneRemoved, PruneWouldRemove, PruneLeftover:
			rep.Removed++
			rep.Bytes += p.Bytes
		default:
			rep.Locked++
		}
		rep.Points = append(rep.Points, p)
		if opts.OnPoint != nil {
			opts.OnPoint(p)
		}
	}
	if !opts.DryRun {
		t.abortUploads(ctx, dir, reasons, newest)
	}
	return nil
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// removeVersions deletes every version of key (delete markers too). A
// version under retention is left, recorded in p; locked says there was
// one.
func (t *Target) removeVersions(ctx context.Context, key string, versions []minio.ObjectInfo, bypass bool, p *PrunedPoint) (locked bool, err error) {
	for _, v := range versions {
		version := v.VersionID
		if version == "null" { // a bucket without versioning
			version = ""
		}
		err := t.c.RemoveObject(ctx, t.Bucket, key, minio.RemoveObjectOptions{VersionID: version, GovernanceBypass: bypass})
		if err == nil {
			continue
		}
		if code(err) != "AccessDenied" && code(err) != "InvalidRequest" && httpStatus(err) != 403 {
			return locked, t.wrap(err, "removing "+key)
		}
		mode, until, rerr := t.c.GetObjectRetention(ctx, t.Bucket, key, version)
		if rerr != nil || until == nil || !until.After(t.now()) {
			// Not a lock that refused it: permissions.
			return locked, t.wrap(err, "removing "+key)
		}
		locked = true
		p.Locked = append(p.Locked, strings.TrimPrefix(key, t.Prefix))
		if until.After(p.LockedUntil) {
			p.LockedUntil = *until
		}
		if mode != nil {
			p.LockMode = string(*mode)
		}
	}
	return locked, nil
}

// abortUploads aborts unfinished multipart uploads of points that are
// neither kept nor newer than the newest point (a sync in progress).
func (t *Target) abortUploads(ctx context.Context, dir string, kept map[string][]string, newest string) {
	res, err := t.c.ListMultipartUploads(ctx, t.Bucket, t.dirKey(dir), "", "", "", 1000)
	if err != nil {
		return
	}
	for _, u := range res.Uploads {
		id, ok := imageID(strings.TrimPrefix(u.Key, t.dirKey(dir)))
		if ok && kept[id] == nil && compareIDs(id, newest) < 0 {
			t.c.AbortMultipartUpload(ctx, t.Bucket, u.Key, u.UploadID)
		}
	}
}
