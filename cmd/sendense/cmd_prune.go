package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/retention"
	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/orchestrator"
)

func init() {
	rootCmd.AddCommand(newPruneCommand())
}

// pruneOptions are the flags of "sendense prune".
type pruneOptions struct {
	repo repoDirFlag
	keepFlags
	DryRun bool
}

func (o *pruneOptions) AddFlags(fs *pflag.FlagSet) {
	o.repo.register(fs)
	o.keepFlags.register(fs, "backups", "backup")
	fs.BoolVar(&o.DryRun, "dry-run", false, "only say what would be removed and merged, and why each backup is kept")
}

// keepFlags are the retention flags of prune and offsite prune: --keep N
// or a policy of --keep-* flags (restic's forget rules).
type keepFlags struct {
	Keep   int
	Policy retention.Policy // --keep-last, --keep-daily…

	policySet bool // a --keep-* flag was given (or [retention] applies)
}

// keepPolicyFlags are the --keep-* flags.
var keepPolicyFlags = []string{"keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly", "keep-within"}

// register adds the flags; what is kept is named points ("backups") and
// point ("backup").
func (o *keepFlags) register(fs *pflag.FlagSet, points, point string) {
	fs.IntVar(&o.Keep, "keep", 0, "keep the newest `N` "+points+" of each VM (at least 1)")
	fs.IntVar(&o.Policy.Last, "keep-last", 0, "keep the `N` newest "+points+" (-1: all)")
	fs.IntVar(&o.Policy.Hourly, "keep-hourly", 0, "keep the newest "+point+" of each of the `N` newest hours that have one (-1: every hour)")
	fs.IntVar(&o.Policy.Daily, "keep-daily", 0, "keep the newest "+point+" of each of the `N` newest days that have one (-1: every day)")
	fs.IntVar(&o.Policy.Weekly, "keep-weekly", 0, "keep the newest "+point+" of each of the `N` newest ISO weeks that have one (-1: every week)")
	fs.IntVar(&o.Policy.Monthly, "keep-monthly", 0, "keep the newest "+point+" of each of the `N` newest months that have one (-1: every month)")
	fs.IntVar(&o.Policy.Yearly, "keep-yearly", 0, "keep the newest "+point+" of each of the `N` newest years that have one (-1: every year)")
	fs.Var(&o.Policy.Within, "keep-within", "keep every "+point+" less than `DURATION` (y, m, d, h: 30d, 1y6m, 12h) older than the newest")
}

// given notes which flags were given; it says whether any was.
func (o *keepFlags) given(fs *pflag.FlagSet) bool {
	o.policySet = false
	for _, f := range keepPolicyFlags {
		o.policySet = o.policySet || fs.Changed(f)
	}
	return o.policySet || fs.Changed("keep")
}

// finalize takes [retention] from the configuration when no --keep*
// flag is given.
func (o *pruneOptions) finalize(cmd *cobra.Command) error {
	if o.given(cmd.Flags()) {
		return nil
	}
	cfg := o.repo.cfg
	if cfg == nil {
		var err error
		if cfg, err = loadConfig(cmd); err != nil {
			return err
		}
	}
	if !cfg.Retention.Policy().Empty() {
		o.Policy, o.policySet = cfg.Retention.Policy(), true
	}
	return nil
}

// Check validates the options.
func (o *keepFlags) Check() error {
	switch {
	case o.policySet && o.Keep != 0:
		return usageErrorf("--keep N and the --keep-* flags do not go together: --keep N is --keep-last N")
	case o.policySet:
		if err := o.Policy.Check(); err != nil {
			return usageErrorf("%v", err)
		}
		if o.Policy.Empty() {
			return usageErrorf("the --keep-* flags given keep nothing: give a count (or -1) or a duration")
		}
	case o.Keep < 1:
		return usageErrorf("what to keep is required: --keep N (the newest N of each VM, N at least 1, not %d), "+
			"the --keep-last/hourly/daily/weekly/monthly/yearly/within flags, or [retention] in the configuration", o.Keep)
	}
	return nil
}

