package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/orchestrator"
)

// jobProgress prints the progress of backup and replication jobs (it is
// their orchestrator.Reporter):
//
//   - on a terminal (ui), a block redrawn in place at most every 200 ms:
//     one line per disk of the VMs in progress (percent, bytes, MiB/s,
//     ETA) and a total line; notices, logs and each VM's summary are
//     printed above it;
//   - not on a terminal: nothing until each VM ends, then its summary;
//   - with --json: "notice" lines and each VM's "summary"; with --progress
//     also a "status" line per disk update (the API's disk fields, plus
//     vm) and, at most every second, a "progress" line with the totals
//     (the API's job fields).
type jobProgress struct {
	mu       sync.Mutex
	json     bool
	status   bool // --json --progress
	quiet    bool
	out      io.Writer // summaries (standard output)
	errw     io.Writer // notices (standard error)
	disks    map[diskID]orchestrator.DiskProgress
	order    []diskID
	vms      []string // VMs in progress, in start order
	started  time.Time
	copying  time.Time // first copy progress
	lastDraw time.Time
	lastJSON time.Time
	now      func() time.Time
}

type diskID struct {
	vm  string
	key int32
}

// drawInterval bounds how often the terminal block is redrawn, and
// jsonInterval how often "progress" lines are written.
const (
	drawInterval = 200 * time.Millisecond
	jsonInterval = time.Second
)

func newJobProgress(g globalOptions, status bool, stdout, stderr io.Writer) *jobProgress {
	return &jobProgress{
		json:    g.JSON,
		status:  g.JSON && status,
		quiet:   g.Quiet,
		out:     stdout,
		errw:    stderr,
		disks:   map[diskID]orchestrator.DiskProgress{},
		started: time.Now(),
		now:     time.Now,
	}
}

// startVM says that the job of vm started (its snapshot and disks come
// next).
func (p *jobProgress) startVM(vm string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.vms = append(p.vms, vm)
	p.redraw(true)
}

func (p *jobProgress) Disk(d orchestrator.DiskProgress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := diskID{d.VM, d.Key}
	old, seen := p.disks[id]
	if !seen {
		p.order = append(p.order, id)
	}
	p.disks[id] = d
	now := p.now()
	if d.Phase == orchestrator.PhaseCopying && p.copying.IsZero() {
		p.copying = now
	}
	if p.status {
		printJSON(p.out, "status", d)
		if now.Sub(p.lastJSON) >= jsonInterval || d.Phase == orchestrator.PhaseDone {
			p.lastJSON = now
			printJSON(p.out, "progress", p.totals(now))
		}
		return
	}
	p.redraw(!seen || old.Phase != d.Phase)
}

// redraw updates the terminal block, at most every drawInterval unless
// force; p.mu held.
func (p *jobProgress) redraw(force bool) {
	if ui == nil || p.json || p.quiet {
		return
	}
	now := p.now()
	if !force && now.Sub(p.lastDraw) < drawInterval {
		return
	}
	p.lastDraw = now
	ui.Set("jobs", p.lines(now))
}

// jobTotals is a "progress" line: the fields of the API's job progress.
type jobTotals struct {
	BytesDone      uint64   `json:"bytes_done"`
	BytesTotal     uint64   `json:"bytes_total"`
	Percent        float64  `json:"percent"`
	MiBps          float64  `json:"mib_per_sec"`
	ETASeconds     *float64 `json:"eta_seconds"`
	ElapsedSeconds float64  `json:"elapsed_seconds"`
	Disks          int      `json:"disks"`
	DisksDone      int      `json:"disks_done"`
}

// totals adds up the disks of the VMs in progress; p.mu held.
func (p *jobProgress) totals(now time.Time) jobTotals {
	var t jobTotals
	for _, id := range p.order {
		d := p.disks[id]
		t.Disks++
		t.BytesDone += min(d.Done, d.Total)
		t.BytesTotal += d.Total
		switch d.Phase {
		case orchestrator.PhaseCopying:
			t.MiBps += d.MiBps
		case orchestrator.PhaseDone:
			t.DisksDone++
		}
	}
	if t.BytesTotal > 0 {
		t.Percent = orchestrator.Round1(float64(t.BytesDone) * 100 / float64(t.BytesTotal))
	}
	t.MiBps = orchestrator.Round1(t.MiBps)
	t.ElapsedSeconds = orchestrator.Round1(now.Sub(p.started).Seconds())
	if el := now.Sub(p.copying).Seconds(); !p.copying.IsZero() && el > 0.5 && t.BytesDone > 0 {
		eta := orchestrator.Round1(float64(t.BytesTotal-t.BytesDone) / (float64(t.BytesDone) / el))
		t.ETASeconds = &eta
	}
	return t
}

