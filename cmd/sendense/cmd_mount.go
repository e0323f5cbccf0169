package main

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/units"
)

func init() {
	rootCmd.AddCommand(newMountCommand())
}

// mountOptions are the flags of "sendense mount".
type mountOptions struct {
	repo     repoDirFlag
	Backup   string
	Disks    []int
	Listen   string
	Writable bool
	TLSCreds string
}

func (o *mountOptions) AddFlags(fs *pflag.FlagSet) {
	o.repo.register(fs)
	o.repo.registerStaging(fs)
	fs.StringVar(&o.Backup, "backup", "", "backup `ID` to serve (see 'sendense list'), or latest (the default)")
	fs.IntSliceVar(&o.Disks, "disk", nil, "serve only the disk with device `KEY` (repeatable; default: every disk)")
	fs.StringVar(&o.Listen, "listen", "", "where to listen: unix:`PATH` (a new socket, mode 0600) or tcp:HOST:PORT (default: a socket in a new private directory)")
	fs.BoolVar(&o.Writable, "writable", false, "accept writes into a throw-away copy-on-write overlay (the repository is never written; the writes are lost when mount ends)")
	fs.StringVar(&o.TLSCreds, "tls-creds", "", "require TLS with the x509 files in `DIR` (ca-cert.pem, server-cert.pem, server-key.pem); required to listen on TCP off loopback")
}

// Check validates the options.
func (o *mountOptions) Check() error {
	if o.Listen == "" {
		return nil
	}
	kind, addr, err := qemu.ParseListen(o.Listen)
	if err != nil {
		return usageErrorf("--listen: %v", err)
	}
	if kind == "tcp" && !qemu.IsLoopback(addr) && o.TLSCreds == "" {
		return usageErrorf("--listen %s: listening on TCP off loopback needs TLS: give --tls-creds DIR (or listen on 127.0.0.1, [::1] or a unix socket)", o.Listen)
	}
	return nil
}

const mountLong = `Serve a backup (restore point) of VM over NBD, straight from its qcow2
chain, without copying it first: one export per disk, named by its
device key (2000, 2001, …). It stays in the foreground, printing the NBD
URI of each export, until interrupted (SIGINT or SIGTERM); then the
exports are gone.

The exports are read-only unless --writable: then writes go to a
throw-away copy-on-write overlay in a private temporary directory (a
hypervisor can boot the VM from it: instant recovery); the repository is
never written and the writes are lost when mount ends.

Before serving, every disk's chain is checked as restore checks it (every
image there, its qcow2 header as its manifest says) and each image is
opened only through the manifests' names. The data itself is not checked
against the manifests' SHA-256s while it is served: 'sendense verify'
does that. The VM directory's read lock is held while serving, so a prune
waits. Served by qemu-storage-daemon (Debian qemu-system-common).

With --repo ssh://… each chain is served by qemu-nbd on the control plane
and read through the SSH tunnel; the exports are on this machine. With
--repo s3://NAME/ the point is downloaded into a private staging directory
first (docs/offsite.md).

On TCP, listening on anything but a loopback address needs TLS
(--tls-creds; the URIs are then nbds://). A unix socket is made mode
0600. See docs/recovery.md.

With --json each export is one "export" object per line (disk, label,
capacity, uri, writable), then "ready".

EXAMPLES
  Serve the latest backup of web01 and read it:
    sendense mount --repo /backups web01 --listen unix:/run/web01.sock
    nbdinfo 'nbd+unix:///2000?socket=/run/web01.sock'

  Boot-ready writable exports on the network, with TLS:
    sendense mount --repo /backups web01 --backup 20240501T120000Z \
        --writable --listen tcp:0.0.0.0:10809 --tls-creds /etc/sendense/tls

EXIT STATUS
  0    served until interrupted
  1    the point cannot be served (a missing or damaged image or
       manifest, the listen address is in use, qemu-storage-daemon failed)
  2    bad flags or arguments`

func newMountCommand() *cobra.Command {
	var opts mountOptions
	cmd := &cobra.Command{
		Use:   "mount [flags] VM",
		Short: "Serve a backup's disks over NBD without restoring them",
		Long:  mountLong,
		Args:  cobra.ExactArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.repo.resolve(cmd); err != nil {
				return err
			}
			return opts.Check()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMount(cmd.Context(), opts, gopts, cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	opts.AddFlags(cmd.Flags())
	return cmd
}

// mountedExport is one export printed by mount.
type mountedExport struct {
	VM       string `json:"vm"`
	Backup   string `json:"backup"`
	Disk     int32  `json:"disk"`
	Label    string `json:"label,omitempty"`
	Capacity uint64 `json:"capacity"`
	URI      string `json:"uri"`
	Writable bool   `json:"writable"`
}

func runMount(ctx context.Context, opts mountOptions, gopts globalOptions, stdout, stderr io.Writer, args []string) error {
	if err := opts.Check(); err != nil {
		return err
	}
	var disks []int32
	for _, k := range opts.Disks {
		disks = append(disks, int32(k))
	}
	p, closePoint, err := opts.repo.openPoint(ctx, args[0], opts.Backup, disks)
	if err != nil {
		return err
	}
	defer closePoint()
	do := qemu.DaemonOptions{Listen: opts.Listen, TLSDir: opts.TLSCreds}
	for _, d := range p.Disks {
		do.Exports = append(do.Exports, qemu.Export{Name: strconv.Itoa(int(d.Key)), Node: d.Node, Capacity: d.Capacity, Writable: opts.Writable})
	}
	dmn, err := qemu.Default.StartDaemon(ctx, do)
	if err != nil {
		return fmt.Errorf("serving backup %s of VM %s: %w", p.Backup, p.VM, err)
	}
	for _, d := range p.Disks {
		e := mountedExport{VM: p.VM, Backup: p.Backup, Disk: d.Key, Label: d.Label, Capacity: d.Capacity,
			URI: dmn.URI(strconv.Itoa(int(d.Key))), Writable: opts.Writable}
		switch {
		case gopts.JSON:
			printJSON(stdout, "export", e)
		default:
			mode := "read-only"
			if e.Writable {
				mode = "writable overlay"
			}
			fmt.Fprintf(stdout, "disk %d of %s backup %s (%s, %s): %s\n", e.Disk, e.VM, e.Backup, units.FormatSize(e.Capacity), mode, e.URI)
		}
	}
	if gopts.JSON {
		printJSON(stdout, "ready", struct {
			VM     string `json:"vm"`
			Backup string `json:"backup"`
		}{p.VM, p.Backup})
	} else if !gopts.Quiet {
		fmt.Fprintln(stderr, "serving until interrupted (Ctrl-C)")
	}
	select {
	case <-ctx.Done():
		if err := dmn.Close(); err != nil {
			return fmt.Errorf("qemu-storage-daemon: %w", err)
		}
		return nil
	case <-dmn.Done():
		err := dmn.Close()
		return fmt.Errorf("qemu-storage-daemon serving backup %s of VM %s exited: %v", p.Backup, p.VM, err)
	}
}
