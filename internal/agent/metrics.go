package agent

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// durationBuckets are the upper bounds (seconds) of the job duration
// histogram: from a small incremental to a night-long full.
var durationBuckets = []float64{5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800}

// histogram is a Prometheus histogram without labels of its own.
type histogram struct {
	counts []uint64 // per bucket, not cumulative
	sum    float64
	n      uint64
}

func (h *histogram) observe(v float64) {
	if h.counts == nil {
		h.counts = make([]uint64, len(durationBuckets))
	}
	for i, b := range durationBuckets {
		if v <= b {
			h.counts[i]++
			break
		}
	}
	h.sum += v
	h.n++
}

// metrics are the agent's counters since it started (Prometheus counters
// start from zero with the process). Gauges are computed at scrape time.
type metrics struct {
	mu             sync.Mutex
	jobs           map[State]uint64     // finished jobs by final state
	durations      map[State]*histogram // started → finished
	processed      uint64               // bytes of disks dealt with (live)
	copied         uint64               // bytes written into images (live)
	read           uint64               // bytes read from snapshots (finished jobs)
	capacity       uint64               // capacity of the disks of succeeded backups
	reduced        uint64               // capacity − copied of succeeded backups
	lastReduction  float64
	lastThroughput float64 // MiB/s
	lastSuccess    time.Time
	requests       map[int]uint64 // API requests by status code
}

func newMetrics() *metrics {
	return &metrics{jobs: map[State]uint64{}, durations: map[State]*histogram{}, requests: map[int]uint64{}}
}

// addProgress counts bytes as disks report progress.
func (m *metrics) addProgress(done, copied uint64) {
	if done == 0 && copied == 0 {
		return
	}
	m.mu.Lock()
	m.processed += done
	m.copied += copied
	m.mu.Unlock()
}

func (m *metrics) request(code int) {
	m.mu.Lock()
	m.requests[code]++
	m.mu.Unlock()
}

// finished records a job that ended (j is a copy).
func (m *metrics) finished(j *Job) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.jobs[j.State]++
	if j.Started != nil && j.Finished != nil {
		h := m.durations[j.State]
		if h == nil {
			h = &histogram{}
			m.durations[j.State] = h
		}
		h.observe(j.Finished.Sub(*j.Started).Seconds())
	}
	if j.Report != nil {
		m.read += j.Report.BytesRead
	}
	if j.State == StateSucceeded && j.Report != nil {
		r := j.Report
		m.capacity += r.Capacity
		if r.Capacity > r.Copied {
			m.reduced += r.Capacity - r.Copied
		}
		if r.Capacity > 0 {
			m.lastReduction = 1 - float64(r.Copied)/float64(r.Capacity)
		}
		m.lastThroughput = j.throughput()
		if j.Finished != nil {
			m.lastSuccess = *j.Finished
		}
	}
}

// gauges are the values the server computes at scrape time.
type gauges struct {
	version      string
	started      time.Time
	vcenterUp    bool
	byState      map[State]int // active jobs
	throughput   float64       // MiB/s of the running jobs
	maxBackups   int
	windowOpen   bool
	lastSuccess  time.Time // from the history, survives restarts
	restartFails int       // jobs found interrupted at start
}

// promWriter writes the Prometheus text exposition format (version 0.0.4).
type promWriter struct {
	w *bufio.Writer
}

func (p promWriter) head(name, typ, help string) {
	fmt.Fprintf(p.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func (p promWriter) sample(name string, labels []string, v float64) {
	p.w.WriteString(name)
	if len(labels) > 0 {
		p.w.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				p.w.WriteByte(',')
			}
			fmt.Fprintf(p.w, "%s=\"%s\"", labels[i], labelEscaper.Replace(labels[i+1]))
		}
		p.w.WriteByte('}')
	}
	p.w.WriteByte(' ')
	p.w.WriteString(formatFloat(v))
	p.w.WriteByte('\n')
}

func (p promWriter) single(name, typ, help string, v float64) {
	p.head(name, typ, help)
	p.sample(name, nil, v)
}

