package repo

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sendense/capture/internal/vmconfig"
)

// Manifest formats and levels (docs/repository.md).
const (
	ManifestFormat  = "sendense-manifest"
	ManifestVersion = 2 // 2: the disk digest (blocks_sha256)

	StatusComplete = "complete"

	LevelFull        = "full"
	LevelIncremental = "incremental"

	KindData = "data"
	KindZero = "zero"
)

// VMRef identifies a virtual machine.
type VMRef struct {
	Moref        string `json:"moref"`                    // e.g. "vm-42"
	Name         string `json:"name"`                     // display name
	Path         string `json:"inventory_path,omitempty"` // e.g. "/DC0/vm/web"
	InstanceUUID string `json:"instance_uuid,omitempty"`  // config.instanceUuid
}

// String names the VM for messages.
func (v VMRef) String() string {
	if v.Moref == "" {
		return v.Name
	}
	return fmt.Sprintf("%s (%s)", v.Name, v.Moref)
}

// same says whether a and b are the same VM: the instance UUIDs when both
// are known, else the morefs.
func (v VMRef) same(o VMRef) bool {
	if v.InstanceUUID != "" && o.InstanceUUID != "" {
		return strings.EqualFold(v.InstanceUUID, o.InstanceUUID)
	}
	return v.Moref != "" && v.Moref == o.Moref
}

// SnapshotRef is the vSphere snapshot a backup read.
type SnapshotRef struct {
	Moref    string `json:"moref"`
	Name     string `json:"name"`
	Quiesced bool   `json:"quiesced"`
}

// Chunk is one range the backup wrote into its image: data (with the
// SHA-256 of those bytes, lower-case hex) or zeroes.
type Chunk struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
	Kind   string `json:"kind"`             // "data" or "zero"
	SHA256 string `json:"sha256,omitempty"` // data chunks only
}

// End is the first byte after the chunk.
func (c Chunk) End() uint64 { return c.Offset + c.Length }

// DiskImage is one disk of a backup and its image.
type DiskImage struct {
	Key          int32   `json:"key"`                      // vSphere device key
	UUID         string  `json:"uuid"`                     // backing.uuid of the virtual disk
	Label        string  `json:"label,omitempty"`          // "Hard disk 1"
	File         string  `json:"file"`                     // "[datastore] vm/vm.vmdk"
	Capacity     uint64  `json:"capacity"`                 // bytes
	ChangeID     string  `json:"change_id"`                // the snapshot disk's changeId: base of the next incremental
	Level        string  `json:"level"`                    // "full" or "incremental"
	Reason       string  `json:"reason,omitempty"`         // why full
	BaseChangeID string  `json:"base_change_id,omitempty"` // incremental: the changeId it is relative to
	Image        string  `json:"image"`                    // file name in the VM directory
	Backing      string  `json:"backing"`                  // backing file name ("" for a full)
	BytesCopied  uint64  `json:"bytes_copied"`             // data written
	BytesZeroed  uint64  `json:"bytes_zeroed"`             // zeroes written
	Seconds      float64 `json:"seconds"`                  // copy time
	SHA256       string  `json:"sha256,omitempty"`         // full (version 1): SHA-256 of the whole disk
	BlocksSHA256 string  `json:"blocks_sha256,omitempty"`  // full (version 2): the disk digest (digest.go)
	Chunks       []Chunk `json:"chunks"`                   // what the image holds, sorted by offset
}

// Manifest describes one backup (restore point) of a VM.
type Manifest struct {
	Format   string      `json:"format"`  // "sendense-manifest"
	Version  int         `json:"version"` // 1 or 2
	ID       string      `json:"id"`      // backup id, e.g. "20240501T120000Z"
	VM       VMRef       `json:"vm"`
	Parent   string      `json:"parent"` // previous backup of the VM ("" for none)
	Snapshot SnapshotRef `json:"snapshot"`
	Started  time.Time   `json:"started"`
	Finished time.Time   `json:"finished"`
	Status   string      `json:"status"` // "complete"
	// Merged lists the older backups prune merged into this one.
	Merged []string    `json:"merged,omitempty"`
	Disks  []DiskImage `json:"disks"`
	// VMConfig is the VM's virtual hardware at the backup (optional:
	// older backups have none), what restore --to-vsphere recreates.
	VMConfig *vmconfig.Config `json:"vm_config,omitempty"`
}

