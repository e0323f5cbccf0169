package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/units"
)

func init() {
	rootCmd.AddCommand(newPruneCommand())
}

// pruneOptions are the flags of "sendense prune".
type pruneOptions struct {
	repo   repoDirFlag
	Keep   int
	DryRun bool
}

func (o *pruneOptions) AddFlags(fs *pflag.FlagSet) {
	o.repo.register(fs)
	fs.IntVar(&o.Keep, "keep", 0, "keep the newest `N` backups of each VM (at least 1); required")
	fs.BoolVar(&o.DryRun, "dry-run", false, "only say what would be removed and merged")
}

// Check validates the options.
func (o *pruneOptions) Check() error {
	if o.Keep < 1 {
		return usageErrorf("--keep N is required, N at least 1 (not %d): the newest N backups of each VM are kept", o.Keep)
	}
	return nil
}

const pruneLong = `Remove old backups: keep the newest N backups (restore points) of each VM,
or of VM (name, moref, instance UUID or directory), and remove the older
ones.

When a kept incremental backs onto a removed backup, its chain is merged
into it (qemu-img commit into the chain's full, renamed onto the kept
image's name), and its manifest is rewritten as a full: chunk list and
SHA-256s of what the merge changed recomputed, and the disk digest.
Every kept backup restores exactly, and verifies, afterwards.

A prune is safe against crashes and signals: it keeps a journal in the VM's
directory, every kept backup restores exactly at every moment, and the next
prune or backup (or any command opening the repository) finishes an
interrupted one. It refuses to run while a backup of the same VM runs, and
waits for restores and verifies of that VM. A VM whose manifests cannot all
be read, or whose chains are broken, is left as it is. See
docs/restore-verify-prune.md.

EXAMPLES
  Keep the last 7 backups of every VM:
    sendense prune --repo /backups --keep 7

  See what keeping 2 backups of web01 would do:
    sendense prune --repo /backups --keep 2 --dry-run web01

  Prune a repository on the control plane (merges run there):
    sendense prune --repo ssh://sendense@cp.example.com/srv/backups --keep 7

EXIT STATUS
  0    done (or nothing to do)
  1    a VM could not be pruned (locked by a backup, a corrupt manifest, a
       broken chain, qemu-img failed); the others were pruned
  2    bad flags or arguments
  130  interrupted by SIGINT or SIGTERM (the next prune finishes the work)`

func newPruneCommand() *cobra.Command {
	var opts pruneOptions
	cmd := &cobra.Command{
		Use:   "prune [flags] --keep N [VM]",
		Short: "Remove old backups, keeping the newest N of each VM",
		Long:  pruneLong,
		Args:  cobra.MaximumNArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.Check(); err != nil {
				return err
			}
			return opts.repo.resolve(cmd)
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
	reports, err := r.Prune(ctx, repo.PruneOptions{
		VM: vm, Keep: opts.Keep, DryRun: opts.DryRun,
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

// writePruneReport is the text form of one VM's prune.
func writePruneReport(w io.Writer, rep repo.PruneReport) {
	if len(rep.Dropped) == 0 {
		fmt.Fprintf(w, "%s: %d backups, nothing to remove\n", rep.VM, len(rep.Kept))
		return
	}
	verb, freed := "removed", "freed"
	if rep.DryRun {
		verb, freed = "would remove", "would free about"
	}
	fmt.Fprintf(w, "%s: %s %d backups (%s), kept %d (%s)\n", rep.VM, verb, len(rep.Dropped), strings.Join(rep.Dropped, ", "),
		len(rep.Kept), strings.Join(rep.Kept, ", "))
	for _, m := range rep.Merged {
		what := "merged"
		if rep.DryRun {
			what = "would merge"
		}
		fmt.Fprintf(w, "  %s disk %d into backup %s (now full): %s\n", what, m.Disk, m.Backup, strings.Join(m.Images, " + "))
	}
	fmt.Fprintf(w, "  %s %s\n", freed, units.FormatSize(uint64(max(rep.FreedBytes, 0))))
}
