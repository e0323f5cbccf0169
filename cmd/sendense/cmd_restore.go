package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/offsite"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/units"
)

func init() {
	rootCmd.AddCommand(newRestoreCommand())
}

// restoreOptions are the flags of "sendense restore".
type restoreOptions struct {
	repo    repoDirFlag
	Backup  string
	To      string
	Format  string
	Force   bool
	Disks   []int
	vsphere vsphereRestoreFlags
}

func (o *restoreOptions) AddFlags(fs *pflag.FlagSet) {
	o.repo.register(fs)
	o.repo.registerStaging(fs)
	fs.StringVar(&o.Backup, "backup", "", "backup `ID` to restore (see 'sendense list'), or latest (the default)")
	fs.StringVar(&o.To, "to", "", "write the disk images into `DIR` (created if needed); required")
	fs.StringVar(&o.Format, "format", "raw", "output `format`: raw (sparse) or qcow2 (standalone, no backing file)")
	fs.BoolVar(&o.Force, "force", false, "replace output files that exist")
	fs.IntSliceVar(&o.Disks, "disk", nil, "restore only the disk with device `KEY` (repeatable; default: every disk)")
	o.vsphere.register(fs)
}

// Check validates the options.
func (o *restoreOptions) Check() error {
	if o.vsphere.ToVSphere || o.vsphere.InPlace {
		return o.vsphere.check(o.To)
	}
	if o.To == "" {
		return usageErrorf("no output directory: use --to DIR")
	}
	if o.Format != "raw" && o.Format != "qcow2" {
		return usageErrorf("--format must be raw or qcow2, not %q", o.Format)
	}
	return nil
}

const restoreLong = `Restore one backup (restore point) of VM: every disk's image, followed
through its backing chain, becomes one standalone image in DIR,

  DIR/<vm-dir>-disk<key>.raw     (--format raw, the default: sparse)
  DIR/<vm-dir>-disk<key>.qcow2   (--format qcow2: no backing file)

written under a temporary name and renamed once complete and fsynced.
VM is the VM's name, moref, instance UUID or directory in the repository
(a name several VMs match is an error listing them). Without --backup the
latest backup is restored.

Nothing is written when an output file exists (unless --force), or when
an image of the chain is missing, damaged, or says another thing than its
manifest (size, backing file, an external data file), or a manifest is
missing or corrupt: the error names the backup and the file. The chain
is read only through the manifests' names, each file pinned as qcow2.
Every byte written is checked against the SHA-256s the manifests
recorded (each chunk, and a full's whole disk): a mismatch stops the
restore with an error naming the backup, the disk and the offset, and the
output is removed. The temporary output of a restore that died is removed
by the next restore to the same place. Restore works on a read-only
repository. See docs/restore-verify-prune.md.

With --repo ssh://… the repository is on the control plane: each chain is
served there by qemu-nbd and read through the SSH tunnel, so DIR is always
on this machine and holes are not sent.

With --to-vsphere the backup goes back into vSphere instead (the
vCenter settings are those of backup: [vcenter], SENDENSE_VCENTER_*):
a new VM is created with the configuration the backup recorded (CPUs,
memory, firmware, guest OS, controllers, disks, NICs with generated MAC
addresses), named --name (default: the VM's name + "-restored"), and
each disk is written through the plugin; only allocated extents are
written, so thin disks stay thin. The original VM is not touched. With
--in-place (and --confirm-overwrite) the backup is written back over
the original VM's disks instead, the VM powered off: only the areas CBT
reports changed since the backup (quick rollback), or the whole disk,
with the reason printed, when CBT cannot tell. See docs/recovery.md.

EXAMPLES
  Restore the latest backup of web01 as raw disks:
    sendense restore --repo /backups web01 --to /restore

  Restore from a repository on the control plane:
    sendense restore --repo ssh://sendense@cp.example.com/srv/backups web01 \
        --to /restore --ssh-key /etc/sendense/id_ed25519

  Recreate web01 from a backup as a new VM, and start it:
    sendense restore --repo /backups web01 --backup 20240501T120000Z \
        --to-vsphere --name web01-test --power-on

  Roll web01 (powered off) back to its latest backup:
    sendense restore --repo /backups web01 --to-vsphere --in-place --confirm-overwrite

  Restore one disk of an older backup as qcow2:
    sendense restore --repo /backups vm-42 --backup 20240501T120000Z \
        --disk 2000 --format qcow2 --to /restore

EXIT STATUS
  0    every disk was restored
  1    the restore failed (a missing or damaged image, backing file or
       manifest, data that does not match its SHA-256, an output file
       exists, qemu-img or qemu-nbd failed)
  2    bad flags or arguments
  130  interrupted by SIGINT or SIGTERM (no partial output is left)`

