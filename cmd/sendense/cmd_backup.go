package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/orchestrator"
)

func init() {
	rootCmd.AddCommand(newBackupCommand())
}

// backupOptions are the flags of `sendense backup`.
type backupOptions struct {
	vcenter              vcenterFlags
	vddk                 vddkFlags
	copy                 copyTuning
	tunnel               tunnelFlags
	repo                 string
	full                 bool
	quiesce              bool
	allowCrashConsistent bool
	progress             bool
}

// copyTuning are the copy engine flags shared by backup and replicate.
type copyTuning struct {
	connections, requests int
	requestSize, rate     string
	cbtFault              string
}

func (f *copyTuning) register(fs *pflag.FlagSet) {
	fs.IntVar(&f.connections, "connections", 0, "NBD `connections` per disk when both sides allow multi-conn ([copy] connections; default: one per two CPUs, 1 to 4)")
	fs.IntVar(&f.requests, "requests", 0, "`requests` in flight per connection ([copy] requests, default 64)")
	fs.StringVar(&f.requestSize, "request-size", "", "largest request `size`, e.g. 256K ([copy] request_size)")
	fs.StringVar(&f.rate, "rate", "", "bandwidth limit in bytes per second, e.g. 100M ([copy] rate; default unlimited)")
	fs.StringVar(&f.cbtFault, "cbt-fault", "", "when the changed-blocks query of a disk fails: `full` copies that disk in full, fail fails the job ([cbt] fault, default full)")
}

func (f *copyTuning) apply(fs *pflag.FlagSet, c *config.Config) {
	if fs.Changed("connections") {
		c.Copy.Connections = f.connections
	}
	if fs.Changed("requests") {
		c.Copy.Requests = f.requests
	}
	setString(fs, "request-size", &c.Copy.RequestSize, f.requestSize)
	setString(fs, "rate", &c.Copy.Rate, f.rate)
	setString(fs, "cbt-fault", &c.CBT.Fault, f.cbtFault)
}

func (o *backupOptions) AddFlags(fs *pflag.FlagSet) {
	o.vcenter.register(fs)
	o.vddk.register(fs)
	o.copy.register(fs)
	o.tunnel.register(fs)
	fs.StringVar(&o.repo, "repo", "", "repository `directory`, or ssh://[user@]host[:port]/path on the control plane ([repository] path) [$SENDENSE_REPOSITORY]")
	fs.BoolVar(&o.full, "full", false, "full backup of every disk, whatever CBT says (default: incremental when a usable previous backup exists)")
	fs.BoolVar(&o.quiesce, "quiesce", false, "quiesce the guest through VMware Tools for an application-consistent snapshot ([backup] quiesce)")
	fs.BoolVar(&o.allowCrashConsistent, "allow-crash-consistent", false, "when quiescing fails, take a crash-consistent snapshot instead of failing")
	fs.BoolVar(&o.progress, "progress", false, "with --json, also write status lines while copying")
}

// services builds the shared services from the configuration and flags.
func (o *backupOptions) config(cmd *cobra.Command) (*config.Config, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, err
	}
	fs := cmd.Flags()
	o.vcenter.apply(fs, cfg)
	o.vddk.apply(fs, cfg)
	o.copy.apply(fs, cfg)
	o.tunnel.apply(fs, cfg)
	setString(fs, "repo", &cfg.Repository.Path, o.repo)
	if fs.Changed("quiesce") {
		cfg.Backup.Quiesce = o.quiesce
	}
	if err := cfg.Check(); err != nil {
		return nil, usageErrorf("%v", err)
	}
	if cfg.Repository.Path == "" {
		return nil, usageErrorf("no repository given: use --repo DIR, [repository] path or SENDENSE_REPOSITORY")
	}
	if orchestrator.IsRemoteRepository(cfg.Repository.Path) {
		if _, err := orchestrator.ParseRepositoryURL(cfg.Repository.Path); err != nil {
			return nil, usageErrorf("--repo: %v", err)
		}
	}
	return cfg, nil
}