// Disk returns the disk with device key key, or nil.
func (m *Manifest) Disk(key int32) *DiskImage {
	for i := range m.Disks {
		if m.Disks[i].Key == key {
			return &m.Disks[i]
		}
	}
	return nil
}

// Level is "full" or "incremental" when all disks agree, else "mixed".
func (m *Manifest) Level() string {
	level := ""
	for _, d := range m.Disks {
		switch {
		case level == "":
			level = d.Level
		case level != d.Level:
			return "mixed"
		}
	}
	return level
}

// Capacity is the sum of the disks' capacities.
func (m *Manifest) Capacity() uint64 {
	var n uint64
	for _, d := range m.Disks {
		n += d.Capacity
	}
	return n
}

// BytesCopied is the sum of the disks' bytes copied.
func (m *Manifest) BytesCopied() uint64 {
	var n uint64
	for _, d := range m.Disks {
		n += d.BytesCopied
	}
	return n
}

// ImageName is the file name of the image of disk key in backup id.
func ImageName(id string, key int32) string {
	return fmt.Sprintf("%s-disk%d.qcow2", id, key)
}

// ParseImageName splits an image name "<id>-disk<key>.qcow2" (ok false
// when name does not follow the grammar).
func ParseImageName(name string) (id string, key int32, ok bool) { return parseImageName(name) }

// parseImageName splits "<id>-disk<key>.qcow2" (the image-name grammar:
// a backup id, "-disk", the device key in canonical decimal, ".qcow2").
func parseImageName(name string) (id string, key int32, ok bool) {
	base, found := strings.CutSuffix(name, ".qcow2")
	if !found {
		return "", 0, false
	}
	i := strings.LastIndex(base, "-disk")
	if i < 0 {
		return "", 0, false
	}
	ks := base[i+len("-disk"):]
	k, err := strconv.ParseInt(ks, 10, 32)
	if err != nil || strconv.FormatInt(k, 10) != ks || !validID(base[:i]) {
		return "", 0, false
	}
	return base[:i], int32(k), true
}

// plainName says whether name is a file name in the VM directory (no
// separators, no "..").
func plainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\\\x00") && filepath.Base(name) == name
}

