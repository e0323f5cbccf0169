package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/orchestrator"
)

// DefaultHistory is how many finished jobs the store keeps.
const DefaultHistory = 1000

// shutdownGrace bounds how long in-flight API requests may take once a
// shutdown starts.
const shutdownGrace = 10 * time.Second

// Options configure a Server.
type Options struct {
	// Config is the agent's configuration: [api], [performance],
	// [repository], [backup] quiesce and [tunnel] host are read here; the
	// rest is what Connect's services use.
	Config *config.Config
	// Connect logs in to vCenter and returns the services every job
	// shares (the CLI passes the very function `sendense backup` uses).
	// The server calls it at start and again every few seconds while it
	// fails; it must not set a Reporter (each job gets its own).
	Connect func(ctx context.Context) (*orchestrator.Services, error)
	// InsecureNoAuth serves without a bearer token. Only allowed on a
	// loopback address without TLS.
	InsecureNoAuth bool
	// Version is reported by health and metrics.
	Version string
	// Logger receives the agent's logs (default slog.Default()). Tokens and
	// passwords are never logged.
	Logger *slog.Logger
	// TunnelStatus is the hook the SSH tunnel sets: it returns "connected"
	// or "disconnected". nil: health says "not configured" when [tunnel]
	// host is empty, else "disconnected" (nothing keeps a tunnel up).
	TunnelStatus func() string
	// History is how many finished jobs are kept (default DefaultHistory).
	History int
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// ConfigError is an error of New caused by the configuration (the
// token, TLS files, listen address, backup window…): the CLI's exit
// status 2.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Server is the capture agent's API server.
type Server struct {
	cfg      *config.Config
	opts     Options
	rev      reverse
	log      *slog.Logger
	now      func() time.Time
	history  int
	stateDir string
	token    *tokenAuth // nil: --insecure-no-auth
	authz    *authz
	tlsCfg   *tls.Config
	window   window
	started  time.Time

	store   *store
	vc      *vcenter
	sched   *scheduler
	metrics *metrics
	runners map[string]func(context.Context, *job) (*orchestrator.BackupReport, error)
	limiter *rate.Limiter // [copy] rate / bandwidth_limit_mbps, shared by every job

	interrupted int // jobs found running at start
	handler     http.Handler
}

// New checks the configuration, reads the token, opens the job store and
// recovers the jobs a previous run left: running ones are marked failed
// ("interrupted by an agent restart") and their snapshots are removed once
// vCenter answers; queued ones are queued again.
func New(opts Options) (*Server, error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("agent: no configuration")
	}
	if opts.Connect == nil {
		return nil, errors.New("agent: no vCenter connect function")
	}
	s := &Server{cfg: cfg, opts: opts, log: opts.Logger, now: opts.Now, history: opts.History, metrics: newMetrics()}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.history <= 0 {
		s.history = DefaultHistory
	}
	s.started = s.now()
	var err error
	if s.window, err = parseWindow(cfg.Performance.BackupWindow); err != nil {
		return nil, &ConfigError{err}
	}
	if cfg.Performance.MaxConcurrentBackups < 1 {
		return nil, &ConfigError{errors.New("[performance] max_concurrent_backups must be at least 1")}
	}
	if err := s.setupListenSecurity(); err != nil {
		return nil, &ConfigError{err}
	}
	if s.authz, err = newAuthz(cfg); err != nil {
		return nil, &ConfigError{err}
	}
	if _, err := cfg.State.Lease(); err != nil {
		return nil, &ConfigError{fmt.Errorf("[state] snapshot_lease: %w", err)}
	}
	if _, err := orchestrator.StateDir(cfg); err != nil { // the VM locks every job takes
		return nil, &ConfigError{err}
	}
	if s.stateDir, err = StateDir(cfg.API.StateDir); err != nil {
		return nil, &ConfigError{err}
	}
	if s.store, err = openStore(s.stateDir); err != nil {
		return nil, err
	}
	s.limiter = orchestrator.NewLimiter(cfg)
	s.vc = newVCenter(opts.Connect, s.log, s.now)
	s.rev.tun = &orchestrator.Services{Config: cfg, Tunnels: orchestrator.NewTunnelPool()}
	s.sched = newScheduler(s, cfg.Performance.MaxConcurrentBackups)
	s.vc.onConnect = s.sched.kick
	s.runners = map[string]func(context.Context, *job) (*orchestrator.BackupReport, error){
		KindBackup:    s.runBackup,
		KindReplicate: s.runReplicate,
	}
	if err := s.recoverJobs(); err != nil {
		s.store.close()
		return nil, err
	}
	s.handler = s.routes()
	return s, nil
}

