package agent

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sendense/capture/internal/lab"
)

func at(hhmm string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04", "2025-10-04 "+hhmm, time.Local)
	if err != nil {
		panic(err)
	}
	return t
}

func TestWindow(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		open     []string
		closed   []string
		nextFrom string
		next     string // "" = same day as nextFrom; "+HH:MM" = the next day
		bad      string
	}{
		{spec: "", open: []string{"00:00", "12:00", "23:59"}},
		{spec: "22:00-06:00", open: []string{"22:00", "23:59", "00:00", "05:59"}, closed: []string{"06:00", "12:00", "21:59"}, nextFrom: "12:00", next: "22:00"},
		{spec: "22:00-06:00", nextFrom: "21:59", next: "22:00"},
		{spec: "01:30-04:00", open: []string{"01:30", "03:59"}, closed: []string{"01:29", "04:00", "23:00"}, nextFrom: "23:00", next: "+01:30"},
		{spec: "01:30-04:00", nextFrom: "00:10", next: "01:30"},
		{spec: " 9:00-17:00 ", open: []string{"09:00", "16:59"}, closed: []string{"08:59", "17:00"}},
		{spec: "20:00-24:00", open: []string{"20:00", "23:59"}, closed: []string{"00:00", "19:59"}},
		{spec: "22:00", bad: "no '-'"},
		{spec: "22:00-22:00", bad: "equal"},
		{spec: "00:00-24:00", bad: "equal"},
		{spec: "25:00-06:00", bad: "start"},
		{spec: "22:00-06:60", bad: "end"},
		{spec: "22-06", bad: "HH:MM"},
		{spec: "24:00-06:00", bad: "start"},
	} {
		w, err := parseWindow(tc.spec)
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) || !strings.Contains(err.Error(), "backup_window") {
				t.Errorf("parseWindow(%q) = %v, want an error about %q", tc.spec, err, tc.bad)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseWindow(%q): %v", tc.spec, err)
			continue
		}
		for _, h := range tc.open {
			if !w.open(at(h)) {
				t.Errorf("%q closed at %s", tc.spec, h)
			}
		}
		for _, h := range tc.closed {
			if w.open(at(h)) {
				t.Errorf("%q open at %s", tc.spec, h)
			}
		}
		if tc.nextFrom != "" {
			want := at(strings.TrimPrefix(tc.next, "+"))
			if strings.HasPrefix(tc.next, "+") {
				want = want.AddDate(0, 0, 1)
			}
			if got := w.nextOpen(at(tc.nextFrom)); !got.Equal(want) {
				t.Errorf("%q: next opening after %s = %v, want %v", tc.spec, tc.nextFrom, got, want)
			}
		}
	}
}

// fakeClock is real time shifted by an offset the test sets.
type fakeClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// setLocal moves the clock to today's hh:mm local time.
func (c *fakeClock) setLocal(hhmm string) {
	n := time.Now()
	h, _ := time.ParseInLocation("15:04", hhmm, time.Local)
	target := time.Date(n.Year(), n.Month(), n.Day(), h.Hour(), h.Minute(), 0, 0, time.Local)
	c.mu.Lock()
	c.offset = target.Sub(n)
	c.mu.Unlock()
}

// TestBackupWindow: outside backup_window a job waits (health says when
// the window opens) unless forced; when the window opens it runs.
func TestBackupWindow(t *testing.T) {
	e := newEnv(t, []lab.VMSpec{webVM, dbVM})
	e.cfg.Performance.BackupWindow = "22:00-06:00"
	clock := &fakeClock{}
	clock.setLocal("12:00")
	a := e.start(func(o *Options) { o.Now = clock.now })

	waiting := a.startJob(map[string]any{"vm_path": "/DC0/vm/web"})
	forced := a.startJob(map[string]any{"vm_path": "/DC0/vm/prod/db", "force": true})
	v := a.wait(waiting, 30*time.Second, func(v JobView) bool { return v.State == StateWaiting })
	if v.Phase != "waiting_for_window" || v.Started != nil {
		t.Fatalf("job outside the window: %+v", v)
	}
	var h Health
	a.get("/api/v1/health", http.StatusOK, &h)
	want := clock.now().Truncate(time.Minute)
	want = time.Date(want.Year(), want.Month(), want.Day(), 22, 0, 0, 0, time.Local)
	if h.BackupWindow.Open || h.BackupWindow.Window != "22:00-06:00" || h.BackupWindow.NextOpen == nil || !h.BackupWindow.NextOpen.Equal(want) ||
		h.Performance.QueuedJobs < 1 {
		t.Fatalf("health outside the window: %+v", h)
	}
	a.waitSucceeded(forced)
	if v := a.progress(waiting); v.State != StateWaiting {
		t.Fatalf("job outside the window after the forced one: %+v", v)
	}
	if m := a.metrics(); m["sendense_backup_window_open"] != 0 || m[`sendense_backup_jobs{state="waiting_for_window"}`] != 1 {
		t.Fatalf("metrics outside the window: %v", m)
	}

	clock.setLocal("22:00")
	a.sched.kick()
	a.waitSucceeded(waiting)
	var h2 Health
	a.get("/api/v1/health", http.StatusOK, &h2)
	if !h2.BackupWindow.Open || h2.BackupWindow.NextOpen != nil {
		t.Fatalf("health inside the window: %+v", h2.BackupWindow)
	}
}
