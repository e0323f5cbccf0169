// Package plugin is the Sendense nbdkit plugin in plain Go: its parameters,
// per-connection handles, reads, writes and CBT-aware extents. It has no
// cgo: the nbdkit glue (plugin/nbdkit, plugin.go) and VDDK (vddk/) sit
// around it, so everything here is testable with an in-memory disk.
package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/vddk"
)

// DefaultLibdir is where VDDK is looked for when libdir= is not given.
const DefaultLibdir = "/usr/lib/vmware-vix-disklib"

// Config holds the plugin parameters (docs/nbdkit-sendense-plugin.md):
// every parameter of nbdkit-vddk-plugin 1.32 with its meaning, and ours.
type Config struct {
	File        string // [datastore] dir/disk.vmdk, or a local path
	Libdir      string
	Server      string
	Port        uint16 // 0: not given (VDDK's default, 443)
	User        string
	Password    string // already resolved by the C front (+FILE, -, -FD); may be empty
	HasPassword bool   // password= was given (even empty)
	Cookie      string // vSphere session cookie (VIXDISKLIB_CRED_SESSIONID)
	Thumbprint  string // passed to VDDK as given
	VMXSpec     string // vm= as given ("moref=vm-42"); a bare moref gets "moref="
	VM          string // the moref of vm=moref=X or vm=X, "" for other vmxSpec forms
	Snapshot    string // snapshot moref
	Transports  string
	Compression string
	ConfigFile  string // VDDK config file
	NFCHostPort uint16 // 0: not given (VDDK's default, 902)
	SingleLink  bool   // VIXDISKLIB_FLAG_OPEN_SINGLE_LINK
	Unbuffered  bool   // VIXDISKLIB_FLAG_OPEN_UNBUFFERED
	NoReexec    bool   // the C front does not re-execute nbdkit
	ReadOnly    bool   // readonly=true: the export is read-only even without -r

	Create          bool // create=true: VixDiskLib_Create before the first open
	CreateSize      uint64
	CreateType      vddk.DiskType
	CreateAdapter   vddk.AdapterType
	CreateHWVersion uint16

	ChangeID         string // CBT changeId of the previous backup, or "*"
	ChangedAreasFile string
	DiskKey          int32
	HasDiskKey       bool

	// ChangedAreas is the parsed changed-areas= file (normal form).
	ChangedAreas extent.List
}

// Names of the create-type=, create-adapter-type= and create-hwversion=
// values, as nbdkit-vddk-plugin spells them.
var (
	createTypes = map[string]vddk.DiskType{
		"monolithic-sparse": vddk.DiskMonolithicSparse, "monolithic-flat": vddk.DiskMonolithicFlat,
		"split-sparse": vddk.DiskSplitSparse, "split-flat": vddk.DiskSplitFlat,
		"vmfs-flat": vddk.DiskVMFSFlat, "stream-optimized": vddk.DiskStreamOptimized,
		"vmfs-thin": vddk.DiskVMFSThin, "vmfs-sparse": vddk.DiskVMFSSparse,
	}
	createAdapters = map[string]vddk.AdapterType{
		"ide": vddk.AdapterIDE, "scsi-buslogic": vddk.AdapterSCSIBusLogic, "scsi-lsilogic": vddk.AdapterSCSILSILogic,
	}
	createHWVersions = map[string]uint16{
		"workstation4": vddk.HWVersionWorkstation4, "workstation5": vddk.HWVersionWorkstation5,
		"workstation6": vddk.HWVersionWorkstation6, "esx30": vddk.HWVersionESX30, "esx4x": vddk.HWVersionESX4x,
		"esx50": vddk.HWVersionESX50, "esx51": vddk.HWVersionESX51, "esx55": vddk.HWVersionESX55,
		"esx60": vddk.HWVersionESX60, "esx65": vddk.HWVersionESX65,
	}
)

