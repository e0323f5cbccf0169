package agent

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// window is [performance] backup_window: the daily local-time interval in
// which queued jobs may start ("22:00-06:00" wraps past midnight). The
// zero value (an empty setting) is always open. The start is inclusive,
// the end exclusive; the window only governs when jobs start: a running
// job is never stopped when it closes.
type window struct {
	spec       string
	start, end int // minutes after midnight
	set        bool
}

// parseWindow parses "HH:MM-HH:MM" ("" = always open).
func parseWindow(s string) (window, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return window{}, nil
	}
	bad := func(why string) (window, error) {
		return window{}, fmt.Errorf("[performance] backup_window %q: %s (want HH:MM-HH:MM in local time, e.g. \"22:00-06:00\", or \"\" for always)", s, why)
	}
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return bad("no '-' between start and end")
	}
	start, err := parseClock(a, false)
	if err != nil {
		return bad("start: " + err.Error())
	}
	end, err := parseClock(b, true)
	if err != nil {
		return bad("end: " + err.Error())
	}
	if start == end%(24*60) {
		return bad("start and end are equal")
	}
	return window{spec: s, start: start, end: end, set: true}, nil
}

// parseClock parses "HH:MM"; "24:00" only when allowEnd.
func parseClock(s string, allowEnd bool) (int, error) {
	s = strings.TrimSpace(s)
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(m) != 2 || len(h) < 1 || len(h) > 2 {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	switch {
	case err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59:
		return 0, fmt.Errorf("%q is not HH:MM", s)
	case hh == 24 && mm == 0 && allowEnd:
		return 24 * 60, nil
	case hh > 23:
		return 0, fmt.Errorf("%q is not a time of day", s)
	}
	return hh*60 + mm, nil
}

// String returns the setting ("" when always open).
func (w window) String() string { return w.spec }

// minuteOfDay is t's local time of day in minutes.
func minuteOfDay(t time.Time) int { return t.Hour()*60 + t.Minute() }

// open reports whether jobs may start at t.
func (w window) open(t time.Time) bool {
	if !w.set {
		return true
	}
	m := minuteOfDay(t)
	if w.start < w.end {
		return m >= w.start && m < w.end
	}
	return m >= w.start || m < w.end
}

// nextOpen returns when the window next opens after t (t itself when it
// is open; the zero time when there is no window).
func (w window) nextOpen(t time.Time) time.Time {
	if !w.set {
		return time.Time{}
	}
	if w.open(t) {
		return t
	}
	y, mo, d := t.Date()
	next := time.Date(y, mo, d, w.start/60, w.start%60, 0, 0, t.Location())
	if !next.After(t) {
		next = time.Date(y, mo, d+1, w.start/60, w.start%60, 0, 0, t.Location())
	}
	return next
}
