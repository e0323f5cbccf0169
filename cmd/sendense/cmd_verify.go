package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/offsite"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/units"
)

func init() {
	rootCmd.AddCommand(newVerifyCommand())
}

// verifyOptions are the flags of "sendense verify".
type verifyOptions struct {
	repo   repoDirFlag
	Backup string
}

func (o *verifyOptions) AddFlags(fs *pflag.FlagSet) {
	o.repo.register(fs)
	o.repo.registerStaging(fs)
	fs.StringVar(&o.Backup, "backup", "", "verify only backup `ID` of VM (or latest) and the images it needs (default: every backup)")
}

const verifyLong = `Verify the repository against its manifests: every VM's backups, those of
VM (name, moref, instance UUID or directory), or with --backup one backup
and the chain of images it needs. For every image:

  - the file exists, is the qcow2 recorded (size, backing file) and its
    backing file exists; the manifests of the chain exist and are valid;
  - its own allocation (qemu-img map, top layer only) is what the manifest's
    chunks explain: data chunks are allocated as data, zero chunks read as
    zeroes and, in an incremental, are in the image so that they hide the
    backing file, and nothing else is allocated;
  - the SHA-256 of every data chunk, read back through qemu-nbd (only the
    chunks: an incremental is never read in full);
  - for a full, its whole-disk digest (docs/repository.md, Disk digest).

Images are opened with their format and backing file pinned: an image
whose header names another backing file than its manifest, or an
external data file, is reported and never opened through its header.

Each problem is reported with the file, the offset and the expected and
actual values. Verifying every backup of a VM also lists its leftovers:
images of backups that never finished and temporary files, which no
restore point needs and prune removes (not problems). With --json: an
"image" line per image, a "problem" line per problem, a "leftover" line
per leftover, then a "summary". Verify changes nothing, and works on a
read-only repository. See docs/restore-verify-prune.md.

EXAMPLES
  Verify everything:
    sendense verify --repo /backups

  Verify the backup you are about to restore, and what it needs:
    sendense verify --repo /backups web01 --backup 20240501T120000Z

  Verify a repository on the control plane (the images are read there):
    sendense verify --repo ssh://sendense@cp.example.com/srv/backups

EXIT STATUS
  0    everything verified
  1    verification could not run (no repository, unknown VM or backup,
       qemu-img or qemu-nbd failed)
  2    bad flags or arguments
  3    a problem was found: a mismatch, unexpected allocation, a missing or
       corrupt image, backing file or manifest
  130  interrupted by SIGINT or SIGTERM`

