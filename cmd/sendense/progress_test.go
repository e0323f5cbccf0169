package main

import (
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sendense/capture/internal/ptytest"
	"github.com/sendense/capture/orchestrator"
)

// TestProgressOnTerminal draws a two-VM job on pseudo-terminals 60 and
// 200 columns wide: a line per disk and a total with percent, MiB/s and
// ETA, redrawn in place without ever wrapping; logs and summaries above
// it; nothing left of the block at the end.
func TestProgressOnTerminal(t *testing.T) {
	for _, cols := range []int{60, 200} {
		t.Run(strconv.Itoa(cols), func(t *testing.T) {
			p, err := ptytest.Open(cols, 20)
			if err != nil {
				t.Skipf("no pseudo-terminal: %v", err)
			}
			defer p.Close()
			screen := ptytest.NewScreen(cols, 20)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(screen, p.Master) }()

			defer func(g globalOptions) { gopts = g }(gopts)
			gopts = globalOptions{}
			if err := setupOutput(p.Slave); err != nil {
				t.Fatal(err)
			}
			if ui == nil {
				t.Fatal("no display on a terminal")
			}
			noTime := func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(logWriter{p.Slave}, &slog.HandlerOptions{ReplaceAttr: noTime})))
			clock := time.Unix(1000, 0)
			pr := newJobProgress(gopts, false, p.Slave, p.Slave)
			pr.now = func() time.Time { return clock }
			pr.started = clock

			pr.startVM("database-server-with-a-long-name")
			pr.startVM("web")
			var frames []string
			disk := func(vm string, key int32, phase orchestrator.Phase, done, total uint64, secs float64) {
				clock = clock.Add(300 * time.Millisecond)
				d := orchestrator.DiskProgress{VM: vm, Key: key, Label: "Hard disk", Level: "incremental", Phase: phase,
					Done: done, Total: total, Copied: done / 4, MiBps: 12.5, Seconds: secs}
				d.Fill()
				pr.Disk(d)
			}
			const g = 1 << 30
			disk("database-server-with-a-long-name", 2000, orchestrator.PhaseQueued, 0, 40*g, 0)
			disk("database-server-with-a-long-name", 2001, orchestrator.PhaseQueued, 0, 2*g, 0)
			disk("web", 2000, orchestrator.PhaseQueued, 0, 16*g, 0)
			for i := uint64(1); i <= 4; i++ {
				disk("database-server-with-a-long-name", 2000, orchestrator.PhaseCopying, i*4*g, 40*g, float64(i))
				disk("web", 2000, orchestrator.PhaseCopying, i*2*g, 16*g, float64(i))
				if i == 2 {
					slog.Warn("a log line")
				}
				frames = append(frames, waitFor(t, screen, fmt.Sprintf("web 2000  %5.1f%%", float64(i*2)*100/16)))
			}
			disk("database-server-with-a-long-name", 2001, orchestrator.PhaseDone, 2*g, 2*g, 1)
			pr.finish("web", &struct{}{}, []string{"web: backup 20260101T000000Z (incremental) done"}, nil)
			frames = append(frames, waitFor(t, screen, "web: backup 20260101T000000Z"))
			pr.finish("database-server-with-a-long-name", &struct{}{}, []string{"database-server-with-a-long-name: backup done"}, nil)
			ui.Close()
			ui = nil
			p.Slave.Close()
			wg.Wait()

			if w := screen.Wraps(); len(w) > 0 {
				t.Fatalf("lines wrapped at %d columns:\n%s", cols, strings.Join(w, "\n"))
			}
			mid := frames[3]
			for _, want := range []string{"database-server-with-a-long-name 2000", "web 2000", "total", "%", "MiB/s", "ETA"} {
				if !strings.Contains(mid, want) {
					t.Errorf("%d columns: %q missing from the block:\n%s", cols, want, mid)
				}
			}
			if cols == 200 && !strings.Contains(mid, "16.0/40.0 GiB") {
				t.Errorf("200 columns: sizes missing:\n%s", mid)
			}
			// The log line is above the block, once.
			if strings.Count(frames[3], `msg="a log line"`) != 1 {
				t.Errorf("log line:\n%s", frames[3])
			}
			lines := screen.Lines()
			final := strings.Join(lines, "\n")
			if !strings.Contains(final, "web: backup 20260101T000000Z (incremental) done") ||
				!strings.HasSuffix(final, "database-server-with-a-long-name: backup done") {
				t.Errorf("final screen:\n%s", final)
			}
			for _, l := range lines {
				if strings.Contains(l, "ETA") || strings.Contains(l, "preparing") {
					t.Errorf("the block was left behind: %q\n%s", l, final)
				}
			}
		})
	}
}

// waitFor waits until the screen shows want (the reader goroutine drains
// the pty) and returns the screen.
func waitFor(t *testing.T, s *ptytest.Screen, want string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cur := s.Snapshot()
		if strings.Contains(cur, want) {
			return cur
		}
		if time.Now().After(deadline) {
			t.Fatalf("the screen never showed %q:\n%s", want, cur)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProgressNotATerminal: nothing but the summaries when standard
// error is not a terminal.
func TestProgressNotATerminal(t *testing.T) {
	var out, errw strings.Builder
	defer func(g globalOptions) { gopts = g }(gopts)
	gopts = globalOptions{}
	if err := setupOutput(&errw); err != nil {
		t.Fatal(err)
	}
	pr := newJobProgress(gopts, false, &out, &errw)
	pr.startVM("web")
	d := orchestrator.DiskProgress{VM: "web", Key: 2000, Phase: orchestrator.PhaseCopying, Done: 5, Total: 10, Seconds: 1}
	d.Fill()
	pr.Disk(d)
	pr.Notice("web", "CBT enabled")
	pr.finish("web", &struct{}{}, []string{"web: done"}, nil)
	if out.String() != "web: done\n" || errw.String() != "web: CBT enabled\n" {
		t.Fatalf("stdout %q, stderr %q", out.String(), errw.String())
	}
}

// TestProgressJSON: --json --progress lines carry the API's fields.
func TestProgressJSON(t *testing.T) {
	var out strings.Builder
	pr := newJobProgress(globalOptions{JSON: true}, true, &out, io.Discard)
	d := orchestrator.DiskProgress{VM: "web", Key: 2000, Level: "full", Phase: orchestrator.PhaseCopying, Done: 1 << 30, Total: 4 << 30, MiBps: 100, Seconds: 10}
	d.Fill()
	pr.Disk(d)
	lines := jsonLines(t, out.String())
	if len(lines) != 2 {
		t.Fatalf("%d lines:\n%s", len(lines), out.String())
	}
	status, progress := lines[0], lines[1]
	for _, k := range []string{"vm", "key", "level", "phase", "bytes_done", "bytes_total", "bytes_copied", "percent", "mib_per_sec", "seconds", "eta_seconds"} {
		if _, ok := status[k]; !ok {
			t.Errorf("status line lacks %q: %v", k, status)
		}
	}
	if status["percent"] != 25.0 || status["eta_seconds"] != 30.0 {
		t.Errorf("status %v", status)
	}
	for _, k := range []string{"bytes_done", "bytes_total", "percent", "mib_per_sec", "eta_seconds", "elapsed_seconds"} {
		if _, ok := progress[k]; !ok || progress["message_type"] != "progress" {
			t.Errorf("progress line lacks %q: %v", k, progress)
		}
	}
}