func newBackupCommand() *cobra.Command {
	var o backupOptions
	cmd := &cobra.Command{
		Use:   "backup VM...",
		Short: "Back up VMs into a repository (full, then incremental with CBT)",
		Long: `Back up each VM into the repository: check (or enable) Changed Block
Tracking, take a snapshot named sendense-<backup id>, copy every disk into a
qcow2 image through nbdkit and the sendense plugin, write the backup's
manifest once every image is flushed, and remove the snapshot.

The first backup of a disk is full. Later ones are incremental: only the
blocks CBT reports as changed since the previous backup are copied, into a
qcow2 overlay whose backing file is that disk's previous image. A disk is
backed up in full again when CBT cannot vouch for the changes (CBT reset or
enabled again, disk resized or replaced, previous image missing, a failed
changed-blocks query); the reason is printed.

The snapshot is removed whatever happens (success, error, SIGINT, SIGTERM).
Its description records its owner (job, host, process); a snapshot left by
a job that died (SIGKILL, a crash) is removed by the next job, and only
such a one: a user's snapshot, even named sendense-*, or a running job's is
never touched. One job per VM per vCenter runs at a time on a host: a second
one fails at once ("VM is busy"); the locks are in [state] dir
($SENDENSE_STATE_DIR, default /var/lib/sendense). See
docs/snapshots-and-locks.md. A backup that fails leaves the previous restore
points as they were.

The repository may be on the control plane: --repo ssh://[user@]host[:port]/path
(the same format; qemu-img and qemu-nbd run there, the data goes through the
SSH tunnel, [tunnel] and --ssh-key, --known-hosts configure it). When the
connection drops during a copy, the backup reconnects with a bounded
exponential backoff and continues from what was already copied and
flushed; see docs/repository.md.

VM is a managed object id (vm-42), an inventory path (/DC/vm/folder/name)
or a unique name. Several VMs are backed up [backup] max_concurrent_vms at a
time; the disks of a VM [backup] max_concurrent_disks at a time.

When a changed-blocks query fails (a CBT fault), that disk is backed up in
full and the reason printed ([cbt] fault = "full", --cbt-fault=full); with
--cbt-fault=fail the backup fails instead and the next one of that disk is
full.

SIGINT or SIGTERM stops the backups: each removes its snapshot and keeps
nothing ("backup of VM interrupted: snapshot S removed, nothing kept"),
unless it had already committed its restore point ("backup ID of VM was
committed before the interrupt"). Writing to a closed stdout or stderr
(sendense backup --json VM | head) never stops a backup: the output is
discarded from then on.
PHASE TIMINGS
  Where the time went, in seconds: with --verbose one "phases:" line for the
  VM and one per disk after the summary; with --json the summary's "phases"
  (the VM) and each disk's "phases", lists of {"phase", "seconds"} in order,
  and "hash_cpu_seconds" (time spent hashing chunks and the disk digest,
  mostly while copying). VM: vcenter_login, find_vm, open_repository,
  cbt_check, lock_repository, stale_snapshots, snapshot_create, plan (disks,
  full or incremental, changed areas), disks (all disks, in parallel),
  snapshot_remove, manifest, state. Disk: image_create, qemu_nbd_start,
  plugin_start (nbdkit and the plugin opening the disk), connect, copy (until
  the last request completed), flush, hash_wait (the disk digest finishing
  after the flush), read_back (resumed copies: the image read back for its
  digest), plugin_stop, image_close.

EXAMPLES
  sendense backup --repo /srv/backups /DC0/vm/db01
  sendense backup --config /etc/sendense/sendense.toml --quiesce db01 web01
  sendense backup --repo /srv/backups --full --json db01 | jq .
  sendense backup --repo ssh://sendense@cp.example.com/srv/backups \
      --ssh-key /etc/sendense/id_ed25519 db01

EXIT STATUS
  0    every VM was backed up (also when an interrupt came after every
       backup had committed)
  1    a backup failed (the others may have succeeded), or an interrupt
       came after some backups had committed and before the others did
  2    bad flags, arguments or configuration
  130  interrupted (SIGINT or SIGTERM) and nothing of the run was kept`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := o.config(cmd)
			if err != nil {
				return err
			}
			return runBackup(cmd.Context(), cfg, o, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// pluginPath finds nbdkit-sendense-plugin.so: --plugin, $SENDENSE_PLUGIN,
// next to the sendense executable (the build tree), else the installed
// plugin by name.
func pluginPath(flag string) string {
	if flag != "" {
		return flag
	}
	if p := os.Getenv("SENDENSE_PLUGIN"); p != "" {
		return p
	}
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			p := filepath.Join(filepath.Dir(exe), "nbdkit-sendense-plugin.so")
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	return "sendense"
}

// newServices logs in to vCenter and gathers what jobs share.
func newServices(ctx context.Context, cfg *config.Config, plugin string, rep orchestrator.Reporter) (*orchestrator.Services, error) {
	if _, err := orchestrator.StateDir(cfg); err != nil { // the VM locks: fail before any job
		return nil, &codedError{exitUsage, err}
	}
	start := time.Now()
	client, cred, err := orchestrator.Connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &orchestrator.Services{
		Config:   cfg,
		Client:   client,
		Cred:     cred,
		Plugin:   pluginPath(plugin),
		Reporter: rep,
		Verbose:  gopts.Verbose,
		Tunnels:  orchestrator.NewTunnelPool(),
	}
	s.LoginSeconds = time.Since(start).Seconds()
	return s, nil
}

func runBackup(ctx context.Context, cfg *config.Config, o backupOptions, vms []string, stdout, stderr io.Writer) error {
	pr := newJobProgress(gopts, o.progress, stdout, stderr)
	s, err := newServices(ctx, cfg, o.vddk.plugin, pr)
	if err != nil {
		if ctx.Err() != nil {
			return &codedError{exitInterrupted, fmt.Errorf("interrupted before connecting to vCenter: nothing kept")}
		}
		return err
	}
	// Closed before the outcome is decided: an interrupt while logging
	// out comes after the backups, which it does not undo.
	closeServices := sync.OnceFunc(func() {
		s.CloseTunnels()
		s.Client.Close(context.WithoutCancel(ctx))
	})
	defer closeServices()
	s.AcceptNewHostKey = o.tunnel.acceptNewHostKey
	opt := orchestrator.BackupOptions{
		Repo:                 cfg.Repository.Path,
		Full:                 o.full,
		Quiesce:              cfg.Backup.Quiesce,
		AllowCrashConsistent: o.allowCrashConsistent,
	}
	sem := make(chan struct{}, max(1, cfg.Backup.MaxConcurrentVMs))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []error
	outcomes := make([]jobOutcome, len(vms))
	for i, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			report, err := orchestrator.Backup(ctx, s, vm, opt)
			outcomes[i] = jobOutcome{vm, report, err}
			if report == nil {
				pr.finish(nil, nil, err)
			} else {
				pr.finish(report, backupSummary(report), err)
			}
			if err != nil {
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	closeServices()
	switch {
	case ctx.Err() != nil:
		return interrupted("backup", outcomes, stderr)
	case len(failed) == 1:
		return failed[0]
	case len(failed) > 1:
		return fmt.Errorf("%d of %d backups failed; first: %w", len(failed), len(vms), failed[0])
	}
	return nil
}

// backupSummary is the text outcome of a backup: one line per disk (what
// is printed when not on a terminal) and a total.
func backupSummary(r *orchestrator.BackupReport) []string {
	var lines []string
	for _, d := range r.Disks {
		lines = append(lines, fmt.Sprintf("%s %s disk %d (%s): %s, %s of %s copied (%.1f%% less), %.1fs, %.0f MiB/s, image %s",
			r.VM, r.BackupID, d.Key, d.Label, d.Level, units.FormatSize(d.BytesCopied), units.FormatSize(d.Capacity),
			d.DataReduction*100, d.Seconds, d.MiBps, d.Image))
	}
	lines = append(lines, fmt.Sprintf("%s: backup %s (%s) done in %.1fs: %s read, %s copied of %s", r.VM, r.BackupID, r.Level, r.Seconds,
		units.FormatSize(r.BytesRead), units.FormatSize(r.Copied), units.FormatSize(r.Capacity)))
	return append(lines, phaseLines(r)...)
}