// StateDir returns the directory of the job store: dir ([api] state_dir)
// when set, else /var/lib/sendense for root, else
// $XDG_STATE_HOME/sendense (default ~/.local/state/sendense).
func StateDir(dir string) (string, error) {
	if dir != "" {
		return filepath.Abs(dir)
	}
	if os.Geteuid() == 0 {
		return "/var/lib/sendense", nil
	}
	if x := os.Getenv("XDG_STATE_HOME"); x != "" {
		return filepath.Join(x, "sendense"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no [api] state_dir and no home directory: set [api] state_dir or --state-dir: %w", err)
	}
	return filepath.Join(home, ".local", "state", "sendense"), nil
}

// StorePath is the job store's file.
func (s *Server) StorePath() string { return s.store.path }

// Handler returns the API's HTTP handler (authentication included).
func (s *Server) Handler() http.Handler { return s.handler }

// save writes a job's current record to the store.
func (s *Server) save(j *job) {
	j.pmu.Lock()
	defer j.pmu.Unlock()
	j.mu.Lock()
	rec := j.record()
	j.mu.Unlock()
	if err := s.store.put(&rec); err != nil {
		s.log.Error("recording a job", "job", rec.ID, "err", err)
	}
}

// runBackup runs a backup job through orchestrator.Backup with the shared
// services and the job's own progress reporter.
func (s *Server) runBackup(ctx context.Context, j *job) (*orchestrator.BackupReport, error) {
	svc, err := s.jobServices(j)
	if err != nil {
		return nil, err
	}
	j.mu.Lock()
	opt := orchestrator.BackupOptions{
		Repo:                 j.Repo,
		Full:                 j.Type == TypeFull,
		Quiesce:              j.Quiesce,
		AllowCrashConsistent: j.AllowCrashConsistent,
		InitOnlyEmpty:        true,
	}
	vm := j.VM.Moref
	j.mu.Unlock()
	// A job recorded before a restart is held to today's configuration.
	if opt.Repo != s.cfg.Repository.Path {
		if aerr := s.authz.repository(s.cfg, opt.Repo, "repository"); aerr != nil {
			return nil, aerr
		}
	}
	rep, err := orchestrator.Backup(ctx, svc, vm, opt)
	if err == nil {
		s.applyRetention(ctx, svc, opt.Repo, vm)
		s.offsiteAfterBackup(ctx, j, rep) // [[offsite]] sync_after_backup
	}
	return rep, err
}

// jobServices are the shared services with the job's progress reporter.
func (s *Server) jobServices(j *job) (*orchestrator.Services, error) {
	base, err := s.vc.services()
	if err != nil {
		return nil, err
	}
	svc := *base
	svc.Reporter = jobReporter{s: s, j: j}
	// The job's id goes into its snapshot's owner marker; one bandwidth
	// limit holds for all running jobs.
	svc.JobID = j.ID
	if svc.Limiter == nil {
		svc.Limiter = s.limiter
	}
	svc.Tunnels = s.rev.tun.Tunnels // one SSH connection for the API and the jobs
	return &svc, nil
}

// runReplicate runs a replication job through the orchestrator, with the
// state file next to the configuration (the CLI's default).
func (s *Server) runReplicate(ctx context.Context, j *job) (*orchestrator.Report, error) {
	svc, err := s.jobServices(j)
	if err != nil {
		return nil, err
	}
	j.mu.Lock()
	opt := orchestrator.ReplicateOptions{
		Targets:              map[int32]string{},
		StateFile:            orchestrator.DefaultReplicationState(s.cfg),
		Full:                 j.Type == TypeFull,
		Quiesce:              j.Quiesce,
		AllowCrashConsistent: j.AllowCrashConsistent,
	}
	for key, uri := range j.Targets {
		if aerr := s.authz.target(s.cfg, uri, "target"); aerr != nil {
			j.mu.Unlock()
			return nil, aerr // a job recorded before a restart, no longer allowed
		}
		if key == "" {
			opt.Target = uri
			continue
		}
		k, _ := strconv.ParseInt(key, 10, 32) // checked when the job was made
		opt.Targets[int32(k)] = uri
	}
	vm := j.VM.Moref
	j.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(opt.StateFile), 0o700); err != nil {
		return nil, err
	}
	return orchestrator.Replicate(ctx, svc, vm, opt)
}

// Serve serves the API on ln until ctx is cancelled (SIGTERM/SIGINT in
// the CLI), then shuts down gracefully: it stops accepting requests and
// jobs, cancels the running jobs, waits until they have cleaned up (their
// snapshots removed, nothing committed) and records them canceled. Queued
// jobs stay queued for the next start. It returns nil after a shutdown
// requested through ctx. ln is wrapped in TLS when [api] tls_cert is set.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	defer s.store.close()
	if s.tlsCfg != nil {
		ln = tls.NewListener(ln, s.tlsCfg)
	}
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	var bgWG sync.WaitGroup // what writes to the store, waited for before it closes
	go s.vc.run(bg)
	bgWG.Add(2)
	go func() { defer bgWG.Done(); s.sched.loop(bg) }()
	go func() { defer bgWG.Done(); s.cleanupLoop(bg) }()

	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return bg },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	go s.serveReverse(bg, hs)
	s.log.Info("serving the API", "listen", ln.Addr().String(), "tls", s.tlsCfg != nil, "auth", s.token != nil,
		"state", s.store.path, "max_concurrent_backups", s.sched.max, "backup_window", s.window.String())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.log.Info("shutting down: canceling running jobs and waiting for their cleanup")
	shut := make(chan struct{})
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
		close(shut)
	}()
	s.sched.shutdown()
	<-shut
	stopBG()
	bgWG.Wait()
	s.vc.close()
	s.rev.tun.CloseTunnels()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serving the API: %w", serveErr)
	}
	s.log.Info("stopped")
	return nil
}

// ListenAndServe listens on [api] listen (see Listen) and serves until
// ctx is cancelled. ready, if not nil, is called with the bound address.
func (s *Server) ListenAndServe(ctx context.Context, ready func(net.Addr)) error {
	ln, err := s.Listen()
	if err != nil {
		s.store.close()
		return err
	}
	if ready != nil {
		ready(ln.Addr())
	}
	return s.Serve(ctx, ln)
}

// Close releases the store when Serve is never called.
func (s *Server) Close() error { return s.store.close() }
