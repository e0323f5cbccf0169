package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/offsite"
	"github.com/sendense/capture/internal/units"
)

func init() {
	cmd := &cobra.Command{
		Use:   "offsite",
		Short: "Copy restore points to S3 object storage with Object Lock, and prune them there",
		Long: `Offsite copies: restore points copied to an S3 bucket ([[offsite]] targets of
the configuration), locked with S3 Object Lock so that nobody, not even a
stolen agent key, can delete them before their time. The bucket holds the
repository's own files and is enough to restore: use --repo s3://NAME/ with
list, verify and restore. See docs/offsite.md.`,
	}
	cmd.AddCommand(newOffsiteSyncCommand(), newOffsitePruneCommand())
	rootCmd.AddCommand(cmd)
}

// offsiteTargetFlag is --target and the configuration it comes from.
type offsiteTargetFlag struct {
	name string
	cfg  *config.Config
	o    *config.Offsite
}

func (f *offsiteTargetFlag) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.name, "target", "", "the [[offsite]] target `NAME` of the configuration; required")
}

func (f *offsiteTargetFlag) resolve(cmd *cobra.Command) error {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return err
	}
	if f.name == "" {
		return usageErrorf("--target NAME is required: the name of an [[offsite]] target of the configuration (see docs/offsite.md)")
	}
	o, err := cfg.OffsiteTarget(f.name)
	if err != nil {
		return usageErrorf("--target: %v", err)
	}
	f.cfg, f.o = cfg, o
	return nil
}

// offsiteSyncOptions are the flags of "sendense offsite sync".
type offsiteSyncOptions struct {
	target offsiteTargetFlag
	repo   string
}

const offsiteSyncLong = `Copy to the bucket of an [[offsite]] target every restore point of the
repository (or of the VMs named) that is not there yet, oldest first: its
images (multipart, in parallel), its manifest and its seal, which records
each object's size, SHA-256 and version. Each object is locked with the
target's object_lock_mode until retention_days after its upload, and the
older points a new point backs onto are locked at least as long.

A cut upload resumes where it stopped: the parts the server holds whose
MD5 matches the file are not sent again. A point is in the bucket once its
seal is; points already there are not uploaded again. The repository must
be on this machine; a prune of a VM waits while its points are copied.
See docs/offsite.md.

EXAMPLES
  Copy every new restore point to target dr:
    sendense offsite sync --target dr --repo /backups

  Only web01, for a script:
    sendense offsite sync --target dr --json web01

EXIT STATUS
  0    every point is in the bucket
  1    a point could not be copied (the error says why; run again to resume)
  2    bad flags, arguments or configuration
  130  interrupted by SIGINT or SIGTERM (run again to resume)`

func newOffsiteSyncCommand() *cobra.Command {
	var opts offsiteSyncOptions
	cmd := &cobra.Command{
		Use:   "sync [flags] --target NAME [VM...]",
		Short: "Copy the restore points not yet in the bucket of an offsite target",
		Long:  offsiteSyncLong,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.target.resolve(cmd); err != nil {
				return err
			}
			if opts.repo == "" {
				opts.repo = opts.target.cfg.Repository.Path
			}
			if opts.repo == "" {
				return usageErrorf("no repository given: use --repo DIR, [repository] path in the configuration, or SENDENSE_REPOSITORY")
			}
			if strings.Contains(opts.repo, "://") {
				return usageErrorf("--repo %s: offsite sync reads a repository on this machine: run it where the repository is, with --repo DIR", opts.repo)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOffsiteSync(cmd.Context(), opts, gopts, cmd.OutOrStdout(), args)
		},
	}
	cmd.Flags().StringVar(&opts.repo, "repo", "", "repository `directory` on this machine (default: [repository] path of the --config file, else $SENDENSE_REPOSITORY)")
	opts.target.register(cmd.Flags())
	return cmd
}

func runOffsiteSync(ctx context.Context, opts offsiteSyncOptions, gopts globalOptions, stdout io.Writer, args []string) error {
	t, err := offsite.Open(ctx, opts.target.o, os.Getenv)
	if err != nil {
		return err
	}
	r, closeRepo, err := (&repoDirFlag{dir: opts.repo}).open(ctx)
	if err != nil {
		return err
	}
	defer closeRepo()
	rep, err := offsite.Sync(ctx, r, t, offsite.SyncOptions{
		VMs: args,
		OnPoint: func(p offsite.PointResult) {
			switch {
			case gopts.JSON:
				printJSON(stdout, "point", p)
			case gopts.Quiet:
			case !p.Uploaded:
				fmt.Fprintf(stdout, "present   %s %s (%s)\n", p.VMDir, p.ID, units.FormatSize(uint64(p.Bytes)))
			default:
				fmt.Fprintf(stdout, "uploaded  %s %s (%s in %.1f s, %d parts sent, %d kept from a cut upload%s)\n", p.VMDir, p.ID,
					units.FormatSize(uint64(p.Bytes)), p.Seconds, p.Stats.Parts, p.Stats.PartsResumed, lockedUntil(p.RetainUntil, t.Mode))
			}
		},
	})
	if rep != nil {
		if gopts.JSON {
			printJSON(stdout, "summary", struct {
				Target string `json:"target"`
				*offsite.SyncReport
			}{t.Name, rep})
		} else if !gopts.Quiet {
			older := ""
			if rep.Older > 0 {
				older = fmt.Sprintf(", %d older than the bucket's oldest (pruned there, not uploaded again)", rep.Older)
			}
			fmt.Fprintf(stdout, "%s: %d uploaded, %d already there%s; %s sent, %s kept from cut uploads, in %.1f s\n", t.Location(), rep.Uploaded, rep.Present, older,
				units.FormatSize(uint64(rep.Stats.Bytes)), units.FormatSize(uint64(rep.Stats.BytesResumed)), rep.Seconds)
		}
	}
	return err
}

