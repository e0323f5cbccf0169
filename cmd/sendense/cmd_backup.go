package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/internal/vmselect"
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
	all                  bool
	folders              []string
	excludes             []string
	excludeDisks         []int32
	parallel             int
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
	fs.StringVar(&f.requestSize, "request-size", "", "largest request `size`, a power of two from 512 to 32M, e.g. 256K ([copy] request_size)")
	fs.StringVar(&f.rate, "rate", "", "bandwidth limit in `bytes` per second, e.g. 100M, for the whole command: every disk of every VM together "+
		"([copy] rate, else [performance] bandwidth_limit_mbps; default unlimited)")
	fs.StringVar(&f.cbtFault, "cbt-fault", "", "when the changed-blocks query of a disk fails: `full` copies that disk in full, fail fails the job ([cbt] fault, default full)")
}

// apply sets the flags given over the configuration, then checks the
// copy settings, naming the flag (or key) to fix: before anything is
// done on vCenter.
func (f *copyTuning) apply(fs *pflag.FlagSet, c *config.Config) error {
	if fs.Changed("connections") {
		c.Copy.Connections = f.connections
	}
	if fs.Changed("requests") {
		c.Copy.Requests = f.requests
	}
	if fs.Changed("request-size") {
		if _, err := units.ParseSize(f.requestSize); err != nil {
			return usageErrorf("--request-size: %v", err)
		}
		c.Copy.RequestSize = f.requestSize
	}
	if fs.Changed("rate") {
		if _, err := units.ParseSize(f.rate); err != nil {
			return usageErrorf("--rate: %v (bytes per second, e.g. 100M; 0: no limit)", err)
		}
		c.Copy.Rate = f.rate
	}
	setString(fs, "cbt-fault", &c.CBT.Fault, f.cbtFault)
	reqSize, err := c.Copy.RequestSizeBytes()
	if err != nil {
		return usageErrorf("[copy] request_size: %v", err)
	}
	o := copier.Options{Connections: c.Copy.Connections, Requests: c.Copy.Requests, RequestSize: reqSize}
	if err := o.Check(); err != nil {
		return usageErrorf("%v (or [copy] in the configuration)", err)
	}
	return nil
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
	fs.BoolVar(&o.progress, "progress", false, "with --json, also write status and progress lines while copying")
	fs.BoolVar(&o.all, "all", false, "back up every VM of vCenter (minus --exclude)")
	fs.StringArrayVar(&o.folders, "folder", nil, "back up the VMs below inventory folder `PATH` (/DC0/vm/prod, or prod below any datacenter's VM folder; repeatable)")
	fs.StringArrayVar(&o.excludes, "exclude", nil, "leave out the VMs matching `PATTERN`: a name, inventory path, moref or glob such as 'test-*' (repeatable)")
	fs.Int32SliceVar(&o.excludeDisks, "exclude-disk", nil, "do not back up the disk with device `KEY` (2001) of any VM (repeatable; see also [[vm]] exclude_disks)")
	fs.IntVar(&o.parallel, "parallel", 0, "back up `N` VMs at once ([performance] max_concurrent_backups, default 1)")
}

// config builds the configuration from the file, the environment and the
// flags, and checks what can be checked before connecting.
func (o *backupOptions) config(cmd *cobra.Command) (*config.Config, error) {
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
	o.tunnel.apply(fs, cfg)
	setString(fs, "repo", &cfg.Repository.Path, o.repo)
	if fs.Changed("quiesce") {
		cfg.Backup.Quiesce = o.quiesce
	}
	if err := cfg.Check(); err != nil {
		return nil, usageErrorf("%v", err)
	}
	if fs.Changed("parallel") && o.parallel < 1 {
		return nil, usageErrorf("--parallel must be at least 1, not %d", o.parallel)
	}
	if cfg.Repository.Path == "" {
		return nil, usageErrorf("no repository given: use --repo DIR, [repository] path or SENDENSE_REPOSITORY")
	}
	if orchestrator.IsRemoteRepository(cfg.Repository.Path) {
		if _, err := orchestrator.ParseRepositoryURL(cfg.Repository.Path); err != nil {
			return nil, usageErrorf("--repo: %v", err)
		}
	}
	if _, err := orchestrator.ResolveVCenter(cfg); err != nil {
		return nil, usageErrorf("%v", err)
	}
	return cfg, nil
}

