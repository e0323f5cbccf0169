package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/offsite"
	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/orchestrator"
)

// vsphereRestoreFlags are the flags of restore --to-vsphere.
type vsphereRestoreFlags struct {
	ToVSphere        bool
	Name             string
	Datastore        string
	Folder           string
	ResourcePool     string
	PowerOn          bool
	InPlace          bool
	ConfirmOverwrite bool
	cfg              *config.Config
}

func (f *vsphereRestoreFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&f.ToVSphere, "to-vsphere", false, "restore into vSphere: a new VM with the backup's configuration (or, with --in-place, the original VM)")
	fs.StringVar(&f.Name, "name", "", "--to-vsphere: the new VM's `NAME` (default: the VM's name + \"-restored\"; no VM of that name may exist)")
	fs.StringVar(&f.Datastore, "datastore", "", "--to-vsphere: `DATASTORE` of the new VM (default: that of the VM's first disk)")
	fs.StringVar(&f.Folder, "folder", "", "--to-vsphere: VM folder `PATH` of the new VM (default: the datacenter's VM folder)")
	fs.StringVar(&f.ResourcePool, "resource-pool", "", "--to-vsphere: resource pool `PATH` of the new VM (default: the default one)")
	fs.BoolVar(&f.PowerOn, "power-on", false, "--to-vsphere: power the VM on once restored")
	fs.BoolVar(&f.InPlace, "in-place", false, "--to-vsphere: write the backup back over the original VM's disks (powered off): only what changed since the backup, by CBT")
	fs.BoolVar(&f.ConfirmOverwrite, "confirm-overwrite", false, "--in-place: confirm that the VM's disks are overwritten with the backup")
}

func (f *vsphereRestoreFlags) check(to string) error {
	switch {
	case !f.ToVSphere:
		return usageErrorf("--in-place needs --to-vsphere")
	case to != "":
		return usageErrorf("--to and --to-vsphere cannot be used together")
	case f.InPlace && !f.ConfirmOverwrite:
		return usageErrorf("--in-place overwrites the VM's disks with the backup: add --confirm-overwrite to do it")
	case f.InPlace && (f.Name != "" || f.Datastore != "" || f.Folder != "" || f.ResourcePool != ""):
		return usageErrorf("--name, --datastore, --folder and --resource-pool are for a new VM, not --in-place")
	}
	return nil
}

// runRestoreVSphere runs restore --to-vsphere.
func runRestoreVSphere(ctx context.Context, opts restoreOptions, gopts globalOptions, stdout, stderr io.Writer, vm string) error {
	if offsite.IsURL(opts.repo.dir) || opts.vsphere.cfg == nil {
		return usageErrorf("--to-vsphere reads a local or ssh:// repository (an s3:// one: restore --to DIR first)")
	}
	s, err := newServices(ctx, opts.vsphere.cfg, "", nil)
	if err != nil {
		return err
	}
	defer s.Client.Close(context.WithoutCancel(ctx))
	r, closeRepo, err := opts.repo.open(ctx)
	if err != nil {
		return err
	}
	defer closeRepo()
	if err := s.Preflight(); err != nil {
		return err
	}
	var disks []int32
	for _, k := range opts.Disks {
		disks = append(disks, int32(k))
	}
	f := opts.vsphere
	rep, err := orchestrator.RestoreToVSphere(ctx, s, r, orchestrator.VSphereRestoreOptions{
		VM: vm, Backup: opts.Backup, Disks: disks, Name: f.Name, Datastore: f.Datastore, Folder: f.Folder,
		ResourcePool: f.ResourcePool, PowerOn: f.PowerOn, InPlace: f.InPlace,
	})
	if rep != nil {
		for _, d := range rep.Disks {
			switch {
			case gopts.JSON:
				printJSON(stdout, "disk", d)
			case gopts.Quiet:
			case d.Mode == "full":
				fmt.Fprintf(stderr, "sendense: disk %d: whole disk written: %s\n", d.Key, d.Reason)
				fallthrough
			default:
				fmt.Fprintf(stdout, "disk %d → %s disk %d (%s): %s written, %s zeroed", d.Key, rep.Target, d.Target, d.Mode,
					units.FormatSize(d.BytesWritten), units.FormatSize(d.BytesZeroed))
				if d.Mode == "changed" {
					fmt.Fprintf(stdout, ", CBT reported %s changed", units.FormatSize(d.Changed))
				}
				fmt.Fprintln(stdout)
			}
		}
	}
	if err != nil {
		return err
	}
	if gopts.JSON {
		return printJSON(stdout, "summary", rep)
	}
	if !gopts.Quiet {
		fmt.Fprintf(stdout, "restored backup %s of %s into VM %s (%s) in %.1f s\n", rep.Backup, rep.VM, rep.Target, rep.Moref, rep.Seconds)
	}
	return nil
}