func newVerifyCommand() *cobra.Command {
	var opts verifyOptions
	cmd := &cobra.Command{
		Use:   "verify [flags] [VM]",
		Short: "Check a repository's images against their manifests (SHA-256, allocation)",
		Long:  verifyLong,
		Args:  cobra.MaximumNArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if opts.Backup != "" && len(args) == 0 {
				return usageErrorf("--backup needs the VM it belongs to: sendense verify VM --backup %s", opts.Backup)
			}
			return opts.repo.resolve(cmd)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd.Context(), opts, gopts, cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	opts.AddFlags(cmd.Flags())
	return cmd
}

// verifiedImage is an "image" line of verify --json.
type verifiedImage struct {
	VM        string  `json:"vm"`
	Backup    string  `json:"backup"`
	Disk      int32   `json:"disk"`
	File      string  `json:"file"`
	Level     string  `json:"level"`
	Chunks    int     `json:"chunks"`
	BytesRead uint64  `json:"bytes_read"`
	Seconds   float64 `json:"seconds"`
	OK        bool    `json:"ok"`
	Problems  int     `json:"problems"`
}

// runVerify verifies args[0] (or every VM).
func runVerify(ctx context.Context, opts verifyOptions, gopts globalOptions, stdout, stderr io.Writer, args []string) error {
	vm := ""
	if len(args) > 0 {
		vm = args[0]
	}
	if opts.Backup != "" && vm == "" {
		return usageErrorf("--backup needs the VM it belongs to")
	}
	so := offsite.StageOptions{VM: vm, Backup: opts.Backup, Images: true}
	if opts.Backup == "latest" {
		so.Backup, so.Latest = "", true
	}
	r, staged, closeRepo, err := opts.repo.openFor(ctx, so)
	if err != nil {
		return err
	}
	defer closeRepo()
	if opts.Backup == "latest" {
		l, err := r.List(ctx, vm)
		if err != nil {
			return err
		}
		if len(l.Points) == 0 {
			return fmt.Errorf("VM %s has no backup in %s", vm, r.Location())
		}
		opts.Backup = l.Points[len(l.Points)-1].ID
	}
	problem := func(p repo.Problem) {
		p.File = display(staged, p.File)
		if gopts.JSON {
			printJSON(stdout, "problem", p)
		} else {
			fmt.Fprintf(stdout, "  %s: %s\n", p.Kind, p)
		}
	}
	res, err := r.Verify(ctx, repo.VerifyOptions{
		VM:     vm,
		Backup: opts.Backup,
		OnImage: func(im repo.ImageReport) {
			im.File = display(staged, im.File)
			if gopts.JSON {
				printJSON(stdout, "image", verifiedImage{im.VM, im.Backup, im.Disk, im.File, im.Level, im.Chunks,
					im.BytesRead, im.Seconds, im.OK(), len(im.Problems) + im.More})
				for _, p := range im.Problems {
					problem(p)
				}
				return
			}
			if im.OK() {
				if !gopts.Quiet {
					fmt.Fprintf(stdout, "ok    %s %s disk %d %s: %s, %s read\n", im.VM, im.Backup, im.Disk, im.Level,
						verifyPlural(im.Chunks, "chunk"), units.FormatSize(im.BytesRead))
				}
				return
			}
			fmt.Fprintf(stdout, "FAIL  %s %s disk %d %s (%s)\n", im.VM, im.Backup, im.Disk, im.Level, im.File)
			for _, p := range im.Problems {
				problem(p)
			}
			if im.More > 0 {
				fmt.Fprintf(stdout, "  … and %d more problems\n", im.More)
			}
		},
		OnProblem: func(p repo.Problem) {
			if !gopts.JSON {
				fmt.Fprintf(stdout, "FAIL  %s %s\n", p.VM, p.Backup)
			}
			problem(p)
		},
		OnLeftover: func(l repo.Leftover) {
			switch {
			case gopts.JSON:
				printJSON(stdout, "leftover", l)
			case !gopts.Quiet:
				fmt.Fprintf(stdout, "left  %s %s (%s): %s\n", l.VM, l.File, units.FormatSize(uint64(l.Bytes)), l.Message)
			}
		},
	})
	if err != nil {
		return err
	}
	location := r.Location()
	if staged != nil { // objects whose content differs from their seal
		location = opts.repo.dir
		for _, p := range staged.Problems {
			if !gopts.JSON {
				fmt.Fprintf(stdout, "FAIL  %s %s\n", p.VM, p.Backup)
			}
			problem(p)
		}
		res.Problems = append(res.Problems, staged.Problems...)
		for _, e := range staged.Errors { // seals that cannot be read: points not verified
			p := repo.Problem{File: opts.repo.dir, Kind: "seal", Message: e.Error()}
			if !gopts.JSON {
				fmt.Fprintf(stdout, "FAIL  seal\n")
			}
			problem(p)
			res.Problems = append(res.Problems, p)
		}
	}
	n := res.ProblemCount()
	if gopts.JSON {
		printJSON(stdout, "summary", struct {
			Images    int  `json:"images"`
			Problems  int  `json:"problems"`
			Leftovers int  `json:"leftovers"`
			OK        bool `json:"ok"`
		}{len(res.Images), n, len(res.Leftovers), res.OK()})
	} else if !gopts.Quiet || n > 0 {
		left := ""
		if k := len(res.Leftovers); k > 0 {
			left = fmt.Sprintf("; %s (prune removes them)", verifyPlural(k, "leftover"))
		}
		fmt.Fprintf(stdout, "verified %d images: %s%s\n", len(res.Images), verifyPlural(n, "problem"), left)
	}
	if !res.OK() {
		return &codedError{exitVerify, fmt.Errorf("verify found %s in repository %s", verifyPlural(n, "problem"), location)}
	}
	if len(res.Images) == 0 && vm != "" {
		return fmt.Errorf("VM %s has no backups to verify", vm)
	}
	return nil
}

// verifyPlural formats "no problems", "1 problem", "3 problems".
func verifyPlural(n int, word string) string {
	switch n {
	case 0:
		return "no " + word + "s"
	case 1:
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
