package repo

import (
	"context"
	"errors"
	"fmt"
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
	ProblemDataFile       = "data-file"             // the image keeps its data in another file: never opened
	ProblemJournal        = "prune-journal"         // the prune journal is not valid: nothing it names is touched
	ProblemPrunePending   = "prune-pending"         // (no longer reported: every point verifies during a prune)
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
	// OnLeftover, if set, is called for each leftover (a file no restore
	// point needs, which prune removes; not a problem).
	OnLeftover func(Leftover)
}

// VerifyResult is what Verify found.
type VerifyResult struct {
	Images   []ImageReport `json:"images"`
	Problems []Problem     `json:"problems,omitempty"` // not tied to an image
	// Leftovers are files no restore point needs (verifying every backup
	// of a VM, when no backup or prune of it runs).
	Leftovers []Leftover `json:"leftovers,omitempty"`
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
	ix, unlock, err := r.readIndex(ctx, vd)
	if err != nil {
		return err
	}
	defer unlock()
	if ix.jerr != nil {
		problem(Problem{VM: vd.Name, File: ix.path(journalName), Kind: ProblemJournal, Message: ix.jerr.Error()})
	}

	var targets []verifyTarget
	if opts.Backup == "" {
		for _, id := range ix.ids {
			if err := ix.bad[id]; err != nil {
				problem(Problem{VM: vd.Name, Backup: id, File: manifestErrorFile(err, ix.path(id+".json")), Kind: ProblemManifest, Message: err.Error()})
			}
		}
		for _, m := range ix.points {
			for i := range m.Disks {
				targets = append(targets, verifyTarget{m, &m.Disks[i]})
			}
		}
	} else {
		m, err := ix.point(opts.Backup)
		var me *ManifestError
		switch {
		case errors.As(err, &me) || (err != nil && ix.bad[opts.Backup] != nil):
			problem(Problem{VM: vd.Name, Backup: opts.Backup, File: manifestErrorFile(err, ix.path(opts.Backup+".json")), Kind: ProblemManifest, Message: err.Error()})
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
				cur, d = r.chainNext(ix, cur, d, problem)
			}
		}
	}

	for _, t := range targets {
		if err := ctx.Err(); err != nil {
			return err
		}
		rep := r.verifyImage(ctx, ix, t.m, t.d)
		if err := ctx.Err(); err != nil {
			return err
		}
		res.Images = append(res.Images, rep)
		if opts.OnImage != nil {
			opts.OnImage(rep)
		}
	}
	if opts.Backup == "" {
		var left []Leftover
		if ix.journal != nil {
			left = append(left, Leftover{VM: vd.Name, File: ix.path(journalName), Kind: LeftoverJournal,
				Message: fmt.Sprintf("an interrupted prune (%s): the next prune or backup of the VM, or any command that can write, finishes it; every backup it keeps verifies meanwhile", ix.journal.Phase)})
		} else if !r.writerRunning(vd.Path) {
			left = r.leftovers(ix)
		}
		for _, l := range left {
			res.Leftovers = append(res.Leftovers, l)
			if opts.OnLeftover != nil {
				opts.OnLeftover(l)
			}
		}
	}
	return nil
}

// manifestErrorFile is the file a manifest error names.
func manifestErrorFile(err error, path string) string {
	var me *ManifestError
	if errors.As(err, &me) {
		path = me.Path
	}
	return path
}

// chainNext follows d's backing file to the disk record of the backup
// that holds it (the parent), reporting a missing or inconsistent
// manifest.
func (r *Repo) chainNext(ix *vmIndex, m *Manifest, d *DiskImage, problem func(Problem)) (*Manifest, *DiskImage) {
	vd := ix.vd
	id := m.Parent
	pm := ix.byID[id]
	if pm == nil {
		if err := ix.bad[id]; err != nil {
			problem(Problem{VM: vd.Name, Backup: id, Disk: d.Key, File: manifestErrorFile(err, ix.path(id+".json")), Kind: ProblemManifest,
				Message: fmt.Sprintf("the manifest of backup %s, which holds %s (the backing file of %s), cannot be used: %v", id, d.Backing, d.Image, err)})
		}
		return nil, nil // verifyImage reports a missing manifest of d's backing file
	}
	pd := pm.Disk(d.Key)
	if pd == nil || pd.Image != d.Backing {
		problem(Problem{VM: vd.Name, Backup: m.ID, Disk: d.Key, File: ix.path(d.Image), Kind: ProblemBacking,
			Message: fmt.Sprintf("backing file %s is not an image recorded by backup %s", d.Backing, id)})
		return nil, nil
	}
	return pm, pd
}

// verifyImage checks one image against its disk record: first the
// repository's check of the image (check.go), then its allocation and
// content.
func (r *Repo) verifyImage(ctx context.Context, ix *vmIndex, m *Manifest, d *DiskImage) ImageReport {
	start := time.Now()
	path := ix.path(d.Image)
	rep := ImageReport{VM: ix.vd.Name, Backup: m.ID, Disk: d.Key, File: path, Level: d.Level, Chunks: len(d.Chunks)}
	defer func() { rep.Seconds = time.Since(start).Seconds() }()
	c, err := r.checkImage(ctx, ix, m, d, true)
	var de *DamageError
	switch {
	case errors.As(err, &de):
		rep.add(de.problem(ix.vd.Name))
		if de.Kind != ProblemBacking {
			return rep // the image cannot be read as recorded
		}
		// A wrong backing file: the image alone is still checked.
	case err != nil:
		rep.add(Problem{Kind: ProblemImage, Message: "the image cannot be checked: " + err.Error()})
		return rep
	}
	if d.Backing != "" {
		if !ix.has(d.Backing) {
			rep.add(Problem{Kind: ProblemMissingBacking, File: ix.path(d.Backing), Message: fmt.Sprintf("the backing file of %s is missing", d.Image)})
		}
		if ix.byID[m.Parent] == nil && ix.bad[m.Parent] == nil {
			rep.add(Problem{Kind: ProblemManifest, File: ix.path(m.Parent + ".json"),
				Message: fmt.Sprintf("the manifest of backup %s, which holds the backing file %s, is missing", m.Parent, d.Backing)})
		}
	}
	entries, err := r.Tools.Map(ctx, path, qemu.MapOptions{NoBacking: true})
	if err != nil {
		rep.add(Problem{Kind: ProblemImage, Message: "the image's allocation cannot be read: " + err.Error()})
		return rep
	}
	cluster := c.hdr.ClusterSize()
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
			case c.Kind == KindData && !(e.Present && e.Data) && incremental:
				// (In a full, a data chunk's clusters that read as zeroes
				// need not be stored: its SHA-256 is checked over what the
				// image reads. In an incremental the backing file would
				// show through.)
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
		whole, want = d.wholeDigest(r.digests)
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
	sink := newHashSink(d.Chunks, whole, r.digests)
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
	ir, err := r.openImageReader(ctx, path, qemu.ServeOptions{NoBacking: true})
	if err != nil {
		rep.add(Problem{Kind: ProblemImage, Message: "the image cannot be read: " + err.Error()})
		return
	}
	err = stream(ctx, ir, segs, r.digests, nil, sink.feed)
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
