package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/internal/vmselect"
	"github.com/sendense/capture/orchestrator"
)

func init() {
	rootCmd.AddCommand(newReplicateCommand())
}

// replicateOptions are the flags of `sendense replicate`.
type replicateOptions struct {
	vcenter              vcenterFlags
	vddk                 vddkFlags
	copy                 copyTuning
	tunnel               tunnelFlags
	target               string
	disks                []string
	state                string
	full                 bool
	allowLargerTarget    bool
	quiesce              bool
	allowCrashConsistent bool
	progress             bool
}

func newReplicateCommand() *cobra.Command {
	var o replicateOptions
	cmd := &cobra.Command{
		Use:   "replicate VM (--target URI | --disk KEY=URI...)",
		Short: "Replicate a VM's disks into persistent NBD targets, incrementally in place",
		Long: `Copy every disk of a VM's snapshot into a persistent NBD target (a
volume some cloud or storage exposes over NBD): in full the first time, then
incrementally in place: only the blocks CBT reports as changed since the
previous run are written (changed blocks that became zero are zeroed),
unchanged regions are left alone. No backing chain: the target is always the
latest state of the disk.

Targets are NBD URIs: nbd://HOST[:PORT][/EXPORT], nbd+unix:///[EXPORT]?socket=PATH,
or ssh://[USER@]HOST[:PORT]/SOCKET for an NBD server listening on a unix
socket of a remote machine, reached through the SSH tunnel ([tunnel]).
--target names the target of a single-disk VM; --disk KEY=URI maps each
disk by device key (see 'sendense vm info VM').

Each target's changeId is kept in a state file, by default
sendense-replication.json next to the configuration file (else
$XDG_STATE_HOME/sendense/replication.json), written atomically once the
target is flushed and the snapshot removed. A target that held another disk,
a CBT reset, a resized disk or a failed changed-blocks query mean a full
copy; the reason is printed.

With --verbose or --json, where the time went is reported as for backup
(see 'sendense backup --help', PHASE TIMINGS); a disk's phases start with
target_open for an ssh:// target, and have no image_create, qemu_nbd_start
or image_close.

EXAMPLES
  sendense replicate db01 --target nbd://dr-site:10809/db01
  sendense replicate /DC0/vm/app --disk 2000=nbd+unix:///?socket=/run/vol1.sock \
                                 --disk 2001=nbd+unix:///?socket=/run/vol2.sock
  sendense replicate db01 --target ssh://sendense@control/run/sendense/db01.sock

When a changed-blocks query fails (a CBT fault), that disk is copied in full
and the reason printed (--cbt-fault=fail fails instead). SIGINT or SIGTERM
stops the replication: the snapshot is removed and the state file is not
updated, so the next run copies again whatever this one had written.

EXIT STATUS
  0    every disk was replicated (also when an interrupt came after that)
  1    the replication failed (the targets' recorded changeIds did not advance)
  2    bad flags, arguments or configuration
  130  interrupted (SIGINT or SIGTERM): the state file was not updated`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			fs := cmd.Flags()
			o.vcenter.apply(fs, cfg)
			o.vddk.apply(fs, cfg)
			if err := o.copy.apply(fs, cfg); err != nil {
				return err
			}
			o.tunnel.apply(fs, cfg)
			if fs.Changed("quiesce") {
				cfg.Backup.Quiesce = o.quiesce
			}
			if err := cfg.Check(); err != nil {
				return usageErrorf("%v", err)
			}
			if _, err := orchestrator.ResolveVCenter(cfg); err != nil {
				return usageErrorf("%v", err)
			}
			opt, err := o.options(cfg)
			if err != nil {
				return err
			}
			return runReplicate(cmd.Context(), cfg, o, opt, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	o.vcenter.register(fs)
	o.vddk.register(fs)
	o.copy.register(fs)
	o.tunnel.register(fs)
	fs.StringVar(&o.target, "target", "", "NBD `URI` of the target of a single-disk VM")
	fs.StringArrayVar(&o.disks, "disk", nil, "`KEY=URI`: the target of the disk with device key KEY (repeatable)")
	fs.StringVar(&o.state, "state", "", "replication state `file` (default: sendense-replication.json next to the configuration file)")
	fs.BoolVar(&o.full, "full", false, "copy every disk in full, whatever CBT says")
	fs.BoolVar(&o.allowLargerTarget, "allow-larger-target", false, "accept a target larger than its disk (the bytes past the disk are left alone)")
	fs.BoolVar(&o.quiesce, "quiesce", false, "quiesce the guest through VMware Tools ([backup] quiesce)")
	fs.BoolVar(&o.allowCrashConsistent, "allow-crash-consistent", false, "when quiescing fails, take a crash-consistent snapshot instead of failing")
	fs.BoolVar(&o.progress, "progress", false, "with --json, also write status lines while copying")
	return cmd
}

// options checks the flags and builds the orchestrator's options.
func (o *replicateOptions) options(cfg *config.Config) (orchestrator.ReplicateOptions, error) {
	opt := orchestrator.ReplicateOptions{
		Target:               o.target,
		Targets:              map[int32]string{},
		StateFile:            o.state,
		Full:                 o.full,
		AllowLargerTarget:    o.allowLargerTarget,
		Quiesce:              cfg.Backup.Quiesce,
		AllowCrashConsistent: o.allowCrashConsistent,
	}
	if o.target == "" && len(o.disks) == 0 {
		return opt, usageErrorf("no target given: use --target URI (single-disk VM) or --disk KEY=URI for each disk")
	}
	if o.target != "" {
		if _, err := orchestrator.ParseTargetURI(o.target); err != nil {
			return opt, usageErrorf("--target: %v", err)
		}
	}
	for _, d := range o.disks {
		k, uri, ok := strings.Cut(d, "=")
		key, err := strconv.ParseInt(k, 10, 32)
		if !ok || err != nil || key < 0 {
			return opt, usageErrorf("--disk %q: want KEY=URI with KEY a device key such as 2000", d)
		}
		if _, err := orchestrator.ParseTargetURI(uri); err != nil {
			return opt, usageErrorf("--disk %s: %v", k, err)
		}
		if _, dup := opt.Targets[int32(key)]; dup {
			return opt, usageErrorf("--disk %d given twice", key)
		}
		opt.Targets[int32(key)] = uri
	}
	if opt.StateFile == "" {
		opt.StateFile = orchestrator.DefaultReplicationState(cfg)
	}
	if err := os.MkdirAll(filepath.Dir(opt.StateFile), 0o700); err != nil {
		return opt, fmt.Errorf("replication state directory: %w", err)
	}
	return opt, nil
}

func runReplicate(ctx context.Context, cfg *config.Config, o replicateOptions, opt orchestrator.ReplicateOptions, vm string, stdout, stderr io.Writer) error {
	pr := newJobProgress(gopts, o.progress, stdout, stderr)
	s, err := newServices(ctx, cfg, o.vddk.plugin, pr)
	if err != nil {
		if ctx.Err() != nil {
			return &codedError{exitInterrupted, fmt.Errorf("interrupted before connecting to vCenter: nothing recorded")}
		}
		return err
	}
	s.AcceptNewHostKey = o.tunnel.acceptNewHostKey
	vms, err := resolveVMs(ctx, s.Client, vmselect.Spec{Args: []string{vm}})
	if err != nil {
		s.CloseTunnels()
		s.Client.Close(context.WithoutCancel(ctx))
		return err
	}
	pr.startVM(vms[0].Name)
	report, err := orchestrator.Replicate(ctx, s, "moref="+vms[0].Moref, opt)
	if report == nil {
		pr.finish(vms[0].Name, nil, nil, err)
	} else {
		pr.finish(vms[0].Name, report, replicateSummary(report), err)
	}
	s.CloseTunnels()
	s.Client.Close(context.WithoutCancel(ctx))
	if ctx.Err() != nil {
		return interrupted("replication", []jobOutcome{{vms[0].Name, report, err}}, stderr)
	}
	return err
}

// replicateSummary is the text outcome of a replication: one line per
// disk and a total.
func replicateSummary(r *orchestrator.ReplicateReport) []string {
	var lines []string
	for _, d := range r.Disks {
		lines = append(lines, fmt.Sprintf("%s disk %d (%s) -> %s: %s, %s, %s zeroed, %s",
			r.VM, d.Key, d.Label, d.Target, d.Level, copiedOf(d.BytesCopied, 0, d.Capacity),
			units.FormatSize(d.BytesZeroed), timeAndRate(d.Seconds, d.MiBps)))
	}
	lines = append(lines, fmt.Sprintf("%s: replication (%s) done in %.1f s: %s read, %s; state in %s", r.VM, r.Level, r.Seconds,
		units.FormatSize(r.BytesRead), copiedOf(r.Copied, 0, r.Capacity), r.StateFile))
	return append(lines, phaseLines(r)...)
}
