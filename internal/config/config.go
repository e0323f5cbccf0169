// Package config reads sendense.toml and the SENDENSE_* environment.
//
// Precedence, lowest first: built-in defaults, SENDENSE_* environment
// variables, the configuration file, command-line flags (applied by the
// CLI). Unknown keys in the file are errors naming the key and its line.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/sendense/capture/internal/units"
)

// Config is the whole configuration. Field docs are the user docs of the
// keys (examples/sendense.toml shows them all).
type Config struct {
	VCenter     VCenter     `toml:"vcenter"`
	VDDK        VDDK        `toml:"vddk"`
	CBT         CBT         `toml:"cbt"`
	Backup      Backup      `toml:"backup"`
	Copy        Copy        `toml:"copy"`
	Repository  Repository  `toml:"repository"`
	Tunnel      Tunnel      `toml:"tunnel"`
	API         API         `toml:"api"`
	Performance Performance `toml:"performance"`
	Offsite     []Offsite   `toml:"offsite"` // [[offsite]] S3 targets (offsite.go)

	// File is the configuration file read, if any.
	File string `toml:"-"`
}

// VCenter says how to reach vCenter or ESXi.
type VCenter struct {
	URL          string `toml:"url"`           // https://vcenter.example.com/sdk, or a host name
	User         string `toml:"user"`          // e.g. backup@vsphere.local
	PasswordFile string `toml:"password_file"` // file whose first line is the password
	PasswordEnv  string `toml:"password_env"`  // name of an environment variable holding it
	Thumbprint   string `toml:"thumbprint"`    // SHA-1 thumbprint of the server certificate
	CAFile       string `toml:"ca_file"`       // PEM CA bundle to verify the certificate
	Insecure     bool   `toml:"insecure"`      // accept an unverified certificate (never the default)
}

// VDDK configures the plugin's VDDK.
type VDDK struct {
	Libdir     string `toml:"libdir"`     // VDDK directory (lib64/libvixDiskLib.so.N below it)
	Transports string `toml:"transports"` // e.g. "nbdssl:nbd"
	Config     string `toml:"config"`     // VDDK configuration file
}

// CBT configures Changed Block Tracking handling.
type CBT struct {
	AutoEnable bool `toml:"auto_enable"` // enable CBT on VMs that lack it (the first backup is then full)
}

// Backup configures backup jobs.
type Backup struct {
	Quiesce            bool `toml:"quiesce"`              // quiesced snapshots through VMware Tools
	MaxConcurrentDisks int  `toml:"max_concurrent_disks"` // disks of one VM copied at once
	MaxConcurrentVMs   int  `toml:"max_concurrent_vms"`   // VMs backed up at once
}

// Copy configures the copy engine.
type Copy struct {
	Connections int    `toml:"connections"`
	Requests    int    `toml:"requests"`
	RequestSize string `toml:"request_size"` // e.g. "256K"
	Rate        string `toml:"rate"`         // bytes per second, e.g. "100M"; "" or "0" = unlimited
}

// Repository is the backup repository.
type Repository struct {
	Path string `toml:"path"`
}

// Tunnel configures the SSH tunnel to the control plane.
type Tunnel struct {
	Host        string `toml:"host"`
	Port        int    `toml:"port"`
	User        string `toml:"user"`
	Key         string `toml:"key"`
	KnownHosts  string `toml:"known_hosts"`
	Connections int    `toml:"connections"`
	// APIForward is the address on the control plane where `sendense
	// serve` exposes its API through the tunnel (an SSH reverse forward).
	APIForward string `toml:"api_forward"`
}

// API configures `sendense serve`, the capture agent's HTTP API.
type API struct {
	Listen    string `toml:"listen"`     // default 127.0.0.1:8081
	TokenFile string `toml:"token_file"` // bearer token clients must send
	TLSCert   string `toml:"tls_cert"`   // serve HTTPS (needed for non-loopback addresses)
	TLSKey    string `toml:"tls_key"`
	StateDir  string `toml:"state_dir"` // job history
}

// Performance holds the agent's scheduling knobs (the product sheet's
// performance section).
type Performance struct {
	MaxConcurrentBackups int    `toml:"max_concurrent_backups"` // backup jobs running at once (sendense serve)
	BackupWindow         string `toml:"backup_window"`          // "22:00-06:00": jobs start only inside it unless forced
	BandwidthLimitMbps   int    `toml:"bandwidth_limit_mbps"`   // megabits per second per copy; [copy] rate wins when set
}

// Defaults returns the built-in defaults.
func Defaults() *Config {
	return &Config{
		VDDK:        VDDK{Libdir: "/usr/lib/vmware-vix-disklib"},
		Backup:      Backup{MaxConcurrentDisks: 4, MaxConcurrentVMs: 1},
		Tunnel:      Tunnel{Port: 443, Connections: 1, APIForward: "127.0.0.1:10808"},
		API:         API{Listen: "127.0.0.1:8081"},
		Performance: Performance{MaxConcurrentBackups: 1},
	}
}