// printPolicy says, in text output, which policy applies.
func (o *keepFlags) printPolicy(w io.Writer) {
	if o.policySet && !gopts.JSON && !gopts.Quiet {
		zone, off := time.Now().Zone()
		fmt.Fprintf(w, "policy: %s (calendar periods in local time, %s, UTC%+03d:%02d)\n", o.Policy, zone, off/3600, abs(off/60%60))
	}
}

const pruneLong = `Remove old backups: keep the backups (restore points) of each VM, or of VM
(name, moref, instance UUID or directory), that a retention policy keeps,
and remove the others.

The policy: --keep N keeps the newest N. The --keep-* flags follow
restic's forget: --keep-last N the N newest; --keep-hourly, --keep-daily,
--keep-weekly, --keep-monthly and --keep-yearly N the newest backup of each
of the N newest hours, days, ISO weeks, months and years that have one
(when there are fewer, the oldest backup is kept as well; -1 is every
period); --keep-within DURATION every backup less than DURATION older than
the newest. A backup is kept when any rule keeps it; --dry-run prints the
rules that keep each. Days, weeks… are calendar periods in the local time
zone (TZ=UTC sendense prune … counts in UTC). Without any of these flags,
[retention] of the configuration is the policy. The newest backup of a VM
is always kept. See docs/retention.md.

Before it changes anything, prune checks every backup of the VM (each
image of each chain, through the manifests): a VM with a corrupt manifest,
a missing or damaged image or a broken chain is left as it is, with an
error naming the backup and the file. It never removes the last backup of
a VM.

When a kept incremental backs onto a removed backup, its chain is written
anew as one standalone image (qemu-img convert where the repository is,
every file pinned), checked byte for byte against the manifests, and its
manifest rewritten as a full; only then are the files switched and the
removed backups deleted. Images are never changed in place.

A prune is safe against crashes, signals and failures: it keeps a journal
in the VM's directory; before its point of no return an interruption or a
failure rolls back (every backup restores as before), after it the prune
is finished by the next prune or backup (or any command opening the
repository). Every backup that must be restorable is, at every moment. It
refuses to run while a backup of the same VM runs, and waits for restores
and verifies of that VM. Leftovers (images of backups that never finished,
temporary files) are removed from every VM directory, retired VMs'
included. See docs/restore-verify-prune.md.

EXAMPLES
  Keep the last 7 backups of every VM:
    sendense prune --repo /backups --keep 7

  Keep 7 daily, 4 weekly, 12 monthly and all yearly backups, and everything
  of the last two days; first see what that does:
    sendense prune --repo /backups --keep-daily 7 --keep-weekly 4 \
        --keep-monthly 12 --keep-yearly -1 --keep-within 2d --dry-run

  See what keeping 2 backups of web01 would do:
    sendense prune --repo /backups --keep 2 --dry-run web01

  Prune a repository on the control plane (merges run there):
    sendense prune --repo ssh://sendense@cp.example.com/srv/backups --keep 7

EXIT STATUS
  0    done (or nothing to do)
  1    a VM could not be pruned (locked by a backup, a corrupt manifest, a
       damaged image, a broken chain, qemu-img failed, no space left, a
       read-only repository); the others were pruned
  2    bad flags or arguments
  130  interrupted by SIGINT or SIGTERM (the next prune finishes the work)`

