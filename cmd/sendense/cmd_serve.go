package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/agent"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/version"
	"github.com/sendense/capture/orchestrator"
)

func init() {
	rootCmd.AddCommand(newServeCommand())
}

// serveOptions are the flags of `sendense serve`.
type serveOptions struct {
	vcenter        vcenterFlags
	vddk           vddkFlags
	copy           copyTuning
	listen         string
	repo           string
	stateDir       string
	tokenFile      string
	tlsCert        string
	tlsKey         string
	insecureNoAuth bool
	maxBackups     int
	window         string
}

func (o *serveOptions) AddFlags(fs *pflag.FlagSet) {
	o.vcenter.register(fs)
	o.vddk.register(fs)
	o.copy.register(fs)
	fs.StringVar(&o.listen, "listen", "", "`address` to serve the API on ([api] listen, default "+agent.DefaultListen+"); other than loopback only with TLS")
	fs.StringVar(&o.repo, "repo", "", "default repository `directory` of backup jobs ([repository] path) [$SENDENSE_REPOSITORY]")
	fs.StringVar(&o.stateDir, "state-dir", "", "`directory` of the job history ([api] state_dir; default /var/lib/sendense as root, else ~/.local/state/sendense)")
	fs.StringVar(&o.tokenFile, "token-file", "", "`file` holding the bearer token clients must send ([api] token_file; required)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate `file` to serve HTTPS ([api] tls_cert; needs --tls-key)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key `file` of --tls-cert ([api] tls_key)")
	fs.BoolVar(&o.insecureNoAuth, "insecure-no-auth", false, "serve without a token (loopback addresses without TLS only; any local user can then start and cancel backups)")
	fs.IntVar(&o.maxBackups, "max-concurrent-backups", 0, "backup `jobs` running at once ([performance] max_concurrent_backups, default 1)")
	fs.StringVar(&o.window, "backup-window", "", "`HH:MM-HH:MM` local time in which queued jobs start unless forced, e.g. 22:00-06:00 ([performance] backup_window; default always)")
}

// config builds the configuration from the file, the environment and the
// flags.
func (o *serveOptions) config(cmd *cobra.Command) (*config.Config, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, err
	}
	fs := cmd.Flags()
	o.vcenter.apply(fs, cfg)
	o.vddk.apply(fs, cfg)
	if err := o.copy.apply(fs, cfg); err != nil {
		return nil, err
	}
	setString(fs, "listen", &cfg.API.Listen, o.listen)
	setString(fs, "repo", &cfg.Repository.Path, o.repo)
	setString(fs, "state-dir", &cfg.API.StateDir, o.stateDir)
	setString(fs, "token-file", &cfg.API.TokenFile, o.tokenFile)
	setString(fs, "tls-cert", &cfg.API.TLSCert, o.tlsCert)
	setString(fs, "tls-key", &cfg.API.TLSKey, o.tlsKey)
	setString(fs, "backup-window", &cfg.Performance.BackupWindow, o.window)
	if fs.Changed("max-concurrent-backups") {
		cfg.Performance.MaxConcurrentBackups = o.maxBackups
	}
	if err := cfg.Check(); err != nil {
		return nil, usageErrorf("%v", err)
	}
	// Fail now on a vCenter configuration that can never work; an
	// unreachable vCenter is retried by the agent instead.
	if _, err := orchestrator.ResolveVCenter(cfg); err != nil {
		return nil, usageErrorf("%v", err)
	}
	return cfg, nil
}

