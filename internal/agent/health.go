package agent

import (
	"net/http"
	"time"
)

// Health is the answer of GET /api/v1/health (the product sheet's shape,
// plus a few fields).
type Health struct {
	Status            string       `json:"status"`             // healthy or degraded
	VCenterConnection string       `json:"vcenter_connection"` // ok or error
	VCenterError      string       `json:"vcenter_error,omitempty"`
	CBTSupport        string       `json:"cbt_support"`   // available, unavailable, unknown
	TunnelStatus      string       `json:"tunnel_status"` // not configured, connected, disconnected
	LastBackup        *time.Time   `json:"last_backup"`   // end of the last succeeded backup
	Performance       HealthPerf   `json:"performance"`
	BackupWindow      HealthWindow `json:"backup_window"`
	Version           string       `json:"version"`
	UptimeSeconds     float64      `json:"uptime_seconds"`
}

// HealthPerf is the performance part of the health answer.
type HealthPerf struct {
	// AvgThroughputGBps is the read throughput of the last (at most 10)
	// succeeded backups in GiB/s (the product sheet's name and unit).
	AvgThroughputGBps    float64 `json:"avg_throughput_gbps"`
	AvgThroughputMiBps   float64 `json:"avg_throughput_mib_per_sec"`
	CurrentMiBps         float64 `json:"current_mib_per_sec"` // running jobs together
	ActiveJobs           int     `json:"active_jobs"`         // running
	QueuedJobs           int     `json:"queued_jobs"`         // queued or waiting for the window
	MaxConcurrentBackups int     `json:"max_concurrent_backups"`
}

// HealthWindow describes [performance] backup_window.
type HealthWindow struct {
	Window   string     `json:"window"` // "" = always open
	Open     bool       `json:"open"`
	NextOpen *time.Time `json:"next_open,omitempty"` // when closed
}

// avgWindow is how many recent succeeded backups the average covers.
const avgWindow = 10

func (s *Server) health(r *http.Request) Health {
	st := s.vc.check(r.Context())
	counts, cur := s.sched.counts()
	h := Health{
		Status:            "healthy",
		VCenterConnection: "ok",
		CBTSupport:        st.cbtSupport(),
		TunnelStatus:      s.tunnelStatus(),
		Version:           s.opts.Version,
		UptimeSeconds:     round1(s.now().Sub(s.started).Seconds()),
	}
	if !st.OK {
		h.Status, h.VCenterConnection, h.VCenterError = "degraded", "error", st.Err
	}
	if h.TunnelStatus == "disconnected" {
		h.Status = "degraded"
	}
	last, avg := s.recentBackups()
	h.LastBackup = last
	h.Performance = HealthPerf{
		AvgThroughputGBps:    round3(avg / 1024),
		AvgThroughputMiBps:   round1(avg),
		CurrentMiBps:         round1(cur),
		ActiveJobs:           counts[StateRunning],
		QueuedJobs:           counts[StateQueued] + counts[StateWaiting],
		MaxConcurrentBackups: s.sched.max,
	}
	now := s.now()
	h.BackupWindow = HealthWindow{Window: s.window.String(), Open: s.window.open(now)}
	if !h.BackupWindow.Open {
		t := s.window.nextOpen(now)
		h.BackupWindow.NextOpen = &t
	}
	return h
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// tunnelStatus is the SSH tunnel's state (see Options.TunnelStatus).
func (s *Server) tunnelStatus() string {
	if s.opts.TunnelStatus != nil {
		return s.opts.TunnelStatus()
	}
	switch {
	case s.cfg.Tunnel.Host == "":
		return "not configured"
	case s.cfg.Tunnel.APIForward != "" && s.rev.up.Load():
		return "connected"
	}
	return s.rev.tun.TunnelStatus()
}

// recentBackups returns when the last succeeded backup ended and the read
// throughput (MiB/s) of the last avgWindow succeeded backups together.
func (s *Server) recentBackups() (*time.Time, float64) {
	q := s.sched
	q.mu.Lock()
	defer q.mu.Unlock()
	var last *time.Time
	if !q.lastSuccess.IsZero() {
		t := q.lastSuccess
		last = &t
	}
	var mib, secs float64
	for _, b := range q.recent {
		mib += b.mib
		secs += b.secs
	}
	if secs == 0 {
		return last, 0
	}
	return last, mib / secs
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.health(r))
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	counts, cur := s.sched.counts()
	st, ok := s.vc.cached()
	if !ok {
		st = s.vc.check(r.Context())
	}
	last, _ := s.recentBackups()
	g := gauges{version: s.opts.Version, started: s.started, vcenterUp: st.OK, byState: counts, throughput: cur,
		maxBackups: s.sched.max, windowOpen: s.window.open(s.now()), restartFails: s.interrupted}
	if last != nil {
		g.lastSuccess = *last
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if err := s.metrics.write(w, g); err != nil {
		s.log.Debug("writing metrics", "err", err)
	}
}