func newPruneCommand() *cobra.Command {
	var opts pruneOptions
	cmd := &cobra.Command{
		Use:   "prune [flags] --keep N | --keep-daily N... [VM]",
		Short: "Remove old backups by a retention policy (newest N, or daily/weekly/monthly…)",
		Long:  pruneLong,
		Args:  cobra.MaximumNArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.repo.resolve(cmd); err != nil {
				return err
			}
			if err := opts.finalize(cmd); err != nil {
				return err
			}
			return opts.Check()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPrune(cmd.Context(), opts, gopts, cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	opts.AddFlags(cmd.Flags())
	return cmd
}

// runPrune prunes args[0] (or every VM).
func runPrune(ctx context.Context, opts pruneOptions, gopts globalOptions, stdout, stderr io.Writer, args []string) error {
	if err := opts.Check(); err != nil {
		return err
	}
	vm := ""
	if len(args) > 0 {
		vm = args[0]
	}
	r, closeRepo, err := opts.repo.open(ctx)
	if err != nil {
		return err
	}
	defer closeRepo()
	var freed int64
	var dropped, merged int
	keep, sel := opts.Keep, (func([]repo.PrunePoint) map[string][]string)(nil)
	if opts.policySet {
		keep, sel = 0, orchestrator.RetentionSelect(opts.Policy)
	}
	opts.printPolicy(stdout)
	reports, err := r.Prune(ctx, repo.PruneOptions{
		VM: vm, Keep: keep, Select: sel, DryRun: opts.DryRun,
		OnVM: func(rep repo.PruneReport) {
			freed += rep.FreedBytes
			dropped += len(rep.Dropped)
			merged += len(rep.Merged)
			switch {
			case gopts.JSON:
				printJSON(stdout, "prune", rep)
			case !gopts.Quiet:
				writePruneReport(stdout, rep)
			}
		},
	})
	if gopts.JSON {
		printJSON(stdout, "summary", struct {
			VMs        int   `json:"vms"`
			Dropped    int   `json:"dropped"`
			Merged     int   `json:"merged"`
			FreedBytes int64 `json:"freed_bytes"`
			DryRun     bool  `json:"dry_run"`
		}{len(reports), dropped, merged, freed, opts.DryRun})
	}
	return err
}

// writePruneReport is the text form of one VM's prune: with a retention
// policy, every kept backup with the rules that keep it.
func writePruneReport(w io.Writer, rep repo.PruneReport) {
	left := "removed"
	if rep.DryRun {
		left = "would remove"
	}
	defer func() {
		if n := len(rep.Leftovers); n > 0 {
			fmt.Fprintf(w, "  %s %d leftover(s): %s\n", left, n, strings.Join(rep.Leftovers, ", "))
		}
	}()
	if len(rep.Dropped) == 0 {
		fmt.Fprintf(w, "%s: %d %s, nothing to remove\n", rep.VM, len(rep.Kept), plural(len(rep.Kept), "backup", "backups"))
		writeReasons(w, rep)
		return
	}
	verb, kept, freed := "removed", "kept", "freed"
	if rep.DryRun {
		verb, kept, freed = "would remove", "would keep", "would free about"
	}
	fmt.Fprintf(w, "%s: %s %d %s (%s), %s %d (%s)\n", rep.VM, verb, len(rep.Dropped), plural(len(rep.Dropped), "backup", "backups"),
		strings.Join(rep.Dropped, ", "), kept, len(rep.Kept), strings.Join(rep.Kept, ", "))
	writeReasons(w, rep)
	for _, m := range rep.Merged {
		what := "merged"
		if rep.DryRun {
			what = "would merge"
		}
		fmt.Fprintf(w, "  %s disk %d into backup %s (now full): %s\n", what, m.Disk, m.Backup, strings.Join(m.Images, " + "))
	}
	fmt.Fprintf(w, "  %s %s\n", freed, units.FormatSize(uint64(max(rep.FreedBytes, 0))))
}

// writeReasons lists, with --dry-run, the kept backups with the rules
// that keep them.
func writeReasons(w io.Writer, rep repo.PruneReport) {
	if !rep.DryRun || len(rep.Reasons) == 0 {
		return
	}
	for i := len(rep.Kept) - 1; i >= 0; i-- { // newest first, as the rules count
		id := rep.Kept[i]
		fmt.Fprintf(w, "  keep %s: %s\n", id, strings.Join(rep.Reasons[id], ", "))
	}
}

func abs(n int) int { return max(n, -n) }