func validSHA256(s string) bool {
	if len(s) != 64 || strings.ToLower(s) != s {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// Validate checks the manifest's structure (not the images).
func (m *Manifest) Validate() error {
	switch {
	case m.Format != ManifestFormat:
		return fmt.Errorf("format is %q, not %q", m.Format, ManifestFormat)
	case m.Version < 1:
		return fmt.Errorf("version %d is not valid", m.Version)
	case m.Version > ManifestVersion:
		return fmt.Errorf("version %d is newer than this sendense understands (%d): upgrade sendense", m.Version, ManifestVersion)
	case !validID(m.ID):
		return fmt.Errorf("id %q is not a backup id (YYYYMMDDTHHMMSSZ[-N])", m.ID)
	case m.Parent != "" && !validID(m.Parent):
		return fmt.Errorf("parent %q is not a backup id", m.Parent)
	case m.Parent != "" && compareIDs(m.Parent, m.ID) >= 0:
		return fmt.Errorf("parent %s is not older than the backup", m.Parent)
	case m.VM.Moref == "" && m.VM.InstanceUUID == "":
		return errors.New("vm: moref missing")
	case m.Status != StatusComplete:
		return fmt.Errorf("status is %q, not %q", m.Status, StatusComplete)
	case len(m.Disks) == 0:
		return errors.New("no disks")
	}
	for _, id := range m.Merged {
		if !validID(id) {
			return fmt.Errorf("merged %q is not a backup id", id)
		}
	}
	if m.VMConfig != nil {
		caps := map[int32]uint64{}
		for _, d := range m.Disks {
			caps[d.Key] = d.Capacity
		}
		if err := m.VMConfig.Validate(caps); err != nil {
			return fmt.Errorf("vm_config: %w", err)
		}
	}
	seen := map[int32]bool{}
	for i := range m.Disks {
		d := &m.Disks[i]
		if seen[d.Key] {
			return fmt.Errorf("disk %d is listed twice", d.Key)
		}
		seen[d.Key] = true
		if err := d.validate(m.Version); err != nil {
			return fmt.Errorf("disk %d: %w", d.Key, err)
		}
		// Names: the backup's own image, and the parent's image of the
		// same disk as backing file — plain names in the VM directory.
		if want := ImageName(m.ID, d.Key); d.Image != want {
			return fmt.Errorf("disk %d: image %q is not this backup's image of the disk (%s)", d.Key, d.Image, want)
		}
		if d.Backing != "" {
			if m.Parent == "" {
				return fmt.Errorf("disk %d: an incremental image (backing %q) in a backup without parent", d.Key, d.Backing)
			}
			if want := ImageName(m.Parent, d.Key); d.Backing != want {
				return fmt.Errorf("disk %d: backing %q is not the parent's image of the disk (%s)", d.Key, d.Backing, want)
			}
		}
	}
	return nil
}

func (d *DiskImage) validate(version int) error {
	switch {
	case d.Capacity == 0:
		return errors.New("capacity is 0")
	case !plainName(d.Image) || !strings.HasSuffix(d.Image, ".qcow2"):
		return fmt.Errorf("image %q is not a .qcow2 file name in the VM directory", d.Image)
	case d.Backing != "" && !plainName(d.Backing):
		return fmt.Errorf("backing %q is not a file name in the VM directory", d.Backing)
	case d.Backing == d.Image:
		return errors.New("the image is its own backing file")
	}
	switch d.Level {
	case LevelFull:
		if d.Backing != "" {
			return fmt.Errorf("a full image has backing file %q", d.Backing)
		}
	case LevelIncremental:
		if d.Backing == "" {
			return errors.New("an incremental image needs a backing file")
		}
	default:
		return fmt.Errorf("level %q is neither %q nor %q", d.Level, LevelFull, LevelIncremental)
	}
	if err := d.checkDigests(version); err != nil {
		return err
	}
	var end uint64
	for i, c := range d.Chunks {
		switch {
		case c.Length == 0:
			return fmt.Errorf("chunk %d at %d is empty", i, c.Offset)
		case i > 0 && c.Offset < end:
			return fmt.Errorf("chunk %d at %d overlaps or is out of order", i, c.Offset)
		case c.End() > d.Capacity || c.End() < c.Offset:
			return fmt.Errorf("chunk %d at %d+%d ends beyond the capacity %d", i, c.Offset, c.Length, d.Capacity)
		}
		switch c.Kind {
		case KindData:
			if !validSHA256(c.SHA256) {
				return fmt.Errorf("data chunk %d at %d has no valid sha256", i, c.Offset)
			}
		case KindZero:
			if c.SHA256 != "" {
				return fmt.Errorf("zero chunk %d at %d has a sha256", i, c.Offset)
			}
		default:
			return fmt.Errorf("chunk %d at %d has kind %q, not %q or %q", i, c.Offset, c.Kind, KindData, KindZero)
		}
		end = c.End()
	}
	return nil
}

// ManifestError is a manifest that cannot be read or is not valid.
type ManifestError struct {
	Path string
	Err  error
}

func (e *ManifestError) Error() string {
	return fmt.Sprintf("manifest %s is corrupt: %v (restore it from a copy, or move it away to drop that backup)", e.Path, e.Err)
}

func (e *ManifestError) Unwrap() error { return e.Err }

// readManifest reads and validates the manifest at path; its id must match
// the file name (id.json, or id.json.SUFFIX).
func (r *Repo) readManifest(path string) (*Manifest, error) {
	base := filepath.Base(path)
	b, err := r.fs.ReadFile(path)
	if err != nil {
		return nil, err
	}
	fileID, _, _ := strings.Cut(base, ".json")
	if b, err = r.unseal(b, manifestAD(fileID)); err != nil {
		return nil, &ManifestError{path, err}
	}
	var m Manifest
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&m); err != nil {
		return nil, &ManifestError{path, fmt.Errorf("not valid JSON: %w", err)}
	}
	if err := m.Validate(); err != nil {
		return nil, &ManifestError{path, err}
	}
	if i := strings.Index(base, ".json"); i < 0 || base[:i] != m.ID {
		return nil, &ManifestError{path, fmt.Errorf("id %q does not match the file name", m.ID)}
	}
	return &m, nil
}

// encodeManifest is the manifest's file content: indented JSON with one
// chunk per line.
func encodeManifest(m *Manifest) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(joinChunkLines(b), '\n'), nil
}

