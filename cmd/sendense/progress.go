package main

import (
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/orchestrator"
)

// jobProgress prints the progress of backup and replication jobs: on a
// terminal a status line with every disk in flight, redrawn at most every
// 200 ms; otherwise nothing until each VM ends, then one summary line per
// disk. With --json: "notice" and "summary" lines, and "status" lines too
// with --progress.
type jobProgress struct {
	mu      sync.Mutex
	json    bool
	status  bool // JSON status lines
	bar     bool // terminal status line
	quiet   bool
	out     io.Writer // summaries
	tty     io.Writer // status line
	disks   map[string]orchestrator.DiskProgress
	last    time.Time
	drawn   int
	started time.Time
}

func newJobProgress(g globalOptions, status bool, stdout, stderr io.Writer) *jobProgress {
	return &jobProgress{
		json:    g.JSON,
		status:  g.JSON && status,
		bar:     !g.JSON && !g.Quiet && isTerminal(stderr),
		quiet:   g.Quiet,
		out:     stdout,
		tty:     stderr,
		disks:   map[string]orchestrator.DiskProgress{},
		started: time.Now(),
	}
}

func (p *jobProgress) Disk(d orchestrator.DiskProgress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := fmt.Sprintf("%s/%d", d.VM, d.Key)
	p.disks[key] = d
	if p.status {
		printJSON(p.out, "status", d)
		return
	}
	if !p.bar || time.Since(p.last) < 200*time.Millisecond && d.Phase == orchestrator.PhaseCopying {
		return
	}
	p.last = time.Now()
	p.draw()
}

// draw rewrites the status line; p.mu held.
func (p *jobProgress) draw() {
	keys := make([]string, 0, len(p.disks))
	for k, d := range p.disks {
		if d.Phase == orchestrator.PhaseCopying {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		d := p.disks[k]
		pct := 0.0
		if d.Total > 0 {
			pct = float64(d.Done) * 100 / float64(d.Total)
		}
		parts = append(parts, fmt.Sprintf("%s disk %d %s %5.1f%% %s %.0f MiB/s", d.VM, d.Key, d.Level, pct, units.FormatSize(d.Copied), d.MiBps))
	}
	line := strings.Join(parts, " | ")
	fmt.Fprintf(p.tty, "\r%-*s", p.drawn, line)
	p.drawn = len(line)
}

func (p *jobProgress) clearLine() {
	if p.drawn > 0 {
		fmt.Fprintf(p.tty, "\r%s\r", strings.Repeat(" ", p.drawn))
		p.drawn = 0
	}
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
	p.clearLine()
	fmt.Fprintf(p.tty, "%s: %s\n", vm, msg)
}

func (p *jobProgress) Snapshot(vm, backupID, moref string) {
	slog.Debug("snapshot taken", "vm", vm, "backup", backupID, "snapshot", moref)
}

// finish prints the outcome of one VM's job: with --json the report as
// a "summary" line, else the text lines (one per disk and a total).
// Errors are printed by main.
func (p *jobProgress) finish(report any, lines []string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLine()
	switch {
	case err != nil || report == nil:
	case p.json:
		printJSON(p.out, "summary", report)
	case !p.quiet:
		for _, l := range lines {
			fmt.Fprintln(p.out, l)
		}
	}
}