func lockedUntil(until time.Time, mode any) string {
	if until.IsZero() {
		return ""
	}
	return fmt.Sprintf(", locked (%v) until %s", mode, until.UTC().Format(time.RFC3339))
}

// offsitePruneOptions are the flags of "sendense offsite prune".
type offsitePruneOptions struct {
	target offsiteTargetFlag
	keepFlags
	dryRun           bool
	bypassGovernance bool
}

const offsitePruneLong = `Remove old restore points from the bucket of an [[offsite]] target: keep
the points of each VM (or of the VMs named: directory in the bucket, name,
moref or instance UUID) that a retention policy keeps, and every older
point they back onto; remove the others, newest first, each point's seal
first, every version of each object.

The policy: --keep N keeps the newest N points; the --keep-* flags are
those of 'sendense prune' (restic's forget rules, docs/retention.md), a
point's time being its backup id's. One of them is required: the
repository's [retention] does not apply to the bucket, whose points
usually live longer. The newest point of a VM is always kept.

Objects still under Object Lock retention are refused by the server:
those points are reported as locked, with the date their lock ends, and
stay whole; that is not an error. A GOVERNANCE lock is bypassed only with
--bypass-governance (and credentials allowed to); a COMPLIANCE lock never.
Objects of uploads that never finished are removed as well. See
docs/offsite.md.

EXAMPLES
  Keep the newest 30 points of every VM in the bucket:
    sendense offsite prune --target dr --keep 30

  What would keeping 7 remove?
    sendense offsite prune --target dr --keep 7 --dry-run

  Keep a point a month for a year, and every point of the last 30 days:
    sendense offsite prune --target dr --keep-monthly 12 --keep-within 30d

EXIT STATUS
  0    done: everything retention allowed was removed (locked points are
       reported, not errors)
  1    the bucket could not be read or an object could not be removed for
       another reason than its lock
  2    bad flags, arguments or configuration
  130  interrupted by SIGINT or SIGTERM`

func newOffsitePruneCommand() *cobra.Command {
	var opts offsitePruneOptions
	cmd := &cobra.Command{
		Use:   "prune [flags] --target NAME (--keep N | --keep-*...) [VM...]",
		Short: "Remove old restore points from an offsite target, reporting those still locked",
		Long:  offsitePruneLong,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			opts.given(cmd.Flags())
			if err := opts.keepFlags.Check(); err != nil {
				return err
			}
			return opts.target.resolve(cmd)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOffsitePrune(cmd.Context(), opts, gopts, cmd.OutOrStdout(), args)
		},
	}
	fs := cmd.Flags()
	opts.target.register(fs)
	opts.keepFlags.register(fs, "points", "point")
	fs.BoolVar(&opts.dryRun, "dry-run", false, "only say what would be removed")
	fs.BoolVar(&opts.bypassGovernance, "bypass-governance", false, "remove objects under a GOVERNANCE lock (needs s3:BypassGovernanceRetention); COMPLIANCE locks are never bypassed")
	return cmd
}

func runOffsitePrune(ctx context.Context, opts offsitePruneOptions, gopts globalOptions, stdout io.Writer, args []string) error {
	t, err := offsite.Open(ctx, opts.target.o, os.Getenv)
	if err != nil {
		return err
	}
	po := offsite.PruneOptions{VMs: args, Keep: opts.Keep, DryRun: opts.dryRun, BypassGovernance: opts.bypassGovernance}
	if opts.policySet {
		po.Keep, po.Select = 0, opts.Policy.Apply
	}
	opts.printPolicy(stdout)
	po.OnPoint = func(p offsite.PrunedPoint) {
		switch {
		case gopts.JSON:
			printJSON(stdout, "point", p)
		case gopts.Quiet && p.Action != offsite.PruneLocked && p.Action != offsite.PrunePartly:
		case p.Action == offsite.PruneKept:
			fmt.Fprintf(stdout, "kept          %s %s (%s)\n", p.VMDir, p.ID, strings.Join(p.Reasons, ", "))
		case p.Action == offsite.PruneLocked:
			fmt.Fprintf(stdout, "locked        %s %s: retention (%s) until %s; left whole\n", p.VMDir, p.ID, p.LockMode, p.LockedUntil.UTC().Format(time.RFC3339))
		case p.Action == offsite.PrunePartly:
			fmt.Fprintf(stdout, "partly        %s %s: removed from the listing; %s locked (%s) until %s\n", p.VMDir, p.ID, strings.Join(p.Locked, ", "), p.LockMode, p.LockedUntil.UTC().Format(time.RFC3339))
		default:
			fmt.Fprintf(stdout, "%-13s %s %s (%s)\n", p.Action, p.VMDir, p.ID, units.FormatSize(uint64(p.Bytes)))
		}
	}
	rep, err := offsite.Prune(ctx, t, po)
	if rep != nil {
		if gopts.JSON {
			printJSON(stdout, "summary", struct {
				Target string `json:"target"`
				DryRun bool   `json:"dry_run"`
				*offsite.PruneReport
			}{t.Name, opts.dryRun, rep})
		} else if !gopts.Quiet {
			verb := "removed"
			if opts.dryRun {
				verb = "would remove"
			}
			fmt.Fprintf(stdout, "%s: %d kept, %s %d (%s), %d still locked\n", t.Location(), rep.Kept, verb, rep.Removed, units.FormatSize(uint64(rep.Bytes)), rep.Locked)
		}
	}
	return err
}