// joinChunkLines puts each chunk object that json.MarshalIndent wrote over
// several lines on one line:
//
//	{"offset": 0, "length": 512, "kind": "data", "sha256": "…"}
//
// A linear scan: a regular expression over a manifest of 16,384 chunks
// took over a second of a full backup.
func joinChunkLines(b []byte) []byte {
	lines := bytes.Split(b, []byte("\n"))
	out := make([]byte, 0, len(b))
	for i := 0; i < len(lines); i++ {
		if i > 0 {
			out = append(out, '\n')
		}
		if obj, n := chunkObject(lines[i:]); n > 0 {
			out = append(out, obj...)
			i += n - 1
			continue
		}
		out = append(out, lines[i]...)
	}
	return out
}

// chunkObject recognises a chunk object at the start of lines: "{", the
// offset, length and kind lines, an optional sha256 line and "}" (or
// "},"). It returns the object on one line and the lines it took.
func chunkObject(lines [][]byte) ([]byte, int) {
	if len(lines) < 5 || string(bytes.TrimSpace(lines[0])) != "{" {
		return nil, 0
	}
	field := func(l []byte, key string, value func([]byte) bool, comma bool) bool {
		l = bytes.TrimSpace(l)
		if comma {
			var ok bool
			if l, ok = bytes.CutSuffix(l, []byte(",")); !ok {
				return false
			}
		}
		v, ok := bytes.CutPrefix(l, []byte(`"`+key+`": `))
		return ok && value(v)
	}
	digits := func(v []byte) bool { return len(v) > 0 && allIn(v, "0123456789") }
	quoted := func(set string, empty bool) func([]byte) bool {
		return func(v []byte) bool {
			s, ok := bytes.CutPrefix(v, []byte(`"`))
			s, ok2 := bytes.CutSuffix(s, []byte(`"`))
			return ok && ok2 && (empty || len(s) > 0) && allIn(s, set)
		}
	}
	lower := quoted("abcdefghijklmnopqrstuvwxyz", false)
	if !field(lines[1], "offset", digits, true) || !field(lines[2], "length", digits, true) {
		return nil, 0
	}
	kind := bytes.TrimSpace(lines[3])
	n := 4
	var sum []byte
	if k, ok := bytes.CutSuffix(kind, []byte(",")); ok {
		if !field(lines[4], "sha256", quoted("0123456789abcdef", true), false) || len(lines) < 6 {
			return nil, 0
		}
		kind, sum, n = k, bytes.TrimSpace(lines[4]), 5
	}
	if !field(kind, "kind", lower, false) {
		return nil, 0
	}
	end, ok := bytes.CutPrefix(bytes.TrimSpace(lines[n]), []byte("}"))
	if !ok || len(end) > 0 && string(end) != "," {
		return nil, 0
	}
	indent := lines[0][:len(lines[0])-len(bytes.TrimLeft(lines[0], " "))]
	obj := append(append([]byte(nil), indent...), '{')
	obj = append(append(append(obj, bytes.TrimSpace(lines[1])...), ' '), bytes.TrimSpace(lines[2])...)
	obj = append(append(obj, ' '), kind...)
	if sum != nil {
		obj = append(append(obj, ", "...), sum...)
	}
	obj = append(append(obj, '}'), end...)
	return obj, n + 1
}

// allIn says whether every byte of b is in set.
func allIn(b []byte, set string) bool {
	for _, c := range b {
		if !strings.ContainsRune(set, rune(c)) {
			return false
		}
	}
	return true
}