// selection is the VMs the arguments and flags select.
func (o *backupOptions) selection(args []string) vmselect.Spec {
	return vmselect.Spec{Args: args, All: o.all, Folders: o.folders, Exclude: o.excludes}
}

func newBackupCommand() *cobra.Command {
	var o backupOptions
	cmd := &cobra.Command{
		Use:   "backup [flags] VM... | --folder PATH | --all",
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

SELECTING VMS
  VM is a managed object id (vm-42), an inventory path (/DC/vm/folder/name),
  a unique name, or a glob pattern of names ('web*') or paths
  ('/DC0/vm/prod/*'; * does not cross /). --folder PATH adds the VMs below
  an inventory folder, --all every VM; --exclude PATTERN leaves VMs out. A
  name that matches no VM is an error with the closest names.
  --exclude-disk KEY (and [[vm]] exclude_disks in the configuration) leaves
  disks out: their restore points do not have them.

  --parallel N VMs are backed up at once (default [performance]
  max_concurrent_backups), the disks of a VM [backup] max_concurrent_disks at
  a time; --rate limits all of them together. With several VMs a summary
  ends the output: one line per VM with its status.

PROGRESS
  On a terminal: a line per disk and a total line (percent, MiB/s, ETA),
  redrawn in place, with notices and logs printed above it; nothing of it
  otherwise. With --json --progress: "status" lines per disk and "progress"
  lines with the totals, the fields of the agent API's progress.

CBT FAULTS
  When a changed-blocks query fails (a CBT fault), that disk is backed up in
  full and the reason printed ([cbt] fault = "full", --cbt-fault=full); with
  --cbt-fault=fail the backup fails instead and the next one of that disk is
  full.

SIGNALS
  SIGINT or SIGTERM stops the backups: each removes its snapshot and keeps
  nothing ("backup of VM interrupted: snapshot S removed, nothing kept"),
  unless it had already committed its restore point ("backup ID of VM was
  committed before the interrupt"); VMs not started yet are not started.
  Writing to a closed stdout or stderr (sendense backup --json VM | head)
  never stops a backup: the output is discarded from then on.

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
  sendense backup --folder /DC0/vm/prod --exclude 'test-*' --parallel 2
  sendense backup --all --exclude-disk 2001 --rate 200M
  sendense backup --repo /srv/backups --full --json db01 | jq .
  sendense backup --repo ssh://sendense@cp.example.com/srv/backups \
      --ssh-key /etc/sendense/id_ed25519 db01

EXIT STATUS
  0    every VM was backed up (also when an interrupt came after every
       backup had committed)
  1    a backup failed (the others may have succeeded: see the summary), or
       an interrupt came after some backups had committed and before the
       others did
  2    bad flags, arguments or configuration (nothing was started)
  130  interrupted (SIGINT or SIGTERM) and nothing of the run was kept`,
		Args: func(cmd *cobra.Command, args []string) error {
			if o.selection(args).Empty() {
				return usageErrorf("no VM given: name the VMs to back up (a name, inventory path, moref or glob pattern such as 'web*'), " +
					"or use --folder PATH or --all; 'sendense vms' lists the VMs")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := o.config(cmd)
			if err != nil {
				return err
			}
			if err := o.selection(args).Check(); err != nil {
				return usageErrorf("%v", err)
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
		Config:        cfg,
		Client:        client,
		Cred:          cred,
		Plugin:        pluginPath(plugin),
		Reporter:      rep,
		Verbose:       gopts.Verbose,
		Tunnels:       orchestrator.NewTunnelPool(),
		Limiter:       orchestrator.NewLimiter(cfg), // --rate: for all disks of all VMs together
		OnTunnelRetry: tunnelRetryStatus(),
	}
	s.LoginSeconds = time.Since(start).Seconds()
	return s, nil
}

// vmOutcome is one VM's line of the final summary.
type vmOutcome struct {
	VM          string  `json:"vm"`
	Moref       string  `json:"moref"`
	Status      string  `json:"status"` // succeeded, failed or canceled
	BackupID    string  `json:"backup_id,omitempty"`
	Level       string  `json:"level,omitempty"`
	BytesCopied uint64  `json:"bytes_copied"`
	Seconds     float64 `json:"seconds"`
	Error       string  `json:"error,omitempty"`
}

func runBackup(ctx context.Context, cfg *config.Config, o backupOptions, args []string, stdout, stderr io.Writer) error {
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
	vms, err := resolveVMs(ctx, s.Client, o.selection(args))
	if err != nil {
		return err
	}
	opt := orchestrator.BackupOptions{
		Repo:                 cfg.Repository.Path,
		Full:                 o.full,
		Quiesce:              cfg.Backup.Quiesce,
		AllowCrashConsistent: o.allowCrashConsistent,
		ExcludeDisks:         o.excludeDisks,
	}
	parallel := cfg.ParallelBackups()
	if o.parallel > 0 {
		parallel = o.parallel
	}
	sem := make(chan struct{}, max(1, parallel))
	outcomes := make([]vmOutcome, len(vms))
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	jobs := make([]jobOutcome, len(vms)) // what an interrupt left of each VM
	for i, vm := range vms {             // in the order selected
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil { // interrupted: the VMs not started are not
			outcomes[i], errs[i] = vmOutcome{VM: vm.Name, Moref: vm.Moref, Status: "canceled", Error: ctx.Err().Error()}, ctx.Err()
			jobs[i] = jobOutcome{vm.Name, nil, ctx.Err()}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pr.startVM(vm.Name)
			report, err := orchestrator.Backup(ctx, s, "moref="+vm.Moref, opt)
			jobs[i] = jobOutcome{vm.Name, report, err}
			out := vmOutcome{VM: vm.Name, Moref: vm.Moref, Status: "succeeded"}
			if report != nil {
				out.BackupID, out.Level, out.BytesCopied, out.Seconds = report.BackupID, report.Level, report.Copied, orchestrator.Round1(report.Seconds)
				pr.finish(vm.Name, report, backupSummary(report), err)
			} else {
				pr.finish(vm.Name, nil, nil, err)
			}
			if err != nil {
				out.Status, out.Error, out.Level = "failed", err.Error(), ""
				if ctx.Err() != nil {
					out.Status = "canceled"
				}
			}
			outcomes[i], errs[i] = out, err
		}()
	}
	wg.Wait()
	closeServices()
	err = backupResult(outcomes, errs, stdout)
	if ctx.Err() != nil {
		return interrupted("backup", jobs, stderr)
	}
	return err
}

// resolveVMs finds the selected VMs: each plain argument by itself (one
// vCenter lookup), patterns, folders and --all in the inventory. A name
// that is not found gets suggestions from the inventory.
func resolveVMs(ctx context.Context, c *cbt.Client, spec vmselect.Spec) ([]cbt.VM, error) {
	if spec.NeedsInventory() {
		inv, err := c.ListVMs(ctx)
		if err != nil {
			return nil, err
		}
		return vmselect.Select(inv, spec)
	}
	var vms []cbt.VM
	for _, arg := range spec.Args {
		vm, err := c.FindVM(ctx, arg)
		if errors.Is(err, cbt.ErrNotFound) {
			if inv, lerr := c.ListVMs(ctx); lerr == nil {
				return nil, vmselect.NotFound(inv, arg)
			}
		}
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(vms, func(v cbt.VM) bool { return v.Moref == vm.Moref }) {
			vms = append(vms, *vm)
		}
	}
	return vms, nil
}

// backupResult ends a backup run: with several VMs (or --json) the
// summary of every VM, and the error to exit with.
func backupResult(outcomes []vmOutcome, errs []error, stdout io.Writer) error {
	var failed []string
	var first error
	for i, o := range outcomes {
		if errs[i] != nil {
			failed = append(failed, o.VM)
			if first == nil {
				first = errs[i]
			}
		}
	}
	switch {
	case gopts.JSON:
		printJSON(stdout, "result", struct {
			VMs       []vmOutcome `json:"vms"`
			Succeeded int         `json:"succeeded"`
			Failed    int         `json:"failed"`
		}{outcomes, len(outcomes) - len(failed), len(failed)})
	case len(outcomes) > 1 && !gopts.Quiet:
		var b strings.Builder
		tw := newTable(&b)
		fmt.Fprintln(tw, "VM\tSTATUS\tBACKUP\tLEVEL\tCOPIED\tTIME")
		for _, o := range outcomes {
			if o.Status != "succeeded" {
				fmt.Fprintf(tw, "%s\t%s\t\t\t\t%s\n", o.VM, strings.ToUpper(o.Status), firstLine(o.Error))
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", o.VM, "ok", o.BackupID, o.Level, units.FormatSize(o.BytesCopied), units.FormatDuration(o.Seconds))
		}
		tw.Flush()
		fmt.Fprintf(&b, "%d %s: %d backed up, %d failed\n", len(outcomes), plural(len(outcomes), "VM", "VMs"), len(outcomes)-len(failed), len(failed))
		ui.Print(stdout, []byte(b.String()))
	}
	switch {
	case len(failed) == 1 && len(outcomes) == 1:
		return first
	case len(failed) > 0:
		return fmt.Errorf("%d of %d backups failed (%s); the first: %w", len(failed), len(outcomes), strings.Join(failed, ", "), first)
	}
	return nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// backupSummary is the text outcome of a backup: one line per disk and a
// total.
func backupSummary(r *orchestrator.BackupReport) []string {
	var lines []string
	for _, d := range r.Disks {
		lines = append(lines, fmt.Sprintf("%s %s disk %d (%s): %s, %s, %s, image %s", r.VM, r.BackupID, d.Key, d.Label, d.Level,
			copiedOf(d.BytesCopied, d.BytesZeroed, d.Capacity), timeAndRate(d.Seconds, d.MiBps), d.Image))
	}
	lines = append(lines, fmt.Sprintf("%s: backup %s (%s) done in %.1f s: %s read, %s", r.VM, r.BackupID, r.Level, r.Seconds,
		units.FormatSize(r.BytesRead), copiedOf(r.Copied, 0, r.Capacity)))
	return append(lines, phaseLines(r)...)
}

// copiedOf says how much of a disk was copied (and zeroed): "4.0 MiB of
// 16.0 MiB copied (25.0%)", "0 B of 48.0 MiB copied, 2.0 MiB zeroed",
// "nothing to copy (0 B of 64.0 MiB)".
func copiedOf(copied, zeroed, capacity uint64) string {
	var s string
	switch {
	case copied == 0 && zeroed == 0:
		return fmt.Sprintf("nothing to copy (0 B of %s)", units.FormatSize(capacity))
	case copied == 0:
		s = fmt.Sprintf("0 B of %s copied", units.FormatSize(capacity))
	default:
		s = fmt.Sprintf("%s of %s copied (%.1f%%)", units.FormatSize(copied), units.FormatSize(capacity),
			float64(copied)*100/float64(max(capacity, 1)))
	}
	if zeroed > 0 {
		s += ", " + units.FormatSize(zeroed) + " zeroed"
	}
	return s
}

// timeAndRate is "2.3 s at 2.0 MiB/s", or just "0.1 s" when nothing was
// read.
func timeAndRate(seconds, mibps float64) string {
	if mibps <= 0 {
		return fmt.Sprintf("%.1f s", seconds)
	}
	return fmt.Sprintf("%.1f s at %s", seconds, units.FormatRate(mibps))
}
