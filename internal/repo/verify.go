package repo

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/qemu"
)

// Problem kinds found by Verify.
const (
	ProblemManifest       = "manifest"              // a manifest is corrupt or missing
	ProblemMissingImage   = "missing-image"         // the image file is missing
	ProblemMissingBacking = "missing-backing"       // the backing file is missing
	ProblemBacking        = "backing"               // backing file differs from the manifest, or the chain is inconsistent
	ProblemImage          = "image"                 // the image cannot be read, is not qcow2, is marked corrupt
	ProblemSize           = "size"                  // virtual size differs from the capacity
	ProblemAllocation     = "unexpected-allocation" // the image holds clusters no chunk explains
	ProblemNotData        = "not-data"              // a data chunk is not allocated as data
	ProblemBackingVisible = "backing-visible"       // a zero chunk of an incremental is not in the image: the backing file shows through
	ProblemNotZero        = "not-zero"              // a zero chunk does not read as zeroes
	ProblemChunkSHA256    = "chunk-sha256"          // a data chunk's SHA-256 differs
	ProblemDiskSHA256     = "disk-sha256"           // a full image's whole-disk digest differs
	ProblemPrunePending   = "prune-pending"         // an interrupted prune must be finished first
)

// maxProblemsPerImage bounds the problems reported for one image.
const maxProblemsPerImage = 100