func newServeCommand() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the capture agent's HTTP API (health, VM discovery, backup jobs)",
		Long: `Run the capture agent: an HTTP API with JSON in and out (docs/api.md).

  GET    /api/v1/health                      status, vCenter, CBT, tunnel, performance
  GET    /api/v1/vms                         every VM
  GET    /api/v1/vms/{vm_path}/specs         hardware, CBT state, snapshots, disks
  GET    /api/v1/vms/{vm_path}/disks         disk layout
  GET    /api/v1/vms/{vm_path}/cbt-status    CBT state and each disk's last changeId
  POST   /api/v1/backup/start                {"vm_path", "backup_type", "repository"} -> {"job_id"}
  GET    /api/v1/backup                      jobs, newest first
  GET    /api/v1/backup/{job_id}/progress    phase, bytes per disk, MiB/s, ETA
  DELETE /api/v1/backup/{job_id}             cancel (snapshot removed, nothing committed)
  GET    /metrics                            Prometheus metrics

vm_path is a URL-escaped inventory path (%2FDC0%2Fvm%2Fweb); a moref (vm-42)
or a unique name works too.

Backups run exactly as 'sendense backup' runs them, one vCenter session
shared by all. Jobs start in order, at most [performance]
max_concurrent_backups at a time, one per VM (a second start for a VM with
an active job is refused with 409), and only inside [performance]
backup_window unless the request says "force": true. The bandwidth limit
([copy] rate, --rate, or [performance] bandwidth_limit_mbps) is for all
running jobs together. After each succeeded backup, [retention] (if set)
prunes that VM's backups (docs/retention.md).

Every request needs 'Authorization: Bearer TOKEN', TOKEN being the content
of [api] token_file (--token-file), a file only the agent's user may read.
The API listens on 127.0.0.1:8081 by default, where the control plane
reaches it through the SSH tunnel's reverse forward; any other address
needs TLS (--tls-cert, --tls-key).

A request may name only the configured repositories ([repository] path,
[api] allowed_repositories) and replication targets ([api] allowed_targets),
ssh:// ones only on the [tunnel] host; anything else is refused (403)
before any file, directory or connection is made. See docs/api.md.

The job history is kept in [api] state_dir/agent.db. A job that was running
when the agent died is marked failed ("interrupted by an agent restart")
at the next start and its snapshot is removed; queued jobs are run.
SIGTERM or SIGINT stops the agent gracefully: it stops accepting requests,
cancels the running jobs, waits until their snapshots are removed, records
them canceled and exits 0.

EXAMPLES
  openssl rand -hex 32 > /etc/sendense/api-token && chmod 600 /etc/sendense/api-token
  sendense serve --config /etc/sendense/sendense.toml --token-file /etc/sendense/api-token
  sendense serve --listen 127.0.0.1:9090 --repo /srv/backups --backup-window 22:00-06:00
  curl -H "Authorization: Bearer $(cat /etc/sendense/api-token)" http://127.0.0.1:8081/api/v1/health

EXIT STATUS
  0  stopped by SIGTERM or SIGINT (running jobs canceled cleanly)
  1  the agent could not serve (address in use, state directory locked by
     another agent, job store unreadable)
  2  bad flags or configuration (no token file or one other users may
     read, TLS files, a non-loopback address without TLS, backup window,
     allow lists, vCenter settings)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := o.config(cmd)
			if err != nil {
				return err
			}
			return runServe(cmd.Context(), cfg, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// runServe runs the agent until ctx is cancelled (SIGTERM, SIGINT): a
// graceful shutdown returns nil.
func runServe(ctx context.Context, cfg *config.Config, o serveOptions, stdout, stderr io.Writer) error {
	log, err := newLogger(stderr, slog.LevelInfo)
	if err != nil {
		return err
	}
	slog.SetDefault(log) // the orchestrator's notices too
	srv, err := agent.New(agent.Options{
		Config: cfg,
		// The services `sendense backup` uses, built the same way.
		Connect: func(ctx context.Context) (*orchestrator.Services, error) {
			return newServices(ctx, cfg, o.vddk.plugin, nil)
		},
		InsecureNoAuth: o.insecureNoAuth,
		Version:        version.Version,
		Logger:         log,
	})
	if err != nil {
		var ce *agent.ConfigError
		if errors.As(err, &ce) {
			return usageErrorf("%v", err)
		}
		return err
	}
	if cfg.Repository.Path == "" {
		log.Info("no default repository ([repository] path, --repo): every backup request must give \"repository\", one of [api] allowed_repositories")
	}
	return srv.ListenAndServe(ctx, func(addr net.Addr) {
		scheme := "http"
		if cfg.API.TLSCert != "" {
			scheme = "https"
		}
		url := fmt.Sprintf("%s://%s", scheme, addr)
		if gopts.JSON {
			_ = printJSON(stdout, "status", map[string]string{"listen": addr.String(), "url": url, "state": srv.StorePath()})
			return
		}
		fmt.Fprintf(stdout, "sendense serve: listening on %s (job history %s)\n", url, srv.StorePath())
	})
}
