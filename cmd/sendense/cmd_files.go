package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/guestfs"
	"github.com/sendense/capture/internal/qemu"
)

func init() {
	rootCmd.AddCommand(newFilesCommand())
}

// filesOptions are the flags of "sendense files".
type filesOptions struct {
	repo   repoDirFlag
	Backup string
	Disk   int
	FS     string
	To     string
}

func (o *filesOptions) AddFlags(fs *pflag.FlagSet) {
	o.repo.register(fs)
	o.repo.registerStaging(fs)
	fs.StringVar(&o.Backup, "backup", "", "backup `ID` to read (see 'sendense list'), or latest (the default)")
	fs.IntVar(&o.Disk, "disk", 0, "the disk with device `KEY` (default: the backup's first disk)")
	fs.StringVar(&o.FS, "fs", "", "the file system's `DEVICE` as libguestfs names it (/dev/sda1; default: the disk's only file system)")
	fs.StringVar(&o.To, "to", "", "get: extract into `DIR` (created if needed; what is extracted must not exist there)")
}

const filesLong = `List and extract files from the file systems of a backup's disk without
restoring the disk:

  sendense files VM ls PATH              list the directory PATH
  sendense files VM get PATH --to DIR    copy the file or directory PATH
                                         (recursively) into DIR

The disk is served from its checked chain as 'sendense mount' serves it
and read by libguestfs (guestfish, Debian libguestfs-tools) read-only:
any file system libguestfs knows (ext2/3/4, XFS, Btrfs, FAT, NTFS with
ntfs-3g in its appliance, LVM). guestfish starts a small appliance VM
first: about 20 s without KVM. A disk with several file systems needs
--fs (the error lists them). The backup is never written: a journal the
file system needs replayed is replayed into a throw-away overlay. See
docs/recovery.md.

With --json, ls prints one "file" object per entry (name, type, mode,
size, target of a symbolic link).

EXAMPLES
  List /etc of the latest backup of web01:
    sendense files --repo /backups web01 ls /etc

  Get a directory out of an older backup's second disk:
    sendense files --repo /backups web01 --backup 20240501T120000Z \
        --disk 2001 get /var/www --to /tmp/www

EXIT STATUS
  0    listed or extracted
  1    the backup or the file cannot be read (see the message)
  2    bad flags or arguments`

func newFilesCommand() *cobra.Command {
	var opts filesOptions
	cmd := &cobra.Command{
		Use:   "files [flags] VM ls PATH | VM get PATH --to DIR",
		Short: "List and extract files from a backup without restoring it",
		Long:  filesLong,
		Args:  cobra.ExactArgs(3),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.repo.resolve(cmd); err != nil {
				return err
			}
			return opts.check(args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFiles(cmd.Context(), opts, gopts, cmd.OutOrStdout(), args)
		},
	}
	opts.AddFlags(cmd.Flags())
	return cmd
}

func (o *filesOptions) check(args []string) error {
	switch {
	case args[1] != "ls" && args[1] != "get":
		return usageErrorf("%q: use VM ls PATH or VM get PATH --to DIR", args[1])
	case !strings.HasPrefix(args[2], "/"):
		return usageErrorf("%q: the path must be absolute (/etc/hosts)", args[2])
	case args[1] == "get" && o.To == "":
		return usageErrorf("get needs --to DIR")
	case args[1] == "ls" && o.To != "":
		return usageErrorf("--to is for get")
	}
	return nil
}

// fileEntry is one entry of files ls --json.
type fileEntry struct {
	Name   string `json:"name"`
	Type   string `json:"type"` // file, dir, symlink, other
	Mode   string `json:"mode"`
	Size   uint64 `json:"size"`
	Target string `json:"target,omitempty"`
}

func runFiles(ctx context.Context, opts filesOptions, gopts globalOptions, stdout io.Writer, args []string) error {
	vm, verb, p := args[0], args[1], path.Clean(args[2])
	// get: what it extracts must not be there (checked before the
	// appliance starts).
	dst := filepath.Join(opts.To, path.Base(p))
	if p == "/" {
		dst = opts.To
	}
	if _, err := os.Lstat(dst); err == nil && verb == "get" && p != "/" {
		return fmt.Errorf("%s exists: remove it or choose another --to", dst)
	}
	var disks []int32
	if opts.Disk != 0 {
		disks = []int32{int32(opts.Disk)}
	}
	pt, closePoint, err := opts.repo.openPoint(ctx, vm, opts.Backup, disks)
	if err != nil {
		return err
	}
	defer closePoint()
	d := pt.Disks[0]
	name := strconv.Itoa(int(d.Key))
	dmn, err := qemu.Default.StartDaemon(ctx, qemu.DaemonOptions{Exports: []qemu.Export{{Name: name, Node: d.Node}}})
	if err != nil {
		return err
	}
	defer dmn.Close()
	g, err := guestfs.Open(ctx, dmn.Socket(), name)
	if err != nil {
		return err
	}
	defer g.Close()
	fss, err := g.Filesystems()
	if err != nil {
		return err
	}
	dev := opts.FS
	if dev == "" {
		var list []string
		for _, fs := range fss {
			list = append(list, fs[0]+" ("+fs[1]+")")
		}
		switch len(fss) {
		case 0:
			return fmt.Errorf("disk %d of backup %s of VM %s has no file system libguestfs can read", d.Key, pt.Backup, pt.VM)
		case 1:
			dev = fss[0][0]
		default:
			return usageErrorf("disk %d of backup %s has several file systems: choose one with --fs: %s", d.Key, pt.Backup, strings.Join(list, ", "))
		}
	}
	if _, err := g.Do("mount-ro", dev, "/"); err != nil {
		return fmt.Errorf("mounting %s of disk %d of backup %s: %w", dev, d.Key, pt.Backup, err)
	}
	switch verb {
	case "ls":
		out, err := g.Do("ll", p)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if !gopts.JSON {
			_, err := io.WriteString(stdout, out)
			return err
		}
		for _, e := range parseLL(out) {
			printJSON(stdout, "file", e)
		}
		return nil
	default:
		if err := os.MkdirAll(opts.To, 0o700); err != nil {
			return fmt.Errorf("--to: %w", err)
		}
		if _, err := g.Do("copy-out", p, opts.To); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if !gopts.Quiet && !gopts.JSON {
			fmt.Fprintf(stdout, "extracted %s of disk %d of %s backup %s to %s\n", p, d.Key, pt.VM, pt.Backup, dst)
		}
		if gopts.JSON {
			return printJSON(stdout, "extracted", struct {
				Path string `json:"path"`
				To   string `json:"to"`
			}{p, dst})
		}
		return nil
	}
}

// parseLL reads guestfish's ll (ls -la) lines.
func parseLL(out string) []fileEntry {
	var es []fileEntry
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 9 || len(f[0]) < 10 {
			continue
		}
		// mode links uid gid size month day time name…
		rest := l
		for i := 0; i < 8; i++ {
			rest = strings.TrimLeft(rest, " ")
			if j := strings.IndexByte(rest, ' '); j >= 0 {
				rest = rest[j:]
			}
		}
		name := strings.TrimLeft(rest, " ")
		if name == "." || name == ".." {
			continue
		}
		e := fileEntry{Mode: f[0], Type: "other"}
		e.Size, _ = strconv.ParseUint(f[4], 10, 64)
		switch f[0][0] {
		case '-':
			e.Type = "file"
		case 'd':
			e.Type = "dir"
		case 'l':
			e.Type = "symlink"
			name, e.Target, _ = strings.Cut(name, " -> ")
		}
		e.Name = name
		es = append(es, e)
	}
	return es
}
