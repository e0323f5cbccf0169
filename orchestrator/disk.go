package orchestrator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/extent"
)

// Levels of a disk's copy.
const (
	LevelFull        = "full"
	LevelIncremental = "incremental"
)

// diskPlan is what a job does with one disk of the snapshot.
type diskPlan struct {
	disk     cbt.Disk
	full     bool
	reason   string
	base     string      // incremental: the changeId it starts from
	areas    extent.List // incremental: changed areas
	areaFile string      // incremental: changed-areas= file for the plugin
}

func (p *diskPlan) level() string {
	if p.full {
		return LevelFull
	}
	return LevelIncremental
}

// decide applies the CBT rules (docs/design.md) to a disk: prev is what the
// previous backup or replication recorded of it (nil: none).
func decide(d cbt.Disk, prev *cbt.DiskState) *diskPlan {
	p := &diskPlan{disk: d}
	p.full, p.reason = cbt.NeedFull(prev, d.State(), nil)
	if !p.full {
		p.base = prev.ChangeID
	}
	return p
}

// queryChanges asks vSphere what changed on p's disk since p.base and
// writes the areas into a changed-areas= file for the plugin. With align
// (a power of two) the areas are widened to multiples of it: a
// destination that writes whole clusters only (qemu.ImageWriter) gets
// them whole, from the snapshot, which holds the unchanged rest too.
func (j *vmJob) queryChanges(ctx context.Context, snap string, p *diskPlan, align uint64) error {
	areas, err := j.s.Client.ChangedAreas(ctx, j.vm, snap, p.disk.Key, p.base)
	if err != nil {
		return err
	}
	p.areas = areas.List
	if align > 1 {
		p.areas = extent.RoundOut(p.areas, align, p.disk.Capacity)
	}
	p.areaFile = filepath.Join(j.tmp, fmt.Sprintf("disk%d.areas", p.disk.Key))
	var b strings.Builder
	b.WriteString("# changed areas: OFFSET LENGTH (bytes)\n")
	for _, a := range p.areas {
		fmt.Fprintf(&b, "%d %d\n", a.Offset, a.Length)
	}
	return os.WriteFile(p.areaFile, []byte(b.String()), 0o600)
}

