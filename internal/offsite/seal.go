package offsite

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sendense/capture/internal/repo"
)

// Names in the bucket (docs/offsite.md).
const (
	SealSuffix  = ".offsite.json"
	SealFormat  = "sendense-offsite-point"
	SealVersion = 1
	repoMarker  = "sendense-repository.json"
	maxSealSize = 1 << 20
)

// Object is one object of a point: a file of the VM directory.
type Object struct {
	Name      string `json:"name"` // file name in the VM directory
	Size      int64  `json:"size"`
	SHA256    string `json:"sha256"`               // of the whole object
	VersionID string `json:"version_id,omitempty"` // the version written (versioned buckets)
}

// Seal records one restore point in the bucket; it is written after
// every object it lists.
type Seal struct {
	Format   string    `json:"format"`
	Version  int       `json:"version"`
	VMDir    string    `json:"vm_dir"`
	ID       string    `json:"id"`
	Uploaded time.Time `json:"uploaded"`
	// Needs are the points whose images back this point's images: they
	// must stay as long as this one.
	Needs       []string  `json:"needs,omitempty"`
	LockMode    string    `json:"object_lock_mode,omitempty"`
	RetainUntil time.Time `json:"retain_until,omitzero"`
	Objects     []Object  `json:"objects"`
	// SealVersion is the version of the seal object itself (not stored).
	SealVersionID string `json:"-"`
}

