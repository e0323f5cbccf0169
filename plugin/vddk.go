package plugin

import (
	"fmt"
	"log/slog"

	"github.com/sendense/capture/vddk"
)

// VDDKBackend reads and writes disks through VMware's VixDiskLib, loaded
// with dlopen from libdir= after nbdkit's fork (the C front has checked,
// before the fork, that it loads).
type VDDKBackend struct {
	lib *vddk.Library
}

// Check verifies that a VDDK exists under libdir and that compression= is
// valid, without loading anything.
func (b *VDDKBackend) Check(c *Config) error {
	if _, err := vddk.Find(c.Libdir); err != nil {
		return fmt.Errorf("libdir=%s: %w", c.Libdir, err)
	}
	if c.Compression != "" {
		if _, err := vddk.ParseCompression(c.Compression); err != nil {
			return fmt.Errorf("compression=%s: %w", c.Compression, err)
		}
	}
	return nil
}

// Start loads and initialises VDDK; InitEx starts threads, so this runs in
// the serving process only.
func (b *VDDKBackend) Start(c *Config) error {
	vddk.SetLogger(func(level, msg string) { slog.Debug("vddk: "+msg, "level", level) })
	lib, err := vddk.Load(c.Libdir)
	if err != nil {
		return fmt.Errorf("libdir=%s: %w", c.Libdir, err)
	}
	if err := lib.Init(c.ConfigFile); err != nil {
		return err
	}
	b.lib = lib
	slog.Debug("VDDK loaded", "library", lib.Path(), "version", lib.Version())
	return nil
}

// Library is the loaded VDDK (nil before Start).
func (b *VDDKBackend) Library() *vddk.Library { return b.lib }

func (b *VDDKBackend) connect(c *Config, readonly bool) (*vddk.Connection, error) {
	conn, err := b.lib.Connect(vddk.ConnectParams{
		VM:          c.VMXSpec,
		Server:      c.Server,
		Port:        uint32(c.Port),
		User:        c.User,
		Password:    c.Password,
		Cookie:      c.Cookie,
		Thumbprint:  c.Thumbprint,
		NFCHostPort: uint32(c.NFCHostPort),
		Snapshot:    c.Snapshot,
		Transports:  c.Transports,
		ReadOnly:    readonly,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", serverName(c), err)
	}
	return conn, nil
}

// Create makes the local disk of create=true with VixDiskLib_Create on a
// connection of its own.
func (b *VDDKBackend) Create(c *Config) error {
	conn, err := b.connect(c, false)
	if err != nil {
		return err
	}
	defer conn.Close()
	err = conn.Create(c.File, vddk.CreateParams{
		Type: c.CreateType, Adapter: c.CreateAdapter, HWVersion: c.CreateHWVersion, Size: c.CreateSize,
	})
	if err != nil {
		return fmt.Errorf("create %s: %w", c.File, err)
	}
	return nil
}

// Open connects (ConnectEx with readOnly, the snapshot moref and the
// transports) and opens the disk with the flags of single-link=,
// unbuffered= and compression=, read-only when asked.
func (b *VDDKBackend) Open(c *Config, readonly bool) (Disk, error) {
	var flags vddk.OpenFlags
	if c.Compression != "" {
		flags, _ = vddk.ParseCompression(c.Compression)
	}
	if c.SingleLink {
		flags |= vddk.OpenSingleLink
	}
	if c.Unbuffered {
		flags |= vddk.OpenUnbuffered
	}
	if readonly {
		flags |= vddk.OpenReadOnly
	}
	conn, err := b.connect(c, readonly)
	if err != nil {
		return nil, err
	}
	disk, err := conn.Open(c.File, flags)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open %s: %w", c.File, err)
	}
	slog.Debug("disk opened", "file", c.File, "size", disk.Size(), "transport", disk.TransportMode(), "readonly", readonly)
	return &vddkDisk{Disk: disk, conn: conn}, nil
}

// Stop calls VixDiskLib_Exit.
func (b *VDDKBackend) Stop() {
	if b.lib != nil {
		b.lib.Exit()
	}
}

func serverName(c *Config) string {
	if c.Server == "" {
		return "local VDDK"
	}
	return c.Server
}

// vddkDisk closes its VDDK connection with the disk.
type vddkDisk struct {
	vddk.Disk
	conn *vddk.Connection
}

func (d *vddkDisk) Close() error {
	err := d.Disk.Close()
	if cerr := d.conn.Close(); err == nil {
		err = cerr
	}
	return err
}