// lines is the terminal block: a line per disk, a line per VM still
// preparing, and the total; p.mu held.
func (p *jobProgress) lines(now time.Time) []string {
	var out []string
	hasDisks := map[string]bool{}
	for _, id := range p.order {
		d := p.disks[id]
		hasDisks[d.VM] = true
		out = append(out, diskLine(d))
	}
	for _, vm := range p.vms {
		if !hasDisks[vm] {
			out = append(out, fmt.Sprintf("%s  preparing: CBT, snapshot, changed blocks", vm))
		}
	}
	if len(p.order) == 0 {
		return out
	}
	t := p.totals(now)
	eta := "--:--"
	if t.ETASeconds != nil {
		eta = units.FormatDuration(*t.ETASeconds)
	}
	return append(out, fmt.Sprintf("total  %5.1f%%  %s  ETA %s  %s  %d/%d disks done, %s elapsed",
		t.Percent, units.FormatRate(t.MiBps), eta, sizeOf(t.BytesDone, t.BytesTotal), t.DisksDone, t.Disks,
		units.FormatDuration(t.ElapsedSeconds)))
}

// sizeOf is "14.5/32.0 MiB": done in the unit of total (as
// units.FormatSize chooses it).
func sizeOf(done, total uint64) string {
	if total < 1024 {
		return fmt.Sprintf("%d/%d B", done, total)
	}
	div, exp := uint64(1024), 0
	for m := total / 1024; m >= 1024 && exp < 5; m /= 1024 {
		div *= 1024
		exp++
	}
	return fmt.Sprintf("%.1f/%.1f %ciB", float64(done)/float64(div), float64(total)/float64(div), "KMGTPE"[exp])
}

// diskLine is a disk's line of the block: the most useful fields first,
// as lines are cut to the terminal's width.
func diskLine(d orchestrator.DiskProgress) string {
	name := fmt.Sprintf("%s %d", d.VM, d.Key)
	switch d.Phase {
	case orchestrator.PhaseQueued:
		return fmt.Sprintf("%s  queued  %s %s", name, units.FormatSize(d.Total), d.Level)
	case orchestrator.PhaseDone:
		return fmt.Sprintf("%s  done  %s copied of %s, %s", name, units.FormatSize(d.Copied), units.FormatSize(d.Total), d.Level)
	case orchestrator.PhaseCopying:
		eta := "--:--"
		if d.ETASeconds != nil {
			eta = units.FormatDuration(*d.ETASeconds)
		}
		return fmt.Sprintf("%s  %5.1f%%  %s  ETA %s  %s  %s", name, d.Percent, units.FormatRate(d.MiBps), eta,
			sizeOf(d.Done, d.Total), d.Level)
	}
	return fmt.Sprintf("%s  %s", name, d.Phase)
}

func (p *jobProgress) Notice(vm, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		printJSON(p.out, "notice", map[string]string{"vm": vm, "message": msg})
		return
	}
	if p.quiet {
		return
	}
	printAbove(p.errw, "%s: %s", vm, msg)
}

func (p *jobProgress) Snapshot(vm, backupID, moref string) {
	slog.Debug("snapshot taken", "vm", vm, "backup", backupID, "snapshot", moref)
}

// finish prints the outcome of vm's job: with --json the report as a
// "summary" line, else the text lines (one per disk and a total), above
// the block; vm's disks leave the block. Errors are printed by the
// caller.
func (p *jobProgress) finish(vm string, report any, lines []string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	order := p.order[:0]
	for _, id := range p.order {
		if id.vm == vm {
			delete(p.disks, id)
		} else {
			order = append(order, id)
		}
	}
	p.order = order
	for i, v := range p.vms {
		if v == vm {
			p.vms = append(p.vms[:i], p.vms[i+1:]...)
			break
		}
	}
	var block []string // nil: the block goes
	if len(p.order) > 0 || len(p.vms) > 0 {
		block = p.lines(p.now())
	}
	switch {
	case p.json:
		if err == nil && report != nil {
			printJSON(p.out, "summary", report)
		}
	case p.quiet:
	case err != nil || report == nil:
		ui.Set("jobs", block)
	default:
		ui.PrintSet(p.out, []byte(strings.Join(lines, "\n")+"\n"), "jobs", block)
	}
}
