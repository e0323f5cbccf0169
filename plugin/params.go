// Package plugin is the Sendense nbdkit plugin in plain Go: its parameters,
// per-connection handles, reads and CBT-aware extents. It has no cgo: the
// nbdkit glue (plugin/nbdkit, plugin.go) and VDDK (vddk/) sit around it, so
// everything here is testable with an in-memory disk.
package plugin

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sendense/capture/internal/extent"
)

// DefaultLibdir is where VDDK is looked for when libdir= is not given.
const DefaultLibdir = "/usr/lib/vmware-vix-disklib"

// Config holds the plugin parameters (docs/nbdkit-sendense-plugin.md).
type Config struct {
	File        string // [datastore] dir/disk.vmdk, or a local path
	Libdir      string
	Server      string
	Port        uint16
	User        string
	Password    string // already resolved by the C front (+FILE, -, -FD)
	Thumbprint  string
	VM          string // moref, without the "moref=" prefix
	Snapshot    string // snapshot moref
	Transports  string
	Compression string
	ConfigFile  string // VDDK config file
	NFCHostPort uint16

	ChangeID         string // CBT changeId of the previous backup, or "*"
	ChangedAreasFile string
	DiskKey          int32
	HasDiskKey       bool

	// ChangedAreas is the parsed changed-areas= file (normal form).
	ChangedAreas extent.List
}

// params lists every key with its setter; config_help and the docs list
// the same keys.
var params = map[string]func(c *Config, v string) error{
	"file":   func(c *Config, v string) error { c.File = v; return nonEmpty(v) },
	"libdir": func(c *Config, v string) error { c.Libdir = v; return nonEmpty(v) },
	"server": func(c *Config, v string) error { c.Server = v; return nonEmpty(v) },
	"port":   func(c *Config, v string) (err error) { c.Port, err = parsePort(v); return },
	"user":   func(c *Config, v string) error { c.User = v; return nil },
	"password": func(c *Config, v string) error {
		c.Password = v
		return nil
	},
	"thumbprint": func(c *Config, v string) (err error) { c.Thumbprint, err = parseThumbprint(v); return },
	"vm":         func(c *Config, v string) (err error) { c.VM, err = parseVM(v); return },
	"snapshot":   func(c *Config, v string) error { c.Snapshot = v; return nonEmpty(v) },
	"transports": func(c *Config, v string) (err error) { c.Transports, err = parseTransports(v); return },
	"compression": func(c *Config, v string) error {
		switch strings.ToLower(v) {
		case "none", "zlib", "fastlz", "skipz":
			c.Compression = strings.ToLower(v)
			return nil
		}
		return fmt.Errorf("%q is not one of none, zlib, fastlz, skipz", v)
	},
	"config":        func(c *Config, v string) error { c.ConfigFile = v; return nonEmpty(v) },
	"nfchostport":   func(c *Config, v string) (err error) { c.NFCHostPort, err = parsePort(v); return },
	"changeid":      func(c *Config, v string) error { c.ChangeID = v; return nonEmpty(v) },
	"changed-areas": func(c *Config, v string) error { c.ChangedAreasFile = v; return nonEmpty(v) },
	"disk-key": func(c *Config, v string) error {
		k, err := strconv.ParseInt(v, 10, 32)
		if err != nil || k < 0 {
			return fmt.Errorf("%q is not a device key (a non-negative integer such as 2000)", v)
		}
		c.DiskKey, c.HasDiskKey = int32(k), true
		return nil
	},
}

// Set records one key=value parameter.
func (c *Config) Set(key, value string) error {
	set, ok := params[key]
	if !ok {
		return fmt.Errorf("unknown parameter %q (see nbdkit sendense --help)", key)
	}
	if err := set(c, value); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}

// Remote reports whether the disk is read from a vCenter/ESXi server.
func (c *Config) Remote() bool { return c.Server != "" }

// Incremental reports whether extents report changed blocks only.
func (c *Config) Incremental() bool { return c.ChangeID != "" || c.ChangedAreasFile != "" }

// Complete checks rules involving several parameters, fills defaults and
// reads the changed-areas file. It has no side effects beyond c, because
// it runs twice (the pre-fork check, then the serving process).
func (c *Config) Complete() error {
	if c.File == "" {
		return errors.New("missing parameter: file (the disk to serve, e.g. file='[datastore1] vm/vm.vmdk')")
	}
	if c.Libdir == "" {
		c.Libdir = DefaultLibdir
	}
	if c.Remote() {
		for _, m := range []struct {
			missing bool
			name    string
		}{
			{c.User == "", "user"},
			{c.Password == "", "password"},
			{c.VM == "", "vm"},
		} {
			if m.missing {
				return fmt.Errorf("server=%s given, missing parameter: %s", c.Server, m.name)
			}
		}
	} else {
		if strings.HasPrefix(c.File, "[") {
			return fmt.Errorf("file=%s names a datastore, which needs server=, user=, password= and vm=", c.File)
		}
		if !filepath.IsAbs(c.File) {
			return fmt.Errorf("file=%s: a local disk must be an absolute path", c.File)
		}
		if c.ChangeID != "" {
			return errors.New("changeid= needs a server (server=, user=, password=, vm=): changed blocks are queried from vCenter/ESXi")
		}
	}
	if c.ChangeID != "" && c.ChangedAreasFile != "" {
		return errors.New("changeid= and changed-areas= are mutually exclusive")
	}
	if c.ChangeID != "" {
		if c.Snapshot == "" {
			return errors.New("changeid= needs snapshot=: changed blocks are queried for a snapshot")
		}
		if c.Thumbprint == "" {
			return errors.New("changeid= needs thumbprint= to verify the server's certificate before logging in")
		}
	}
	if c.ChangedAreasFile != "" {
		areas, err := ReadChangedAreas(c.ChangedAreasFile)
		if err != nil {
			return err
		}
		c.ChangedAreas = areas
	}
	return nil
}

func nonEmpty(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	return nil
}

func parsePort(v string) (uint16, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a TCP port (1-65535)", v)
	}
	return uint16(n), nil
}

// parseVM accepts nbdkit-vddk's "moref=vm-42" form and a bare moref.
func parseVM(v string) (string, error) {
	if strings.Contains(v, "=") {
		moref, ok := strings.CutPrefix(v, "moref=")
		if !ok {
			return "", fmt.Errorf("%q: expected moref=<moref>, e.g. vm=moref=vm-42", v)
		}
		v = moref
	}
	if v == "" {
		return "", errors.New("empty moref (expected vm=moref=vm-42)")
	}
	return v, nil
}

// parseThumbprint accepts a SHA-1 thumbprint as 20 hex bytes separated by
// colons (any case) and returns it in VDDK's upper-case colon form.
func parseThumbprint(v string) (string, error) {
	parts := strings.Split(v, ":")
	bad := len(parts) != 20
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 16, 8); len(p) != 2 || err != nil {
			bad = true
		}
	}
	if bad {
		return "", fmt.Errorf("%q is not a SHA-1 thumbprint (20 hex bytes separated by colons, e.g. 9B:5F:…:21)", v)
	}
	return strings.ToUpper(v), nil
}

var transportModes = map[string]bool{"file": true, "san": true, "hotadd": true, "nbd": true, "nbdssl": true}

func parseTransports(v string) (string, error) {
	for _, m := range strings.Split(v, ":") {
		if !transportModes[m] {
			return "", fmt.Errorf("unknown transport mode %q in %q (modes: file, san, hotadd, nbd, nbdssl, separated by colons)", m, v)
		}
	}
	return v, nil
}