// Env lists the SENDENSE_* variables read as defaults below the file.
var Env = []struct {
	Name string
	Doc  string
	set  func(c *Config, v string) error
}{
	{"SENDENSE_VCENTER_URL", "vCenter/ESXi URL ([vcenter] url)", func(c *Config, v string) error { c.VCenter.URL = v; return nil }},
	{"SENDENSE_VCENTER_USER", "vCenter user ([vcenter] user)", func(c *Config, v string) error { c.VCenter.User = v; return nil }},
	{"SENDENSE_VCENTER_PASSWORD_FILE", "file holding the vCenter password ([vcenter] password_file)", func(c *Config, v string) error { c.VCenter.PasswordFile = v; return nil }},
	{"SENDENSE_VCENTER_THUMBPRINT", "SHA-1 thumbprint of the vCenter certificate ([vcenter] thumbprint)", func(c *Config, v string) error { c.VCenter.Thumbprint = v; return nil }},
	{"SENDENSE_VCENTER_CA_FILE", "CA bundle for the vCenter certificate ([vcenter] ca_file)", func(c *Config, v string) error { c.VCenter.CAFile = v; return nil }},
	{"SENDENSE_VDDK_LIBDIR", "VDDK directory ([vddk] libdir)", func(c *Config, v string) error { c.VDDK.Libdir = v; return nil }},
	{"SENDENSE_REPOSITORY", "backup repository ([repository] path)", func(c *Config, v string) error { c.Repository.Path = v; return nil }},
}

// Load returns the configuration from the defaults, the environment (read
// through getenv) and, if path is not empty, the TOML file at path.
func Load(path string, getenv func(string) string) (*Config, error) {
	c := Defaults()
	for _, e := range Env {
		if v := getenv(e.Name); v != "" {
			if err := e.set(c, v); err != nil {
				return nil, fmt.Errorf("%s: %w", e.Name, err)
			}
		}
	}
	if path == "" {
		return c, nil
	}
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	md, err := toml.Decode(string(text), c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("config %s line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		key := u[0].String()
		return nil, fmt.Errorf("config %s line %d: unknown key %q (see examples/sendense.toml for the keys)", path, keyLine(string(text), u[0]), key)
	}
	c.File = path
	return c, c.Check()
}

// Check validates values that do not depend on the command run.
func (c *Config) Check() error {
	where := "config"
	if c.File != "" {
		where = "config " + c.File
	}
	if c.VCenter.PasswordFile != "" && c.VCenter.PasswordEnv != "" {
		return fmt.Errorf("%s: [vcenter] password_file and password_env are mutually exclusive", where)
	}
	if c.Backup.MaxConcurrentDisks < 1 || c.Backup.MaxConcurrentVMs < 1 {
		return fmt.Errorf("%s: [backup] max_concurrent_disks and max_concurrent_vms must be at least 1", where)
	}
	if c.Copy.Connections < 0 || c.Copy.Requests < 0 {
		return fmt.Errorf("%s: [copy] connections and requests must not be negative", where)
	}
	if _, err := c.Copy.RequestSizeBytes(); err != nil {
		return fmt.Errorf("%s: [copy] request_size: %w", where, err)
	}
	if _, err := c.Copy.RateBytes(); err != nil {
		return fmt.Errorf("%s: [copy] rate: %w", where, err)
	}
	if c.Performance.MaxConcurrentBackups < 1 {
		return fmt.Errorf("%s: [performance] max_concurrent_backups must be at least 1", where)
	}
	if c.Performance.BandwidthLimitMbps < 0 {
		return fmt.Errorf("%s: [performance] bandwidth_limit_mbps must not be negative", where)
	}
	return c.checkOffsite(where)
}

// RequestSizeBytes parses request_size (0 if unset).
func (c Copy) RequestSizeBytes() (int, error) {
	if c.RequestSize == "" {
		return 0, nil
	}
	n, err := units.ParseSize(c.RequestSize)
	return int(n), err
}

// RateBytes parses rate (0 if unset: unlimited).
func (c Copy) RateBytes() (int64, error) {
	if c.Rate == "" {
		return 0, nil
	}
	return units.ParseSize(c.Rate)
}

// CopyRate is the bandwidth limit of a copy in bytes per second: [copy]
// rate, else [performance] bandwidth_limit_mbps; 0 means unlimited.
func (c *Config) CopyRate() int64 {
	if r, err := c.Copy.RateBytes(); err == nil && r > 0 {
		return r
	}
	return int64(c.Performance.BandwidthLimitMbps) * 1_000_000 / 8
}

// Password returns the vCenter password from password_file or the
// variable named by password_env. It never logs or echoes the value.
func (v VCenter) Password(getenv func(string) string) (string, error) {
	switch {
	case v.PasswordFile != "":
		b, err := os.ReadFile(v.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("vCenter password: %w", err)
		}
		pw, _, _ := strings.Cut(string(b), "\n")
		pw = strings.TrimRight(pw, "\r")
		if pw == "" {
			return "", fmt.Errorf("vCenter password: %s is empty", v.PasswordFile)
		}
		return pw, nil
	case v.PasswordEnv != "":
		pw := getenv(v.PasswordEnv)
		if pw == "" {
			return "", fmt.Errorf("vCenter password: environment variable %s ([vcenter] password_env) is not set", v.PasswordEnv)
		}
		return pw, nil
	}
	return "", errors.New("no vCenter password: set [vcenter] password_file or password_env, SENDENSE_VCENTER_PASSWORD_FILE, or --vcenter-password-file")
}

// keyLine finds the line of key in a TOML text: the line of its last
// component inside the table of its other components (0 if not found).
func keyLine(text string, key toml.Key) int {
	table := strings.Join(key[:len(key)-1], ".")
	last := key[len(key)-1]
	cur := ""
	for i, line := range strings.Split(text, "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "[") {
			cur = strings.Trim(strings.TrimSpace(strings.SplitN(l, "#", 2)[0]), "[] ")
			if cur == strings.Join(key, ".") {
				return i + 1 // an unknown table
			}
			continue
		}
		name, _, ok := strings.Cut(l, "=")
		name = strings.Trim(strings.TrimSpace(name), `"'`)
		if !ok || cur != table && !strings.HasPrefix(name, table+".") {
			continue
		}
		if name == last || name == table+"."+last {
			return i + 1
		}
	}
	return 0
}
