package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/offsite"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/orchestrator"
)

func init() {
	rootCmd.AddCommand(newListCommand())
}

// repoDirFlag is the --repo flag of list, restore, verify and prune, with
// the SSH flags of ssh:// repositories.
type repoDirFlag struct {
	dir     string
	staging string // s3:// repositories: where objects are downloaded
	tunnel  tunnelFlags
	cfg     *config.Config // the configuration, loaded when needed
}

func (f *repoDirFlag) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dir, "repo", "", "repository `directory`, ssh://[user@]host[:port]/path on the control plane, or s3://NAME/ for the bucket of [[offsite]] target NAME (default: [repository] path of the --config file, else $SENDENSE_REPOSITORY)")
	f.tunnel.register(fs)
}

// registerStaging adds --staging-dir (commands that read s3:// repositories).
func (f *repoDirFlag) registerStaging(fs *pflag.FlagSet) {
	fs.StringVar(&f.staging, "staging-dir", "", "s3:// repositories: `directory` the objects needed are downloaded into, in a private subdirectory removed afterwards (default: $TMPDIR; restore: inside --to)")
}

// resolve fills in a --repo not given from the configuration file or
// $SENDENSE_REPOSITORY, and reads the [tunnel] settings (under the SSH
// flags) for an ssh:// repository.
func (f *repoDirFlag) resolve(cmd *cobra.Command) error {
	if f.dir != "" && !orchestrator.IsRemoteRepository(f.dir) && !offsite.IsURL(f.dir) {
		return nil
	}
	cfg, err := loadConfig(cmd) // the file, over $SENDENSE_REPOSITORY
	if err != nil {
		return err
	}
	if f.dir == "" {
		f.dir = cfg.Repository.Path
	}
	f.tunnel.apply(cmd.Flags(), cfg)
	f.cfg = cfg
	if err := f.check(); err != nil {
		return err
	}
	if offsite.IsURL(f.dir) {
		return f.checkOffsiteRepo()
	}
	if orchestrator.IsRemoteRepository(f.dir) {
		if _, err := orchestrator.ParseRepositoryURL(f.dir); err != nil {
			return usageErrorf("--repo: %v", err)
		}
	}
	return nil
}

func (f *repoDirFlag) check() error {
	if f.dir == "" {
		return usageErrorf("no repository given: use --repo DIR, [repository] path in the configuration, or SENDENSE_REPOSITORY")
	}
	return nil
}

// open opens the repository named by --repo; close releases it (and the
// SSH tunnel of an ssh:// one).
func (f *repoDirFlag) open(ctx context.Context) (r *repo.Repo, close func(), err error) {
	if err := f.check(); err != nil {
		return nil, nil, err
	}
	if offsite.IsURL(f.dir) {
		return nil, nil, usageErrorf("--repo %s: an offsite target's bucket is read by list, verify and restore; its points are removed by 'sendense offsite prune --target NAME'", f.dir)
	}
	if !orchestrator.IsRemoteRepository(f.dir) {
		r, err := repo.OpenContext(ctx, f.dir)
		return r, func() {}, err
	}
	cfg := f.cfg
	if cfg == nil {
		cfg = config.Defaults()
	}
	s := &orchestrator.Services{Config: cfg, AcceptNewHostKey: f.tunnel.acceptNewHostKey, OnTunnelRetry: tunnelRetryStatus()}
	r, err = orchestrator.OpenRepository(ctx, s, f.dir)
	if err != nil {
		s.CloseTunnels()
		return nil, nil, err
	}
	return r, func() { r.Close(); s.CloseTunnels() }, nil
}

// listOptions are the flags of "sendense list".
type listOptions struct {
	repo repoDirFlag
}

func (o *listOptions) AddFlags(fs *pflag.FlagSet) { o.repo.register(fs); o.repo.registerStaging(fs) }

const listLong = `List the restore points (backups) in the repository: every VM's, or
those of VM (its name, moref, instance UUID or directory in the repository),
oldest first.

Columns: VM directory, backup id, level (full, incremental, or mixed when
its disks differ), start time (UTC), number of disks, their total size,
the bytes copied by that backup, the space its images take, and whether
it can be restored: every image of its chains is there and its qcow2
header says what the manifests say (the data itself is checked by
verify and restore). Why a backup cannot be restored is printed on
standard error.

With --json each backup is one "backup" object per line (the manifest's
fields, without chunk lists), then a "summary". The format is in
docs/repository.md.

EXAMPLES
  List everything:
    sendense list --repo /backups

  One VM, for a script:
    SENDENSE_REPOSITORY=/backups sendense list --json web01

  A repository on the control plane, over SSH:
    sendense list --repo ssh://sendense@cp.example.com/srv/backups \
        --ssh-key /etc/sendense/id_ed25519

EXIT STATUS
  0    the backups were listed
  1    the repository cannot be opened, a manifest is corrupt (the
       others are listed; the error names the file), or a backup cannot
       be restored
  2    bad flags or arguments`