// forEachDisk runs fn for every plan, at most [backup] max_concurrent_disks
// at once, and returns the reports of the disks that succeeded, in the
// order they finished. The first failure cancels the others and is
// returned.
func (j *vmJob) forEachDisk(ctx context.Context, plans []*diskPlan, fn func(ctx context.Context, i int, p *diskPlan) (DiskReport, error)) ([]DiskReport, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, max(1, j.s.Config.Backup.MaxConcurrentDisks))
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	var mu sync.Mutex
	var reports []DiskReport
	for i, p := range plans {
		j.progress(p, PhaseQueued, copier.Progress{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			rep, err := fn(ctx, i, p)
			if err != nil {
				j.progress(p, PhaseFailed, copier.Progress{})
				once.Do(func() {
					firstErr = fmt.Errorf("disk %d (%s): %w", p.disk.Key, p.disk.Label, err)
					cancel(firstErr)
				})
				return
			}
			mu.Lock()
			reports = append(reports, rep)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return reports, firstErr
	}
	return reports, context.Cause(ctx)
}

// progress reports a disk's progress.
func (j *vmJob) progress(p *diskPlan, phase Phase, pr copier.Progress) {
	d := p.disk
	dp := DiskProgress{VM: j.vm.Name, Key: d.Key, Label: d.Label, Level: p.level(), Phase: phase,
		Done: pr.Done, Total: d.Capacity, Copied: pr.BytesWritten, MiBps: pr.MiBps, Seconds: pr.Seconds}
	if phase == PhaseDone {
		dp.Done = d.Capacity
	}
	dp.Fill()
	j.rep.Disk(dp)
}

// The copies that read a vSphere disk (backup, replicate) use larger
// requests than the copy engine's defaults when [copy] requests and
// request_size are not set: 1 MiB, 16 in flight, the same 16 MiB per
// connection as 64 of 256 KiB. bench/encryption.sh: a full backup of
// 2 GiB of data took 3.4 s instead of 3.9 s into a plain repository, 3.6
// s instead of 4.8 s into an encrypted one (fewer requests through
// nbdkit, qemu-nbd and the image writer).
const (
	diskRequestSize = 1 << 20
	diskRequests    = 16
)

// copyOptions are the copy engine's options for p: [copy] tuning, the
// bandwidth limit, incremental (skip unchanged, hole-only extents) or
// not, and progress reporting.
func (j *vmJob) copyOptions(p *diskPlan) copier.Options {
	cc := j.s.Config.Copy
	reqSize, _ := cc.RequestSizeBytes()
	requests := cc.Requests
	if reqSize == 0 && requests == 0 {
		reqSize, requests = diskRequestSize, diskRequests
	}
	return copier.Options{
		Connections:      cc.Connections,
		Requests:         requests,
		RequestSize:      reqSize,
		Rate:             j.s.Config.CopyRate(),
		Limiter:          j.s.Limiter,
		Incremental:      !p.full,
		ProgressInterval: progressInterval,
		Progress:         func(pr copier.Progress) { j.progress(p, PhaseCopying, pr) },
	}
}

// copyDisk serves disk p of the snapshot with nbdkit and our plugin and
// copies it with copyFrom, given the source's NBD URI: to an NBD
// destination (copyResumable) or a writer in this process (copyInto),
// which the copy flushes. The phases are recorded in ph.
func (j *vmJob) copyDisk(ctx context.Context, snap string, p *diskPlan, ph *phaseLog, copyFrom func(srcURI string) (*copier.Result, error)) (*copier.Result, error) {
	start := time.Now()
	src, err := StartNBDKit(ctx, j.pluginSource(snap, p), j.tmp, fmt.Sprintf("disk%d", p.disk.Key))
	if err != nil {
		return nil, err
	}
	ph.since(StepPluginStart, start)
	defer func() {
		start := time.Now()
		src.Stop()
		ph.since(StepPluginStop, start)
	}()
	res, err := copyFrom(src.URI())
	if res != nil {
		ph.copier(res.Timing)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		if exited, status := src.Exited(time.Second); exited {
			err = fmt.Errorf("%w; the source (nbdkit) died: %v", err, status)
		}
		return nil, src.Explain(err)
	}
	return res, nil
}

// copyURIs copies the NBD export srcURI to dstURI; the result's
// Timing.Connect includes opening both.
func copyURIs(ctx context.Context, srcURI, dstURI string, opts copier.Options) (*copier.Result, error) {
	start := time.Now()
	dst, err := copier.OpenNBD(dstURI)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	defer dst.Close()
	open := time.Since(start).Seconds()
	res, err := copyInto(ctx, srcURI, dst, opts)
	if res != nil {
		res.Timing.Connect += open
	}
	return res, err
}

// copyInto copies the NBD export srcURI to dst, a destination in this
// process, which the caller closes; the result's Timing.Connect includes
// opening the source.
func copyInto(ctx context.Context, srcURI string, dst copier.Destination, opts copier.Options) (*copier.Result, error) {
	start := time.Now()
	src, err := copier.OpenNBD(srcURI)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	defer src.Close()
	open := time.Since(start).Seconds()
	res, err := copier.Copy(ctx, src, dst, opts)
	if res != nil {
		res.Timing.Connect += open
	}
	return res, err
}

// pluginSource is how nbdkit reads disk p of the snapshot.
func (j *vmJob) pluginSource(snap string, p *diskPlan) PluginSource {
	cfg := j.s.Config
	host, port := j.s.Cred.HostPort()
	return PluginSource{
		Plugin:       j.s.Plugin,
		Libdir:       cfg.VDDK.Libdir,
		Server:       host,
		Port:         port,
		User:         j.s.Cred.User,
		Password:     j.s.Cred.Password,
		Thumbprint:   j.s.Cred.Thumbprint,
		VM:           j.vm.Moref,
		Snapshot:     snap,
		File:         p.disk.FileName,
		Transports:   cfg.VDDK.Transports,
		VDDKConfig:   cfg.VDDK.Config,
		ChangedAreas: p.areaFile,
		Verbose:      j.s.Verbose,
	}
}

// DiskReport is the outcome of one disk of a job.
type DiskReport struct {
	Key           int32   `json:"key"`
	Label         string  `json:"label,omitempty"`
	Level         string  `json:"level"` // full or incremental
	Reason        string  `json:"reason,omitempty"`
	Capacity      uint64  `json:"capacity"`
	Image         string  `json:"image,omitempty"`  // backup: the image in the repository
	Target        string  `json:"target,omitempty"` // replication: the target URI
	BytesRead     uint64  `json:"bytes_read"`
	BytesCopied   uint64  `json:"bytes_copied"` // data written
	BytesZeroed   uint64  `json:"bytes_zeroed"`
	BytesSkipped  uint64  `json:"bytes_skipped"`
	Seconds       float64 `json:"seconds"`
	MiBps         float64 `json:"mib_per_sec"`
	DataReduction float64 `json:"data_reduction"` // 1 - copied/capacity
	// Phases is where the disk's time went; HashCPU the CPU time spent
	// hashing (chunk and disk digests), mostly while copying.
	Phases  []PhaseTime `json:"phases,omitempty"`
	HashCPU float64     `json:"hash_cpu_seconds"`
}

func diskReport(p *diskPlan, res *copier.Result, seconds float64) DiskReport {
	d := p.disk
	r := DiskReport{Key: d.Key, Label: d.Label, Level: p.level(), Reason: p.reason, Capacity: d.Capacity,
		BytesRead: res.BytesRead, BytesCopied: res.BytesWritten, BytesZeroed: res.BytesZeroed,
		BytesSkipped: res.BytesSkipped, Seconds: seconds, MiBps: res.MiBps, HashCPU: res.Timing.HashCPU}
	if d.Capacity > 0 {
		r.DataReduction = 1 - float64(res.BytesWritten)/float64(d.Capacity)
	}
	return r
}

// jobLevel is "full", "incremental" or "mixed" for a job's disks.
func jobLevel(plans []*diskPlan) string {
	full := 0
	for _, p := range plans {
		if p.full {
			full++
		}
	}
	switch full {
	case len(plans):
		return LevelFull
	case 0:
		return LevelIncremental
	}
	return "mixed"
}

// copierProgress is the final progress of a finished copy.
func copierProgress(res *copier.Result) copier.Progress {
	return copier.Progress{Stats: res.Stats}
}