var (
	hexPattern   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	vmDirPattern = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$`)
)

func validID(id string) bool        { return repo.ValidID(id) }
func validVMDir(dir string) bool    { return vmDirPattern.MatchString(dir) && dir != "." && dir != ".." }
func manifestName(id string) string { return id + ".json" }
func sealName(id string) string     { return id + SealSuffix }

// imageID returns the backup id of an image name <id>-disk<key>.qcow2.
func imageID(name string) (string, bool) {
	id, _, ok := repo.ParseImageName(name)
	return id, ok
}

// compareIDs orders backup ids by time, then collision number.
func compareIDs(a, b string) int { return repo.CompareIDs(a, b) }

// validate checks a seal read from key dir/id.offsite.json.
func (s *Seal) validate(dir, id string) error {
	switch {
	case s.Format != SealFormat:
		return fmt.Errorf("format is %q, not %q", s.Format, SealFormat)
	case s.Version < 1 || s.Version > SealVersion:
		return fmt.Errorf("version %d is not one this sendense understands (%d): upgrade sendense", s.Version, SealVersion)
	case s.VMDir != dir || s.ID != id:
		return fmt.Errorf("it names point %s/%s, not %s/%s", s.VMDir, s.ID, dir, id)
	}
	for _, n := range s.Needs {
		if !validID(n) || compareIDs(n, id) >= 0 {
			return fmt.Errorf("needs %q is not an earlier backup id", n)
		}
	}
	manifest := false
	seen := map[string]bool{}
	for _, o := range s.Objects {
		switch {
		case seen[o.Name]:
			return fmt.Errorf("object %q is listed twice", o.Name)
		case o.Name == manifestName(id):
			manifest = true
		default:
			if iid, ok := imageID(o.Name); !ok || iid != id {
				return fmt.Errorf("object %q is neither the manifest nor an image of backup %s", o.Name, id)
			}
		}
		seen[o.Name] = true
		if o.Size < 0 || !hexPattern.MatchString(o.SHA256) {
			return fmt.Errorf("object %q: size %d or sha256 %q is not valid", o.Name, o.Size, o.SHA256)
		}
	}
	if !manifest {
		return errors.New("it does not list the manifest")
	}
	return nil
}

// Object returns the object called name, or nil.
func (s *Seal) Object(name string) *Object {
	for i := range s.Objects {
		if s.Objects[i].Name == name {
			return &s.Objects[i]
		}
	}
	return nil
}

// Index is what the bucket holds under the prefix: the sealed points per
// VM directory (oldest first) and every key with its versions.
type Index struct {
	VMs map[string][]*Seal // VM directory → sealed points, oldest first
	// Unsealed are objects of VM directories that no seal lists (an
	// upload that did not finish, or a point being removed).
	Unsealed []string
	// Marker says whether the repository marker exists.
	Marker bool
	// Errors are seals that cannot be read; their points are left out.
	Errors []error
}

// Seals returns the sealed points of dir, oldest first.
func (ix *Index) Seals(dir string) []*Seal { return ix.VMs[dir] }

// Find returns the seal of point id of dir, or nil.
func (ix *Index) Find(dir, id string) *Seal {
	for _, s := range ix.VMs[dir] {
		if s.ID == id {
			return s
		}
	}
	return nil
}

// Dirs lists the VM directories with sealed points, sorted.
func (ix *Index) Dirs() []string {
	var out []string
	for d := range ix.VMs {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

type keyVersions struct {
	versions []minio.ObjectInfo // newest first, as S3 lists them; delete markers included
}

// listVersions lists every version of every key under prefix (relative to
// the target's prefix), grouped by key.
func (t *Target) listVersions(ctx context.Context, prefix string) (map[string]*keyVersions, error) {
	out := map[string]*keyVersions{}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for oi := range t.c.Client.ListObjects(ctx, t.Bucket, minio.ListObjectsOptions{Prefix: t.key(prefix), Recursive: true, WithVersions: true}) {
		if oi.Err != nil {
			return nil, t.wrap(oi.Err, "listing the bucket")
		}
		kv := out[oi.Key]
		if kv == nil {
			kv = &keyVersions{}
			out[oi.Key] = kv
		}
		kv.versions = append(kv.versions, oi)
	}
	for _, kv := range out {
		// Newest first; S3 lists them so, but do not rely on it.
		slices.SortStableFunc(kv.versions, func(a, b minio.ObjectInfo) int {
			if a.IsLatest != b.IsLatest {
				if a.IsLatest {
					return -1
				}
				return 1
			}
			return b.LastModified.Compare(a.LastModified)
		})
	}
	return out, nil
}

// live returns the versions of kv that are objects (not delete markers),
// newest first.
func (kv *keyVersions) live() []minio.ObjectInfo {
	var out []minio.ObjectInfo
	for _, v := range kv.versions {
		if !v.IsDeleteMarker {
			out = append(out, v)
		}
	}
	return out
}

// Index reads the bucket: the seals of vmDir ("" for every VM directory).
// A seal hidden by a delete marker still counts (its version is locked);
// of several versions of a seal, the oldest is the one sync wrote.
func (t *Target) Index(ctx context.Context, vmDir string) (*Index, error) {
	prefix := ""
	if vmDir != "" {
		prefix = vmDir + "/"
	}
	keys, err := t.listVersions(ctx, prefix)
	if err != nil {
		return nil, err
	}
	ix := &Index{VMs: map[string][]*Seal{}}
	if vmDir == "" {
		_, ix.Marker = keys[t.key(repoMarker)]
	}
	type sealRef struct {
		dir, id  string
		versions []string // oldest first
	}
	var refs []sealRef
	listed := map[string]bool{}
	for k, kv := range keys {
		rel := strings.TrimPrefix(k, t.Prefix)
		dir, name, ok := strings.Cut(rel, "/")
		if !ok || strings.Contains(name, "/") || !validVMDir(dir) {
			continue
		}
		if id, ok := strings.CutSuffix(name, SealSuffix); ok && validID(id) {
			ref := sealRef{dir: dir, id: id}
			for _, v := range slices.Backward(kv.live()) {
				ref.versions = append(ref.versions, v.VersionID)
			}
			if len(ref.versions) > 0 {
				refs = append(refs, ref)
			}
		}
	}
	seals := make([]*Seal, len(refs))
	errs := make([]error, len(refs))
	parallel(ctx, t.Conns, len(refs), func(i int) {
		// The oldest version that is a valid seal of objects in the
		// bucket: the one sync wrote, whatever was written over it later.
		for _, v := range refs[i].versions {
			s, err := t.readSeal(ctx, refs[i].dir, refs[i].id, v)
			if err == nil {
				err = t.checkObjects(s, keys)
			}
			if err == nil {
				seals[i], errs[i] = s, nil
				return
			}
			if errs[i] == nil {
				errs[i] = err
			}
		}
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i, s := range seals {
		if s == nil {
			ix.Errors = append(ix.Errors, errs[i])
			continue
		}
		ix.VMs[s.VMDir] = append(ix.VMs[s.VMDir], s)
		listed[t.vmKey(s.VMDir, sealName(s.ID))] = true
		for _, o := range s.Objects {
			listed[t.vmKey(s.VMDir, o.Name)] = true
		}
	}
	for d := range ix.VMs {
		slices.SortFunc(ix.VMs[d], func(a, b *Seal) int { return compareIDs(a.ID, b.ID) })
	}
	for k := range keys {
		rel := strings.TrimPrefix(k, t.Prefix)
		if strings.Contains(rel, "/") && !listed[k] && len(keys[k].live()) > 0 {
			ix.Unsealed = append(ix.Unsealed, rel)
		}
	}
	slices.Sort(ix.Unsealed)
	slices.SortFunc(ix.Errors, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return ix, nil
}

// checkObjects checks that the objects a seal lists are in the bucket,
// in the version and with the size it records.
func (t *Target) checkObjects(s *Seal, keys map[string]*keyVersions) error {
	for _, o := range s.Objects {
		key := t.vmKey(s.VMDir, o.Name)
		var found *minio.ObjectInfo
		if kv := keys[key]; kv != nil {
			for i, v := range kv.versions {
				if !v.IsDeleteMarker && (v.VersionID == o.VersionID || o.VersionID == "" && found == nil) {
					found = &kv.versions[i]
					if v.VersionID == o.VersionID {
						break
					}
				}
			}
		}
		switch {
		case found == nil:
			return fmt.Errorf("point %s/%s: its object %s (version %q) is not in the bucket: that point cannot be read from there", s.VMDir, s.ID, key, o.VersionID)
		case found.Size != o.Size:
			return fmt.Errorf("point %s/%s: its object %s has %d bytes, its seal says %d: that point cannot be read from there", s.VMDir, s.ID, key, found.Size, o.Size)
		}
	}
	return nil
}

// readSeal reads and checks one seal (version "" = the current one).
func (t *Target) readSeal(ctx context.Context, dir, id, version string) (*Seal, error) {
	key := t.vmKey(dir, sealName(id))
	b, err := t.getSmall(ctx, key, version, maxSealSize)
	if err != nil {
		return nil, err
	}
	var s Seal
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("seal %s is corrupt (not valid JSON: %v): that point cannot be read from the bucket", key, err)
	}
	if err := s.validate(dir, id); err != nil {
		return nil, fmt.Errorf("seal %s is corrupt: %v: that point cannot be read from the bucket", key, err)
	}
	s.SealVersionID = version
	return &s, nil
}

// getSmall reads a whole object of at most limit bytes.
func (t *Target) getSmall(ctx context.Context, key, version string, limit int64) ([]byte, error) {
	rc, _, _, err := t.c.GetObject(ctx, t.Bucket, key, minio.GetObjectOptions{VersionID: version})
	if err != nil {
		return nil, t.wrap(err, "reading "+key)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, t.wrap(err, "reading "+key)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("offsite target %s: %s is larger than %d bytes: not a sendense object", t.Name, key, limit)
	}
	return b, nil
}

// sealKey is the key of a point's seal.
func (t *Target) sealKey(dir, id string) string { return t.vmKey(dir, sealName(id)) }
