package plugin

import (
	"fmt"
	"log/slog"

	"github.com/sendense/capture/vddk"
)

// VDDKBackend reads disks through VMware's VixDiskLib, loaded with dlopen
// from libdir= after nbdkit's fork.
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
	slog.Debug("VDDK loaded", "library", lib.Path())
	return nil
}

// Open connects (ConnectEx, read-only, with the snapshot moref and
// transports) and opens the disk read-only.
func (b *VDDKBackend) Open(c *Config) (Disk, error) {
	var flags vddk.OpenFlags
	if c.Compression != "" {
		flags, _ = vddk.ParseCompression(c.Compression)
	}
	conn, err := b.lib.Connect(vddk.ConnectParams{
		VM:          c.VM,
		Server:      c.Server,
		Port:        uint32(c.Port),
		User:        c.User,
		Password:    c.Password,
		Thumbprint:  c.Thumbprint,
		NFCHostPort: uint32(c.NFCHostPort),
		Snapshot:    c.Snapshot,
		Transports:  c.Transports,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", serverName(c), err)
	}
	disk, err := conn.Open(c.File, flags|vddk.OpenReadOnly)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open %s: %w", c.File, err)
	}
	slog.Debug("disk opened", "file", c.File, "size", disk.Size(), "transport", disk.TransportMode())
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