func newListCommand() *cobra.Command {
	var opts listOptions
	cmd := &cobra.Command{
		Use:   "list [flags] [VM]",
		Short: "List the restore points in a repository",
		Long:  listLong,
		Args:  cobra.MaximumNArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			return opts.repo.resolve(cmd)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runList(cmd.Context(), opts, gopts, cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	opts.AddFlags(cmd.Flags())
	return cmd
}

// listedBackup is one "backup" line of list --json.
type listedBackup struct {
	VMDir       string           `json:"vm_dir"`
	VM          repo.VMRef       `json:"vm"`
	ID          string           `json:"id"`
	Parent      string           `json:"parent"`
	Level       string           `json:"level"`
	Started     time.Time        `json:"started"`
	Finished    time.Time        `json:"finished"`
	Snapshot    repo.SnapshotRef `json:"snapshot"`
	Disks       []listedDisk     `json:"disks"`
	Capacity    uint64           `json:"capacity"`
	BytesCopied uint64           `json:"bytes_copied"`
	StoredBytes int64            `json:"stored_bytes"`
	Manifest    string           `json:"manifest"`
	Merged      []string         `json:"merged,omitempty"`
	Restorable  bool             `json:"restorable"`
	Damage      string           `json:"damage,omitempty"`
}

type listedDisk struct {
	Key         int32  `json:"key"`
	Label       string `json:"label,omitempty"`
	Capacity    uint64 `json:"capacity"`
	Level       string `json:"level"`
	Reason      string `json:"reason,omitempty"`
	Image       string `json:"image"`
	Backing     string `json:"backing"`
	ChangeID    string `json:"change_id"`
	BytesCopied uint64 `json:"bytes_copied"`
	Chunks      int    `json:"chunks"`
}

// runList lists the backups of args[0] (or all).
func runList(ctx context.Context, opts listOptions, gopts globalOptions, stdout, stderr io.Writer, args []string) error {
	vm := ""
	if len(args) > 0 {
		vm = args[0]
	}
	r, staged, closeRepo, err := opts.repo.openFor(ctx, offsite.StageOptions{VM: vm})
	if err != nil {
		return err
	}
	defer closeRepo()
	res, err := r.List(ctx, vm)
	if err != nil {
		return err
	}
	location := r.Location()
	if staged != nil { // sizes and names in the bucket
		location = opts.repo.dir
		for i := range res.Points {
			p := &res.Points[i]
			p.StoredBytes, p.Path = staged.StoredBytes(p.VMDir, p.ID), display(staged, p.Path)
			if ok, why, known := staged.PointStatus(p.VMDir, p.ID); known { // images are not downloaded to list
				p.Restorable, p.Damage = ok, why
			}
		}
		res.Errors = append(res.Errors, staged.Errors...)
	}
	vms := map[string]bool{}
	if gopts.JSON {
		for _, p := range res.Points {
			vms[p.VMDir] = true
			lb := listedBackup{VMDir: p.VMDir, VM: p.VM, ID: p.ID, Parent: p.Parent, Level: p.Level(), Started: p.Started,
				Finished: p.Finished, Snapshot: p.Snapshot, Capacity: p.Capacity(), BytesCopied: p.BytesCopied(),
				StoredBytes: p.StoredBytes, Manifest: p.Path, Merged: p.Merged, Restorable: p.Restorable, Damage: p.Damage}
			for _, d := range p.Disks {
				lb.Disks = append(lb.Disks, listedDisk{Key: d.Key, Label: d.Label, Capacity: d.Capacity, Level: d.Level, Reason: d.Reason,
					Image: d.Image, Backing: d.Backing, ChangeID: d.ChangeID, BytesCopied: d.BytesCopied, Chunks: len(d.Chunks)})
			}
			if err := printJSON(stdout, "backup", lb); err != nil {
				return err
			}
		}
		for _, e := range res.Errors {
			printJSON(stdout, "error", struct {
				Message string `json:"message"`
			}{e.Error()})
		}
		printJSON(stdout, "summary", struct {
			Backups int `json:"backups"`
			VMs     int `json:"vms"`
			Errors  int `json:"errors"`
		}{len(res.Points), len(vms), len(res.Errors)})
	} else {
		if len(res.Points) == 0 && len(res.Errors) == 0 {
			if !gopts.Quiet {
				fmt.Fprintf(stdout, "no backups in repository %s\n", location)
			}
			return nil
		}
		tw := newTable(stdout)
		fmt.Fprintln(tw, "VM\tBACKUP\tLEVEL\tSTARTED (UTC)\tDISKS\tSIZE\tCOPIED\tSTORED\tRESTORABLE")
		for _, p := range res.Points {
			ok := "yes"
			if !p.Restorable {
				ok = "NO"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p.VMDir, p.ID, p.Level(), p.Started.UTC().Format("2006-01-02 15:04:05"),
				len(p.Disks), units.FormatSize(p.Capacity()), units.FormatSize(p.BytesCopied()), units.FormatSize(uint64(p.StoredBytes)), ok)
		}
		tw.Flush()
		for _, e := range res.Errors {
			fmt.Fprintf(stderr, "sendense: %v\n", e)
		}
		for _, p := range res.Points {
			if !p.Restorable {
				fmt.Fprintf(stderr, "sendense: %s %s cannot be restored: %s\n", p.VMDir, p.ID, p.Damage)
			}
		}
	}
	damaged := 0
	for _, p := range res.Points {
		if !p.Restorable {
			damaged++
		}
	}
	switch n := len(res.Errors); {
	case n > 0:
		return fmt.Errorf("%d manifest(s) could not be read (see above); the other backups are listed", n)
	case damaged > 0:
		return fmt.Errorf("%d backup(s) cannot be restored (see above; 'sendense verify' tells every problem)", damaged)
	}
	return nil
}
