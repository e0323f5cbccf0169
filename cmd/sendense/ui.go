package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/term"
)

// statusDisplay keeps a block of status lines at the bottom of a
// terminal and redraws it in place; text printed through it (logs,
// notices, summaries) goes above the block. Each line is cut to the
// terminal's width, so nothing wraps however narrow the terminal is.
//
// Between draws the cursor rests at the start of the block's first line:
// erasing the block is "clear to the end of the screen".
type statusDisplay struct {
	mu    sync.Mutex
	term  terminal            // the terminal (standard error)
	slots map[string][]string // the block, by owner ("jobs", "ssh")
	drawn int                 // lines drawn now
}

// terminal is standard error when it is a terminal: an *os.File, or the
// wrapper that survives a closed pipe (signals.go).
type terminal interface {
	io.Writer
	Fd() uintptr
}

func newStatusDisplay(f terminal) *statusDisplay {
	return &statusDisplay{term: f, slots: map[string][]string{}}
}

// Set replaces the lines of slot (nil removes them) and redraws.
func (d *statusDisplay) Set(slot string, lines []string) {
	d.PrintSet(nil, nil, slot, lines)
}

// Print writes b to w above the block. w is standard output or the
// terminal; when it is another file, b is just written.
func (d *statusDisplay) Print(w io.Writer, b []byte) {
	d.PrintSet(w, b, "", nil)
}

// PrintSet writes b to w above the block (when w is not nil) and
// replaces the lines of slot (when slot is not ""), with one redraw.
func (d *statusDisplay) PrintSet(w io.Writer, b []byte, slot string, lines []string) {
	if d == nil {
		if w != nil {
			w.Write(b)
		}
		return
	}
	if w != nil && !d.onTerminal(w) {
		w.Write(b)
		w = nil
		if slot == "" {
			return
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case slot == "":
	case lines == nil:
		delete(d.slots, slot)
	default:
		d.slots[slot] = lines
	}
	d.erase()
	if w != nil {
		w.Write(b)
		if len(b) > 0 && b[len(b)-1] != '\n' {
			w.Write([]byte("\n"))
		}
	}
	d.draw()
}

// Close erases the block.
func (d *statusDisplay) Close() {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.slots = map[string][]string{}
	d.erase()
}

func (d *statusDisplay) onTerminal(w io.Writer) bool {
	if w == io.Writer(d.term) {
		return true
	}
	return isTerminal(w)
}

// size is the terminal's width and height (80x24 when unknown).
func (d *statusDisplay) size() (int, int) {
	w, h, err := term.GetSize(int(d.term.Fd()))
	if err != nil || w <= 0 || h <= 0 {
		return 80, 24
	}
	return w, h
}

// erase clears the block; d.mu held.
func (d *statusDisplay) erase() {
	if d.drawn > 0 {
		io.WriteString(d.term, "\r\x1b[J")
		d.drawn = 0
	}
}

// draw writes the block from the cursor and puts the cursor back at its
// start; d.mu held.
func (d *statusDisplay) draw() {
	var names []string
	for n := range d.slots {
		names = append(names, n)
	}
	sort.Strings(names)
	var lines []string
	for _, n := range names {
		lines = append(lines, d.slots[n]...)
	}
	if len(lines) == 0 {
		return
	}
	width, height := d.size()
	if max := height - 1; len(lines) > max && max > 0 {
		lines = append(lines[:max-1], fmt.Sprintf("… %d more lines (a larger terminal shows them)", len(lines)-max+1))
	}
	var b strings.Builder
	b.WriteString("\r")
	for _, l := range lines {
		b.WriteString(fitWidth(l, width-1))
		b.WriteString("\x1b[K\n")
	}
	fmt.Fprintf(&b, "\x1b[%dA", len(lines))
	io.WriteString(d.term, b.String())
	d.drawn = len(lines)
}

// fitWidth cuts s to at most n characters (columns: sendense's lines are
// made of one-column characters), ending with "…" when cut.
func fitWidth(s string, n int) string {
	if n < 1 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// ui is the terminal display of this run: nil unless standard error is a
// terminal and neither --json nor --quiet is given.
var ui *statusDisplay

// errOut is the run's standard error.
var errOut io.Writer = os.Stderr

// logWriter is where log lines go: above the display, if any.
type logWriter struct{ w io.Writer }

func (l logWriter) Write(p []byte) (int, error) {
	if ui != nil && ui.onTerminal(l.w) {
		ui.Print(l.w, p)
		return len(p), nil
	}
	return l.w.Write(p)
}

// setupOutput prepares the display and the logger of a run. Log level:
// --log-level, else warn (debug with --verbose); format --log-format.
func setupOutput(stderr io.Writer) error {
	ui, errOut = nil, stderr
	if f, ok := stderr.(terminal); ok && !gopts.JSON && !gopts.Quiet && isTerminal(f) {
		ui = newStatusDisplay(f)
	}
	log, err := newLogger(logWriter{stderr}, slog.LevelWarn)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	return nil
}

// newLogger is the logger of --log-level and --log-format on w: level
// def unless --verbose (debug), --quiet (warn) or --log-level says.
func newLogger(w io.Writer, def slog.Level) (*slog.Logger, error) {
	level := def
	switch {
	case gopts.Verbose:
		level = slog.LevelDebug
	case gopts.Quiet:
		level = max(level, slog.LevelWarn)
	}
	if gopts.LogLevel != "" {
		if err := level.UnmarshalText([]byte(gopts.LogLevel)); err != nil {
			return nil, usageErrorf("--log-level %q: use debug, info, warn or error", gopts.LogLevel)
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch gopts.LogFormat {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageErrorf("--log-format %q: use text or json", gopts.LogFormat)
}

// printAbove writes a line of text to w (standard output or error) above
// the display.
func printAbove(w io.Writer, format string, a ...any) {
	ui.Print(w, []byte(fmt.Sprintf(format, a...)+"\n"))
}