// params lists every key with its setter; config_help and the docs list
// the same keys.
var params = map[string]func(c *Config, v string) error{
	"file":   func(c *Config, v string) error { c.File = v; return nonEmpty(v) },
	"libdir": func(c *Config, v string) error { c.Libdir = v; return nonEmpty(v) },
	"server": func(c *Config, v string) error { c.Server = v; return nonEmpty(v) },
	"port":   func(c *Config, v string) (err error) { c.Port, err = parsePort(v); return },
	"user":   func(c *Config, v string) error { c.User = v; return nil },
	"password": func(c *Config, v string) error {
		c.Password, c.HasPassword = v, true
		return nil
	},
	"cookie":      func(c *Config, v string) error { c.Cookie = v; return nonEmpty(v) },
	"thumbprint":  func(c *Config, v string) error { c.Thumbprint = v; return nonEmpty(v) },
	"vm":          func(c *Config, v string) (err error) { c.VMXSpec, c.VM, err = parseVM(v); return },
	"snapshot":    func(c *Config, v string) error { c.Snapshot = v; return nonEmpty(v) },
	"transports":  func(c *Config, v string) (err error) { c.Transports, err = parseTransports(v); return },
	"compression": func(c *Config, v string) (err error) { c.Compression, err = parseCompression(v); return },
	"config":      func(c *Config, v string) error { c.ConfigFile = v; return nonEmpty(v) },
	"nfchostport": func(c *Config, v string) (err error) { c.NFCHostPort, err = parsePort(v); return },
	"single-link": func(c *Config, v string) (err error) { c.SingleLink, err = parseBool(v); return },
	"unbuffered":  func(c *Config, v string) (err error) { c.Unbuffered, err = parseBool(v); return },
	"noreexec":    func(c *Config, v string) (err error) { c.NoReexec, err = parseBool(v); return },
	"readonly":    func(c *Config, v string) (err error) { c.ReadOnly, err = parseBool(v); return },
	"vimapiver":   func(c *Config, v string) error { return nil }, // ignored, as nbdkit-vddk-plugin does
	"create":      func(c *Config, v string) (err error) { c.Create, err = parseBool(v); return },
	"create-size": func(c *Config, v string) error {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 || n%vddk.SectorSize != 0 {
			return fmt.Errorf("%q is not a size in bytes greater than zero and a multiple of 512 (e.g. 10G)", v)
		}
		c.CreateSize = n
		return nil
	},
	"create-type": func(c *Config, v string) error {
		t, ok := createTypes[v]
		if !ok {
			return fmt.Errorf("%q is not one of %s", v, keys(createTypes))
		}
		c.CreateType = t
		return nil
	},
	"create-adapter-type": func(c *Config, v string) error {
		a, ok := createAdapters[v]
		if !ok {
			return fmt.Errorf("%q is not one of %s", v, keys(createAdapters))
		}
		c.CreateAdapter = a
		return nil
	},
	"create-hwversion": func(c *Config, v string) error {
		if h, ok := createHWVersions[v]; ok {
			c.CreateHWVersion = h
			return nil
		}
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return fmt.Errorf("%q is not one of %s or a number", v, keys(createHWVersions))
		}
		if n == 0 {
			// nbdkit-vddk-plugin hands 0 to VDDK; no virtual hardware
			// has version 0 (the oldest, workstation4, is 3).
			return fmt.Errorf("%q is not a virtual hardware version (the oldest, workstation4, is 3)", v)
		}
		c.CreateHWVersion = uint16(n)
		return nil
	},
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

// Remote reports whether the disk is on a vCenter/ESXi server. As in
// nbdkit-vddk-plugin, any of vm=, server=, user=, password=, cookie=,
// thumbprint=, port= or nfchostport= asks for a remote connection (which
// then needs server=, user=, password= and vm=).
func (c *Config) Remote() bool {
	return c.VMXSpec != "" || c.Server != "" || c.User != "" || c.HasPassword || c.Cookie != "" ||
		c.Thumbprint != "" || c.Port != 0 || c.NFCHostPort != 0
}

// Incremental reports whether extents report changed blocks only.
func (c *Config) Incremental() bool { return c.ChangeID != "" || c.ChangedAreasFile != "" }