// labelEscaper escapes a label value as the text format requires.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsNaN(v):
		return "NaN"
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatInt(int64(v), 10) // counters and timestamps without an exponent
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// write writes every metric (docs/api.md, "Metrics").
func (m *metrics) write(out io.Writer, g gauges) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := promWriter{bufio.NewWriter(out)}

	p.head("sendense_agent_info", "gauge", "The agent's version (always 1).")
	p.sample("sendense_agent_info", []string{"version", g.version}, 1)
	p.single("sendense_agent_start_time_seconds", "gauge", "When the agent started, in seconds since the epoch.", float64(g.started.Unix()))
	p.single("sendense_vcenter_up", "gauge", "Whether the last vCenter check (cached a few seconds) succeeded.", boolf(g.vcenterUp))
	p.single("sendense_backup_window_open", "gauge", "Whether [performance] backup_window lets queued jobs start now (1 when no window is set).", boolf(g.windowOpen))
	p.single("sendense_backup_max_concurrent", "gauge", "[performance] max_concurrent_backups.", float64(g.maxBackups))

	p.head("sendense_backup_jobs", "gauge", "Jobs not finished, by state.")
	for _, st := range []State{StateQueued, StateWaiting, StateRunning} {
		p.sample("sendense_backup_jobs", []string{"state", string(st)}, float64(g.byState[st]))
	}
	p.head("sendense_backup_jobs_total", "counter", "Jobs finished since the agent started, by final state (failed = failures).")
	for _, st := range []State{StateSucceeded, StateFailed, StateCanceled} {
		p.sample("sendense_backup_jobs_total", []string{"state", string(st)}, float64(m.jobs[st]))
	}
	p.single("sendense_backup_interrupted_jobs", "gauge", "Jobs found running at start (interrupted by a restart) and marked failed.", float64(g.restartFails))

	p.head("sendense_backup_job_duration_seconds", "histogram", "Duration of finished jobs, start to end (queueing excluded), by final state.")
	states := make([]string, 0, len(m.durations))
	for st := range m.durations {
		states = append(states, string(st))
	}
	sort.Strings(states)
	for _, st := range states {
		h := m.durations[State(st)]
		var cum uint64
		for i, b := range durationBuckets {
			cum += h.counts[i]
			p.sample("sendense_backup_job_duration_seconds_bucket", []string{"state", st, "le", formatFloat(b)}, float64(cum))
		}
		p.sample("sendense_backup_job_duration_seconds_bucket", []string{"state", st, "le", "+Inf"}, float64(h.n))
		p.sample("sendense_backup_job_duration_seconds_sum", []string{"state", st}, h.sum)
		p.sample("sendense_backup_job_duration_seconds_count", []string{"state", st}, float64(h.n))
	}

	p.single("sendense_backup_processed_bytes_total", "counter", "Bytes of disks dealt with by backups (copied, zeroed or skipped), counted as they progress.", float64(m.processed))
	p.single("sendense_backup_copied_bytes_total", "counter", "Bytes written into repository images, counted as backups progress.", float64(m.copied))
	p.single("sendense_backup_read_bytes_total", "counter", "Bytes read from snapshots by finished backups.", float64(m.read))
	p.single("sendense_backup_capacity_bytes_total", "counter", "Capacity of the disks of succeeded backups.", float64(m.capacity))
	p.single("sendense_backup_reduced_bytes_total", "counter", "Capacity minus bytes copied of succeeded backups: what CBT and sparseness saved.", float64(m.reduced))
	p.single("sendense_backup_data_reduction_ratio", "gauge", "1 - copied/capacity of the last succeeded backup.", m.lastReduction)
	p.single("sendense_backup_throughput_mib_per_second", "gauge", "Read throughput of the running jobs together, MiB/s.", g.throughput)
	p.single("sendense_backup_last_throughput_mib_per_second", "gauge", "Read throughput of the last succeeded backup over its copy phase, MiB/s.", m.lastThroughput)
	last := m.lastSuccess
	if g.lastSuccess.After(last) {
		last = g.lastSuccess
	}
	var lastv float64
	if !last.IsZero() {
		lastv = float64(last.Unix())
	}
	p.single("sendense_backup_last_success_timestamp_seconds", "gauge", "When the last succeeded backup finished (0: never), in seconds since the epoch.", lastv)

	p.head("sendense_api_requests_total", "counter", "API requests answered, by HTTP status code.")
	codes := make([]int, 0, len(m.requests))
	for c := range m.requests {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		p.sample("sendense_api_requests_total", []string{"code", strconv.Itoa(c)}, float64(m.requests[c]))
	}
	return p.w.Flush()
}