func newRestoreCommand() *cobra.Command {
	var opts restoreOptions
	cmd := &cobra.Command{
		Use:   "restore [flags] VM --to DIR | --to-vsphere",
		Short: "Restore a backup's disks as standalone raw or qcow2 images",
		Long:  restoreLong,
		Args:  cobra.ExactArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.repo.resolve(cmd); err != nil {
				return err
			}
			if err := opts.Check(); err != nil {
				return err
			}
			if opts.vsphere.ToVSphere {
				cfg, err := loadConfig(cmd)
				if err != nil {
					return err
				}
				opts.vsphere.cfg = cfg
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRestore(cmd.Context(), opts, gopts, cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	opts.AddFlags(cmd.Flags())
	return cmd
}

// runRestore restores a backup of args[0].
func runRestore(ctx context.Context, opts restoreOptions, gopts globalOptions, stdout, stderr io.Writer, args []string) error {
	if len(args) != 1 {
		return usageErrorf("restore needs the VM (see 'sendense restore --help')")
	}
	if err := opts.Check(); err != nil {
		return err
	}
	if opts.Backup == "latest" {
		opts.Backup = "" // the latest
	}
	if opts.vsphere.ToVSphere {
		return runRestoreVSphere(ctx, opts, gopts, stdout, stderr, args[0])
	}
	so := offsite.StageOptions{VM: args[0], Backup: opts.Backup, Latest: opts.Backup == "", Images: true}
	if offsite.IsURL(opts.repo.dir) && opts.repo.staging == "" {
		// Next to the output: the chain may be as large as the disks.
		if _, err := os.Stat(opts.To); os.IsNotExist(err) {
			defer os.Remove(opts.To) // only if nothing was restored into it
		}
		if err := os.MkdirAll(opts.To, 0o700); err != nil {
			return fmt.Errorf("creating the output directory (--to): %w", err)
		}
		so.In = opts.To
	}
	r, staged, closeRepo, err := opts.repo.openFor(ctx, so)
	if err != nil {
		return err
	}
	defer closeRepo()
	backup := opts.Backup
	if staged != nil {
		if len(staged.Problems) > 0 {
			return fmt.Errorf("%s: %s: expected %s, actual %s; nothing was restored (sendense verify --repo %s shows every damaged object)",
				staged.Problems[0].File, staged.Problems[0].Message, staged.Problems[0].Expected, staged.Problems[0].Actual, opts.repo.dir)
		}
		backup = staged.Backup
		for _, e := range staged.Errors { // points left out: the latest may be older than expected
			fmt.Fprintf(stderr, "sendense: warning: %v\n", e)
		}
	}
	var disks []int32
	for _, k := range opts.Disks {
		disks = append(disks, int32(k))
	}
	out, err := r.Restore(ctx, repo.RestoreOptions{
		VM: args[0], Backup: backup, To: opts.To, Format: opts.Format, Force: opts.Force, Disks: disks,
		OnDisk: func(d repo.RestoredDisk) {
			d.Image = display(staged, d.Image)
			switch {
			case gopts.JSON:
				printJSON(stdout, "restored", d)
			case !gopts.Quiet:
				fmt.Fprintf(stdout, "restored disk %d of %s backup %s to %s (%s, %.1f s)\n",
					d.Disk, d.VM, d.Backup, d.Path, units.FormatSize(d.Capacity), d.Seconds)
			}
		},
	})
	if err != nil {
		return err
	}
	if gopts.JSON && len(out) > 0 {
		var total uint64
		for _, d := range out {
			total += d.Capacity
		}
		return printJSON(stdout, "summary", struct {
			VM       string `json:"vm"`
			Backup   string `json:"backup"`
			Disks    int    `json:"disks"`
			Capacity uint64 `json:"capacity"`
			To       string `json:"to"`
			Format   string `json:"format"`
		}{out[0].VM, out[0].Backup, len(out), total, opts.To, opts.Format})
	}
	return nil
}