// Problem is one thing wrong in the repository.
type Problem struct {
	VM       string  `json:"vm"`               // VM directory
	Backup   string  `json:"backup,omitempty"` // backup id
	Disk     int32   `json:"disk,omitempty"`   // disk key
	File     string  `json:"file"`             // the file concerned
	Kind     string  `json:"kind"`
	Offset   *uint64 `json:"offset,omitempty"` // in the disk, bytes
	Length   uint64  `json:"length,omitempty"`
	Expected string  `json:"expected,omitempty"`
	Actual   string  `json:"actual,omitempty"`
	Message  string  `json:"message"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Offset != nil {
		fmt.Fprintf(&b, " at offset %d", *p.Offset)
		if p.Length > 0 {
			fmt.Fprintf(&b, " (+%d)", p.Length)
		}
	}
	b.WriteString(": ")
	b.WriteString(p.Message)
	if p.Expected != "" || p.Actual != "" {
		fmt.Fprintf(&b, ": expected %s, actual %s", orNone(p.Expected), orNone(p.Actual))
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

func at(off uint64) *uint64 { return &off }

// ImageReport is the verification of one image.
type ImageReport struct {
	VM        string    `json:"vm"`
	Backup    string    `json:"backup"`
	Disk      int32     `json:"disk"`
	File      string    `json:"file"`
	Level     string    `json:"level"`
	Chunks    int       `json:"chunks"`
	BytesRead uint64    `json:"bytes_read"`
	Seconds   float64   `json:"seconds"`
	Problems  []Problem `json:"problems,omitempty"`
	// More counts problems not listed (beyond maxProblemsPerImage).
	More int `json:"more_problems,omitempty"`
}

// OK says whether the image passed.
func (r *ImageReport) OK() bool { return len(r.Problems) == 0 }

func (r *ImageReport) add(p Problem) {
	p.VM, p.Backup, p.Disk = r.VM, r.Backup, r.Disk
	if p.File == "" {
		p.File = r.File
	}
	if n := len(r.Problems); n > 0 {
		last := &r.Problems[n-1]
		// Coalesce adjacent ranges of the same kind.
		if last.Kind == p.Kind && last.Offset != nil && p.Offset != nil && *last.Offset+last.Length == *p.Offset &&
			last.Expected == p.Expected && last.Actual == p.Actual && p.Kind != ProblemChunkSHA256 {
			last.Length += p.Length
			return
		}
	}
	if len(r.Problems) >= maxProblemsPerImage {
		r.More++
		return
	}
	r.Problems = append(r.Problems, p)
}

// VerifyOptions select what Verify checks.
type VerifyOptions struct {
	// VM selects one VM (name, moref, instance UUID or directory); "" all.
	VM string
	// Backup selects one backup of VM and the chain it needs; "" all
	// backups.
	Backup string
	// OnImage, if set, is called after each image.
	OnImage func(ImageReport)
	// OnProblem, if set, is called for each problem not tied to an image
	// (a corrupt manifest); those of images come with OnImage.
	OnProblem func(Problem)
}

// VerifyResult is what Verify found.
type VerifyResult struct {
	Images   []ImageReport `json:"images"`
	Problems []Problem     `json:"problems,omitempty"` // not tied to an image
}

// OK says whether everything verified.
func (v *VerifyResult) OK() bool {
	if len(v.Problems) > 0 {
		return false
	}
	for i := range v.Images {
		if !v.Images[i].OK() {
			return false
		}
	}
	return true
}

// ProblemCount counts every problem found.
func (v *VerifyResult) ProblemCount() int {
	n := len(v.Problems)
	for _, im := range v.Images {
		n += len(im.Problems) + im.More
	}
	return n
}

type verifyTarget struct {
	m *Manifest
	d *DiskImage
}

// Verify checks every image of the selected backups (and, for one backup,
// of the chain it needs) against its manifest: the file exists and is the
// qcow2 recorded (size, backing file, which exists); the image's own
// allocation (qemu-img map, top layer only) is what the chunks explain —
// data chunks allocated as data, zero chunks reading as zeroes and, in an
// incremental, present in the image so they hide the backing file, nothing
// else allocated; every data chunk's SHA-256 (reading only those chunks);
// a full's whole-disk SHA-256. Findings are in the result; the error is
// for what stopped the verification (no such VM or backup, qemu-nbd
// failing…).
func (r *Repo) Verify(ctx context.Context, opts VerifyOptions) (*VerifyResult, error) {
	if opts.Backup != "" && opts.VM == "" {
		return nil, errors.New("a backup id needs the VM it belongs to")
	}
	vds, err := r.selectVMs(opts.VM)
	if err != nil {
		return nil, err
	}
	res := &VerifyResult{}
	problem := func(p Problem) {
		res.Problems = append(res.Problems, p)
		if opts.OnProblem != nil {
			opts.OnProblem(p)
		}
	}
	for _, vd := range vds {
		if err := r.verifyVM(ctx, vd, opts, res, problem); err != nil {
			return res, err
		}
	}
	return res, nil
}

func (r *Repo) verifyVM(ctx context.Context, vd *vmDir, opts VerifyOptions, res *VerifyResult, problem func(Problem)) error {
	rl, err := r.readLock(ctx, vd)
	if err != nil {
		return err
	}
	defer rl.Unlock()

	j, jerr := r.readJournal(vd.Path)
	if jerr != nil {
		problem(Problem{VM: vd.Name, File: filepath.Join(vd.Path, journalName), Kind: ProblemManifest, Message: jerr.Error()})
	}
	cache := map[string]*Manifest{}
	lookup := func(id string) (*Manifest, error) {
		if m, ok := cache[id]; ok {
			return m, nil
		}
		m, err := r.manifestByID(vd, id)
		if err == nil {
			cache[id] = m
		}
		return m, err
	}

	var targets []verifyTarget
	if opts.Backup == "" {
		ms, errs := r.loadManifests(vd)
		for _, e := range errs {
			problem(Problem{VM: vd.Name, File: manifestErrorFile(e, vd), Kind: ProblemManifest, Message: e.Error()})
		}
		for _, m := range ms {
			cache[m.ID] = m
			for i := range m.Disks {
				targets = append(targets, verifyTarget{m, &m.Disks[i]})
			}
		}
	} else {
		m, err := lookup(opts.Backup)
		var me *ManifestError
		switch {
		case errors.As(err, &me):
			problem(Problem{VM: vd.Name, Backup: opts.Backup, File: me.Path, Kind: ProblemManifest, Message: err.Error()})
			return nil
		case err != nil:
			return err
		}
		seen := map[string]bool{}
		for i := range m.Disks {
			cur, d := m, &m.Disks[i]
			for d != nil && !seen[d.Image] {
				seen[d.Image] = true
				targets = append(targets, verifyTarget{cur, d})
				if d.Backing == "" {
					break
				}
				cur, d = r.chainNext(vd, cur, d, lookup, problem)
			}
		}
	}

	for _, t := range targets {
		if err := ctx.Err(); err != nil {
			return err
		}
		var rep ImageReport
		if j != nil && j.pendingFor(t.m.ID) {
			rep = ImageReport{VM: vd.Name, Backup: t.m.ID, Disk: t.d.Key, File: filepath.Join(vd.Path, t.d.Image), Level: t.d.Level}
			rep.add(Problem{Kind: ProblemPrunePending, File: filepath.Join(vd.Path, journalName),
				Message: "an interrupted prune is changing this backup: finish it with 'sendense prune' (or the next backup of this VM), then verify again"})
		} else {
			rep = r.verifyImage(ctx, vd, t.m, t.d, lookup)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		res.Images = append(res.Images, rep)
		if opts.OnImage != nil {
			opts.OnImage(rep)
		}
	}
	return nil
}

// manifestErrorFile is the file a manifest error names.
func manifestErrorFile(err error, vd *vmDir) string {
	var me *ManifestError
	if errors.As(err, &me) {
		return me.Path
	}
	return vd.Path
}

// chainNext follows d's backing file to the disk record of the backup
// that holds it, reporting a missing or inconsistent manifest.
func (r *Repo) chainNext(vd *vmDir, m *Manifest, d *DiskImage, lookup func(string) (*Manifest, error), problem func(Problem)) (*Manifest, *DiskImage) {
	id, key, ok := parseImageName(d.Backing)
	if !ok {
		problem(Problem{VM: vd.Name, Backup: m.ID, Disk: d.Key, File: filepath.Join(vd.Path, d.Image), Kind: ProblemBacking,
			Message: fmt.Sprintf("backing file %q is not the image of a backup (<id>-disk<key>.qcow2)", d.Backing)})
		return nil, nil
	}
	pm, err := lookup(id)
	if errors.Is(err, ErrNoBackup) {
		return nil, nil // verifyImage reports the missing manifest of d's backing file
	}
	if err != nil {
		file := filepath.Join(vd.Path, id+".json")
		var me *ManifestError
		if errors.As(err, &me) {
			file = me.Path
		}
		problem(Problem{VM: vd.Name, Backup: id, Disk: key, File: file, Kind: ProblemManifest,
			Message: fmt.Sprintf("the manifest of backup %s, which holds %s (the backing file of %s), is missing or unreadable: %v", id, d.Backing, d.Image, err)})
		return nil, nil
	}
	pd := pm.Disk(key)
	if pd == nil || pd.Image != d.Backing {
		problem(Problem{VM: vd.Name, Backup: m.ID, Disk: d.Key, File: filepath.Join(vd.Path, d.Image), Kind: ProblemBacking,
			Message: fmt.Sprintf("backing file %s is not an image recorded by backup %s", d.Backing, id)})
		return nil, nil
	}
	return pm, pd
}

// verifyImage checks one image against its disk record.
func (r *Repo) verifyImage(ctx context.Context, vd *vmDir, m *Manifest, d *DiskImage, lookup func(string) (*Manifest, error)) ImageReport {
	start := time.Now()
	path := filepath.Join(vd.Path, d.Image)
	rep := ImageReport{VM: vd.Name, Backup: m.ID, Disk: d.Key, File: path, Level: d.Level, Chunks: len(d.Chunks)}
	defer func() { rep.Seconds = time.Since(start).Seconds() }()
	if !r.exists(path) {
		rep.add(Problem{Kind: ProblemMissingImage, Message: "the image is missing"})
		return rep
	}
	info, err := r.Tools.Info(ctx, path)
	if err != nil {
		rep.add(Problem{Kind: ProblemImage, Message: "the image cannot be read: " + err.Error()})
		return rep
	}
	switch {
	case info.Format != "qcow2":
		rep.add(Problem{Kind: ProblemImage, Message: "the image is not qcow2", Expected: "qcow2", Actual: info.Format})
		return rep
	case info.Corrupt():
		rep.add(Problem{Kind: ProblemImage, Message: "qcow2 marked the image corrupt (see qemu-img check)"})
	}
	if info.BackingFilename != d.Backing {
		rep.add(Problem{Kind: ProblemBacking, Message: "the backing file is not the one recorded", Expected: d.Backing, Actual: info.BackingFilename})
	}
	if d.Backing != "" {
		bpath := filepath.Join(vd.Path, d.Backing)
		if !r.exists(bpath) {
			rep.add(Problem{Kind: ProblemMissingBacking, File: bpath, Message: fmt.Sprintf("the backing file of %s is missing", d.Image)})
		}
		switch id, key, ok := parseImageName(d.Backing); {
		case !ok || key != d.Key:
			rep.add(Problem{Kind: ProblemBacking, Message: fmt.Sprintf("backing file %s is not an image of disk %d", d.Backing, d.Key)})
		case id != m.Parent:
			rep.add(Problem{Kind: ProblemBacking, Message: fmt.Sprintf("backing file %s belongs to backup %s, not to the parent backup", d.Backing, id),
				Expected: m.Parent, Actual: id})
		default:
			if _, err := lookup(id); errors.Is(err, ErrNoBackup) {
				rep.add(Problem{Kind: ProblemManifest, File: filepath.Join(vd.Path, id+".json"),
					Message: fmt.Sprintf("the manifest of backup %s, which holds the backing file %s, is missing", id, d.Backing)})
			}
		}
	}
	if info.VirtualSize != d.Capacity {
		rep.add(Problem{Kind: ProblemSize, Message: "the image's size is not the disk's capacity",
			Expected: fmt.Sprint(d.Capacity), Actual: fmt.Sprint(info.VirtualSize)})
		return rep
	}
	entries, err := r.Tools.Map(ctx, path, qemu.MapOptions{NoBacking: true})
	if err != nil {
		rep.add(Problem{Kind: ProblemImage, Message: "the image's allocation cannot be read: " + err.Error()})
		return rep
	}
	cluster := info.ClusterSize
	if cluster == 0 || cluster&(cluster-1) != 0 {
		cluster = 64 << 10
	}
	zeroReads := checkAllocation(&rep, entries, d, cluster)
	if ctx.Err() != nil {
		return rep
	}
	r.checkContent(ctx, &rep, path, d, entries, zeroReads)
	return rep
}

// checkAllocation compares the image's own allocation with the chunks and
// returns the parts of zero chunks that must be read to know they are
// zero (qemu-img map says data there, e.g. a cluster written only in
// part).
func checkAllocation(rep *ImageReport, entries []qemu.MapEntry, d *DiskImage, cluster uint64) extent.List {
	incremental := d.Level == LevelIncremental
	covered := extent.RoundOut(chunkExtents(d.Chunks), cluster, d.Capacity)

	// Nothing allocated that the chunks do not explain.
	var present []extent.Extent
	for _, e := range entries {
		if e.Present {
			present = append(present, extent.Extent{Offset: e.Start, Length: e.Length})
		}
	}
	for _, x := range subtract(extent.Normalize(present), covered) {
		rep.add(Problem{Kind: ProblemAllocation, Offset: at(x.Offset), Length: x.Length,
			Message: "the image has clusters allocated that no chunk of the manifest explains"})
	}

	var zeroReads []extent.Extent
	i := 0
	for _, c := range d.Chunks {
		for i < len(entries) && entries[i].End() <= c.Offset {
			i++
		}
		for k := i; k < len(entries) && entries[k].Start < c.End(); k++ {
			e := entries[k]
			s, t := max(e.Start, c.Offset), min(e.End(), c.End())
			switch {
			case c.Kind == KindData && !(e.Present && e.Data):
				actual := "unallocated"
				if e.Present {
					actual = "zero cluster"
				}
				rep.add(Problem{Kind: ProblemNotData, Offset: at(s), Length: t - s,
					Message: "a data chunk is not allocated as data in the image", Expected: "data", Actual: actual})
			case c.Kind == KindZero && e.Present && e.Data:
				zeroReads = append(zeroReads, extent.Extent{Offset: s, Length: t - s})
			case c.Kind == KindZero && !e.Present && incremental:
				rep.add(Problem{Kind: ProblemBackingVisible, Offset: at(s), Length: t - s,
					Message: "a zero chunk is not in the image, so the backing file shows through", Expected: "zero cluster", Actual: "unallocated"})
			}
		}
	}
	return extent.Normalize(zeroReads)
}

// checkContent reads what must be read: for an incremental, its data
// chunks and the zero chunks stored as data; for a full, the whole disk
// (for its whole-disk digest), reading only its data clusters.
func (r *Repo) checkContent(ctx context.Context, rep *ImageReport, path string, d *DiskImage, entries []qemu.MapEntry, zeroReads extent.List) {
	var whole diskHasher
	var want string
	if d.Level == LevelFull {
		whole, want = d.wholeDigest()
	}
	cuts := chunkCuts(d.Chunks)
	var segs []segment
	if whole != nil {
		segs = digestSegments(entries, d.Capacity, d.Chunks, whole)
	} else {
		reads := append(extent.List(nil), zeroReads...)
		for _, c := range d.Chunks {
			if c.Kind == KindData {
				reads = append(reads, extent.Extent{Offset: c.Offset, Length: c.Length})
			}
		}
		slices.SortFunc(reads, func(a, b extent.Extent) int { return cmpU64(a.Offset, b.Offset) })
		for _, x := range reads {
			segs = cut(segs, x.Offset, x.Length, true, cuts)
		}
		segs = annotate(segs, d.Chunks)
	}
	if len(segs) == 0 {
		return
	}
	sink := newHashSink(d.Chunks, whole)
	sink.onChunk = func(i int, sum string) {
		if c := d.Chunks[i]; sum != c.SHA256 {
			rep.add(Problem{Kind: ProblemChunkSHA256, Offset: at(c.Offset), Length: c.Length,
				Message: "the data chunk's SHA-256 does not match", Expected: c.SHA256, Actual: sum})
		}
	}
	sink.onNonZero = func(off uint64) {
		rep.add(Problem{Kind: ProblemNotZero, Offset: at(off), Length: 1,
			Message: "a zero chunk does not read as zeroes", Expected: "0x00"})
	}
	ir, err := r.openImageReader(ctx, path, true)
	if err != nil {
		rep.add(Problem{Kind: ProblemImage, Message: "the image cannot be read: " + err.Error()})
		return
	}
	err = ir.stream(ctx, segs, sink.feed)
	if cerr := ir.Close(); err == nil && ctx.Err() == nil {
		err = cerr
	}
	rep.BytesRead = sink.bytesRead
	if err != nil {
		if ctx.Err() == nil {
			rep.add(Problem{Kind: ProblemImage, Message: "reading the image failed: " + err.Error()})
		}
		return
	}
	if whole != nil {
		if sum := sink.wholeSum(); sum != want {
			rep.add(Problem{Kind: ProblemDiskSHA256, Message: "the whole-disk digest does not match", Expected: want, Actual: sum})
		}
	}
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