// ForcedReadOnly reports why the export is read-only whatever nbdkit's
// -r says ("" when it is writable): readonly=true; a snapshot, which is
// immutable; and an incremental export, which exists to be copied.
func (c *Config) ForcedReadOnly() string {
	switch {
	case c.ReadOnly:
		return "readonly=true"
	case c.Snapshot != "":
		return "snapshot=" + c.Snapshot + " (a snapshot is read-only)"
	case c.ChangeID != "":
		return "changeid= (an incremental export is read-only)"
	case c.ChangedAreasFile != "":
		return "changed-areas= (an incremental export is read-only)"
	}
	return ""
}

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
		// VDDK crashes on NULL fields it expects: the same test as
		// nbdkit-vddk-plugin (and VMware's sample program).
		for _, m := range []struct {
			missing bool
			name    string
		}{
			{c.Server == "", "server"},
			{c.User == "", "user"},
			{!c.HasPassword, "password"},
			{c.VMXSpec == "", "vm"},
		} {
			if m.missing {
				return fmt.Errorf("remote connection requested (by %s), missing parameter: %s", c.remoteBy(), m.name)
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
	if err := c.completeCreate(); err != nil {
		return err
	}
	if c.ChangeID != "" && c.ChangedAreasFile != "" {
		return errors.New("changeid= and changed-areas= are mutually exclusive")
	}
	if c.SingleLink && c.Incremental() {
		return errors.New("single-link=true cannot serve an incremental export (changeid=, changed-areas=): its unallocated blocks may hold data in a parent link")
	}
	if c.ChangeID != "" {
		if c.Snapshot == "" {
			return errors.New("changeid= needs snapshot=: changed blocks are queried for a snapshot")
		}
		if c.Thumbprint == "" {
			return errors.New("changeid= needs thumbprint= to verify the server's certificate before logging in")
		}
		if _, err := ParseThumbprint(c.Thumbprint); err != nil {
			return fmt.Errorf("thumbprint: %w (changeid= verifies the vSphere API's certificate with it)", err)
		}
		if c.VM == "" {
			return fmt.Errorf("changeid= needs vm=moref=<moref> (vm=%s is not a moref)", c.VMXSpec)
		}
		if c.Cookie != "" {
			return errors.New("changeid= logs in to the vSphere API with user= and password=: drop cookie=")
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

// completeCreate checks the create family: as in nbdkit-vddk-plugin,
// create=true makes a local disk (VDDK cannot create remote ones) of
// create-size=, which is required; the other create-* default to
// monolithic-sparse, scsi-buslogic and workstation5. Unlike
// nbdkit-vddk-plugin it never replaces an existing file.
func (c *Config) completeCreate() error {
	if !c.Create {
		return nil
	}
	if c.CreateType == 0 {
		c.CreateType = vddk.DiskMonolithicSparse
	}
	if c.CreateAdapter == 0 {
		c.CreateAdapter = vddk.AdapterSCSIBusLogic
	}
	if c.CreateHWVersion == 0 {
		c.CreateHWVersion = vddk.HWVersionWorkstation5
	}
	switch {
	case c.Remote():
		return errors.New("create=true can only create local VMDK files (VDDK's VixDiskLib_Create makes hosted disks): drop server=, vm=, user=, password= or create=true")
	case c.CreateSize == 0:
		return errors.New("create=true needs create-size= (the virtual size of the new disk, e.g. create-size=10G)")
	case c.ForcedReadOnly() != "":
		return fmt.Errorf("create=true makes a disk to write, but the export is read-only: %s", c.ForcedReadOnly())
	}
	if _, err := os.Lstat(c.File); err == nil {
		return fmt.Errorf("create=true: %s already exists; remove it first, or drop create=true to write into it", c.File)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("create=true: %w", err)
	}
	return nil
}

// remoteBy names the parameters that made the connection remote.
func (c *Config) remoteBy() string {
	var by []string
	for _, p := range []struct {
		set  bool
		name string
	}{
		{c.VMXSpec != "", "vm="}, {c.Server != "", "server="}, {c.User != "", "user="},
		{c.HasPassword, "password="}, {c.Cookie != "", "cookie="}, {c.Thumbprint != "", "thumbprint="},
		{c.Port != 0, "port="}, {c.NFCHostPort != 0, "nfchostport="},
	} {
		if p.set {
			by = append(by, p.name)
		}
	}
	return strings.Join(by, ", ")
}

func nonEmpty(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	return nil
}

// parsePort accepts 0-65535 (0 is VDDK's default, as in nbdkit-vddk-plugin).
func parsePort(v string) (uint16, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a TCP port (1-65535)", v)
	}
	return uint16(n), nil
}

// parseBool accepts what nbdkit_parse_bool accepts (the C front passes
// every boolean through it first).
func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "true", "t", "yes", "y", "on":
		return true, nil
	case "0", "false", "f", "no", "n", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (true or false)", v)
}

// parseVM accepts nbdkit-vddk's "moref=vm-42" form, a bare moref, and any
// other vmxSpec VDDK takes (passed as is). It returns the vmxSpec and the
// moref ("" when the spec is not a moref).
func parseVM(v string) (spec, moref string, err error) {
	switch {
	case v == "" || v == "moref=":
		return "", "", errors.New("empty moref (expected vm=moref=vm-42)")
	case strings.HasPrefix(v, "moref="):
		return v, strings.TrimPrefix(v, "moref="), nil
	case !strings.Contains(v, "="):
		return "moref=" + v, v, nil
	}
	return v, "", nil
}

// ParseThumbprint checks a SHA-1 thumbprint, 20 hex bytes separated by
// colons (any case), and returns it in upper case. The thumbprint= value
// goes to VDDK as given; this check is for the vSphere API login of
// changeid=.
func ParseThumbprint(v string) (string, error) {
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

func parseCompression(v string) (string, error) {
	if _, err := vddk.ParseCompression(v); err != nil || v == "" {
		return "", fmt.Errorf("%q is not one of none, zlib, fastlz, skipz", v)
	}
	return strings.ToLower(v), nil
}

func keys[V any](m map[string]V) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return strings.Join(ks, ", ")
}
