// Package config reads sendense.toml and the SENDENSE_* environment.
//
// Precedence, lowest first: built-in defaults, the configuration file,
// SENDENSE_* environment variables, command-line flags (applied by the
// CLI): flag > environment > file, as govc and restic. Unknown keys in the
// file are errors naming the key and its line. Without --config (or
// $SENDENSE_CONFIG) the first file of SearchPaths that exists is read.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	pathpkg "path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/sendense/capture/internal/childenv"
	"github.com/sendense/capture/internal/retention"
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
	State       State       `toml:"state"`
	Retention   Retention   `toml:"retention"`
	VMs         []VM        `toml:"vm"`
	Offsite     []Offsite   `toml:"offsite"` // [[offsite]] S3 targets (offsite.go)

	// File is the configuration file read, if any.
	File string `toml:"-"`
	// vmsSet: the file sets the deprecated [backup] max_concurrent_vms.
	vmsSet bool
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

	// PasswordCredential names a systemd credential holding the password
	// ($CREDENTIALS_DIRECTORY/NAME, from LoadCredentialEncrypted=).
	PasswordCredential string `toml:"password_credential"`
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
	// Fault is what a job does when QueryChangedDiskAreas fails for a
	// disk: "full" (default) copies that disk in full, "fail" fails the job.
	Fault string `toml:"fault"`
}

// Backup configures backup jobs.
type Backup struct {
	Quiesce            bool `toml:"quiesce"`              // quiesced snapshots through VMware Tools
	MaxConcurrentDisks int  `toml:"max_concurrent_disks"` // disks of one VM copied at once
	// MaxConcurrentVMs is the old name of [performance]
	// max_concurrent_backups for `sendense backup` (still read).
	MaxConcurrentVMs int `toml:"max_concurrent_vms"`
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
	// Encryption of the repositories a backup creates: "" (none) or
	// "aes-256" (docs/repository.md, "Encryption").
	Encryption string `toml:"encryption"`
	// PasswordFile is a file whose first line is the passphrase of an
	// encrypted repository; PasswordCredential names a systemd
	// credential holding it.
	PasswordFile       string `toml:"password_file"`
	PasswordCredential string `toml:"password_credential"`
	// KeyCache is how long the key that the passphrase derives stays in
	// the user's kernel keyring (nil: the default, 5m; "0s": never
	// cached).
	KeyCache *Duration `toml:"key_cache"`
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
	// RetryFor is how long connecting to an SSH server may take, failed
	// attempts retried with backoff, before sendense gives up ("1m").
	RetryFor Duration `toml:"retry_for"`
}

// Duration is a time.Duration read from a string ("30s", "1m").
type Duration struct{ time.Duration }

// UnmarshalText parses the duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("invalid duration %q: use e.g. 30s, 2m", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// API configures `sendense serve`, the capture agent's HTTP API.
type API struct {
	Listen    string `toml:"listen"`     // default 127.0.0.1:8081
	TokenFile string `toml:"token_file"` // bearer token clients must send
	TLSCert   string `toml:"tls_cert"`   // serve HTTPS (needed for non-loopback addresses)
	TLSKey    string `toml:"tls_key"`
	StateDir  string `toml:"state_dir"` // job history
	// AllowedRepositories and AllowedTargets are the repositories and
	// replication targets API requests may name, besides [repository]
	// path (exact locations; an entry ending in "/*" allows any single
	// name below it). ssh:// ones must also be on the [tunnel] host.
	AllowedRepositories []string `toml:"allowed_repositories"`
	AllowedTargets      []string `toml:"allowed_targets"`
}

// State is what the CLI and the agent of one host share.
type State struct {
	// Dir holds the VM locks of running jobs (default /var/lib/sendense,
	// created 0700). Every sendense process of a host must use the same.
	Dir string `toml:"dir"`
	// SnapshotLease is how old a snapshot taken by a job on another host
	// must be before a job here may remove it ("24h"; "0": never).
	SnapshotLease string `toml:"snapshot_lease"`
}

// DefaultStateDir is [state] dir's default.
const DefaultStateDir = "/var/lib/sendense"

// Lease parses snapshot_lease (0: never).
func (s State) Lease() (time.Duration, error) {
	switch s.SnapshotLease {
	case "":
		return 24 * time.Hour, nil
	case "0":
		return 0, nil
	}
	d, err := time.ParseDuration(s.SnapshotLease)
	if err != nil || d < time.Minute {
		return 0, fmt.Errorf("%q is not a duration of at least 1m such as \"24h\" (\"0\": never)", s.SnapshotLease)
	}
	return d, nil
}

// Performance holds the agent's scheduling knobs (the product sheet's
// performance section).
type Performance struct {
	MaxConcurrentBackups int    `toml:"max_concurrent_backups"` // backup jobs running at once (sendense serve)
	BackupWindow         string `toml:"backup_window"`          // "22:00-06:00": jobs start only inside it unless forced
	BandwidthLimitMbps   int    `toml:"bandwidth_limit_mbps"`   // megabits per second for everything copied at once; [copy] rate wins when set
}

// Retention is the retention policy `sendense prune` applies without
// --keep-* flags and the agent applies after every succeeded backup
// (docs/retention.md). Counts: 0 = rule off, -1 = unlimited.
type Retention struct {
	KeepLast    int                `toml:"keep_last"`
	KeepHourly  int                `toml:"keep_hourly"`
	KeepDaily   int                `toml:"keep_daily"`
	KeepWeekly  int                `toml:"keep_weekly"`
	KeepMonthly int                `toml:"keep_monthly"`
	KeepYearly  int                `toml:"keep_yearly"`
	KeepWithin  retention.Duration `toml:"keep_within"` // e.g. "30d", "1y6m"
}

// Policy is the retention policy (calendar periods in local time).
func (r Retention) Policy() retention.Policy {
	return retention.Policy{Last: r.KeepLast, Hourly: r.KeepHourly, Daily: r.KeepDaily, Weekly: r.KeepWeekly,
		Monthly: r.KeepMonthly, Yearly: r.KeepYearly, Within: r.KeepWithin}
}

// VM is a [[vm]] table: settings of the VMs it matches. Name, Path and
// Moref are exact values or glob patterns (path.Match); every one given
// must match.
type VM struct {
	Name  string `toml:"name"`
	Path  string `toml:"path"`
	Moref string `toml:"moref"`
	// ExcludeDisks are device keys (2001) never backed up.
	ExcludeDisks []int32 `toml:"exclude_disks"`
}

// Matches says whether the [[vm]] table applies to the VM.
func (v VM) Matches(name, path, moref string) bool {
	match := func(pattern, s string) bool {
		if pattern == "" {
			return true
		}
		ok, err := pathpkg.Match(pattern, s)
		return ok && err == nil
	}
	return match(v.Name, name) && match(v.Path, path) && match(v.Moref, moref)
}

// ExcludedDisks is the union of exclude_disks of the [[vm]] tables that
// match the VM.
func (c *Config) ExcludedDisks(name, path, moref string) []int32 {
	var out []int32
	for _, v := range c.VMs {
		if v.Matches(name, path, moref) {
			for _, k := range v.ExcludeDisks {
				if !slices.Contains(out, k) {
					out = append(out, k)
				}
			}
		}
	}
	return out
}

// ParallelBackups is how many VMs `sendense backup` backs up at once by
// default: [performance] max_concurrent_backups, or the older [backup]
// max_concurrent_vms when the file sets that.
func (c *Config) ParallelBackups() int {
	if c.vmsSet {
		return c.Backup.MaxConcurrentVMs
	}
	return c.Performance.MaxConcurrentBackups
}

// Defaults returns the built-in defaults.
func Defaults() *Config {
	return &Config{
		VDDK:        VDDK{Libdir: "/usr/lib/vmware-vix-disklib"},
		Backup:      Backup{MaxConcurrentDisks: 4, MaxConcurrentVMs: 1},
		Tunnel:      Tunnel{Port: 443, Connections: 1, APIForward: "127.0.0.1:10808", RetryFor: Duration{time.Minute}},
		API:         API{Listen: "127.0.0.1:8081"},
		Performance: Performance{MaxConcurrentBackups: 1},
		CBT:         CBT{Fault: "full"},
		State:       State{Dir: DefaultStateDir, SnapshotLease: "24h"},
	}
}

// Env lists the SENDENSE_* variables: each overrides its key of the file
// (and is overridden by its flag).
var Env = []struct {
	Name string
	Key  string // the configuration key it sets
	Doc  string
	set  func(c *Config, v string) error
}{
	{"SENDENSE_VCENTER_URL", "[vcenter] url", "vCenter/ESXi URL", func(c *Config, v string) error { c.VCenter.URL = v; return nil }},
	{"SENDENSE_VCENTER_USER", "[vcenter] user", "vCenter user", func(c *Config, v string) error { c.VCenter.User = v; return nil }},
	{"SENDENSE_VCENTER_PASSWORD_FILE", "[vcenter] password_file", "file holding the vCenter password", func(c *Config, v string) error {
		c.VCenter.PasswordFile, c.VCenter.PasswordEnv = v, ""
		return nil
	}},
	{"SENDENSE_VCENTER_THUMBPRINT", "[vcenter] thumbprint", "SHA-1 thumbprint of the vCenter certificate", func(c *Config, v string) error { c.VCenter.Thumbprint = v; return nil }},
	{"SENDENSE_VCENTER_CA_FILE", "[vcenter] ca_file", "CA bundle for the vCenter certificate", func(c *Config, v string) error { c.VCenter.CAFile = v; return nil }},
	{"SENDENSE_VDDK_LIBDIR", "[vddk] libdir", "VDDK directory", func(c *Config, v string) error { c.VDDK.Libdir = v; return nil }},
	{"SENDENSE_REPOSITORY", "[repository] path", "backup repository", func(c *Config, v string) error { c.Repository.Path = v; return nil }},
	{"SENDENSE_REPOSITORY_PASSWORD_FILE", "[repository] password_file", "file holding the passphrase of an encrypted repository", func(c *Config, v string) error {
		c.Repository.PasswordFile, c.Repository.PasswordCredential = v, ""
		return nil
	}},
	{"SENDENSE_STATE_DIR", "[state] dir", "directory of the VM locks shared by the CLI and the agent", func(c *Config, v string) error { c.State.Dir = v; return nil }},
}

// NoFile as the configuration path reads no file (--config none).
const NoFile = "none"

// SearchPaths are the configuration files read when none is given, in
// order (the first that exists wins): /etc/sendense/sendense.toml, then
// $XDG_CONFIG_HOME/sendense/sendense.toml (default
// ~/.config/sendense/sendense.toml).
func SearchPaths(getenv func(string) string) []string {
	paths := []string{"/etc/sendense/sendense.toml"}
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		if home := getenv("HOME"); home != "" {
			dir = filepath.Join(home, ".config")
		}
	}
	if dir != "" {
		paths = append(paths, filepath.Join(dir, "sendense", "sendense.toml"))
	}
	return paths
}

// Find returns the configuration file to read when none is given: the
// first of SearchPaths that exists ("" when none does). One that exists
// but cannot be read is skipped when a later one can be read, else it is
// the error.
func Find(getenv func(string) string) (string, error) {
	var firstErr error
	for _, p := range SearchPaths(getenv) {
		f, err := os.Open(p)
		if err == nil {
			f.Close()
			return p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) && firstErr == nil {
			firstErr = fmt.Errorf("config: %w (give another file with --config FILE, or --config none)", err)
		}
	}
	return "", firstErr
}

// Load returns the configuration from the defaults, the TOML file at path
// (none when path is "" or NoFile) and the environment (read through
// getenv), which overrides the file.
func Load(path string, getenv func(string) string) (*Config, error) {
	c := Defaults()
	if path != "" && path != NoFile {
		if err := c.decodeFile(path); err != nil {
			return nil, err
		}
		c.File = path
	}
	for _, e := range Env {
		if v := getenv(e.Name); v != "" {
			if err := e.set(c, v); err != nil {
				return nil, fmt.Errorf("%s: %w", e.Name, err)
			}
		}
	}
	childenv.Hide(c.VCenter.PasswordEnv) // its value is a secret
	return c, c.Check()
}

func (c *Config) decodeFile(path string) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	md, err := toml.Decode(string(text), c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("config %s line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		key := u[0].String()
		return fmt.Errorf("config %s line %d: unknown key %q (see examples/sendense.toml for the keys)", path, keyLine(string(text), u[0]), key)
	}
	c.vmsSet = md.IsDefined("backup", "max_concurrent_vms")
	return nil
}

// Check validates values that do not depend on the command run.
func (c *Config) Check() error {
	where := "config"
	if c.File != "" {
		where = "config " + c.File
	}
	if n := nonEmpty(c.VCenter.PasswordFile, c.VCenter.PasswordEnv, c.VCenter.PasswordCredential); n > 1 {
		return fmt.Errorf("%s: [vcenter] password_file, password_env and password_credential are mutually exclusive", where)
	}
	if c.Repository.PasswordFile != "" && c.Repository.PasswordCredential != "" {
		return fmt.Errorf("%s: [repository] password_file and password_credential are mutually exclusive", where)
	}
	if k := c.Repository.KeyCache; k != nil && (k.Duration < 0 || k.Duration > 0 && k.Duration < time.Second) {
		return fmt.Errorf("%s: [repository] key_cache must be \"0s\" (no cache) or at least \"1s\", not %q", where, k.Duration)
	}
	if e := c.Repository.Encryption; e != "" && e != "aes-256" {
		return fmt.Errorf("%s: [repository] encryption must be \"aes-256\" or empty (none), not %q", where, e)
	}
	for _, name := range []string{c.VCenter.PasswordCredential, c.Repository.PasswordCredential} {
		if name != "" && !credentialName(name) {
			return fmt.Errorf("%s: credential name %q is not a plain file name (letters, digits, '-', '_', '.')", where, name)
		}
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
	if c.CBT.Fault != "full" && c.CBT.Fault != "fail" {
		return fmt.Errorf("%s: [cbt] fault must be \"full\" or \"fail\", not %q", where, c.CBT.Fault)
	}
	if c.State.Dir == "" {
		return fmt.Errorf("%s: [state] dir must not be empty (default %s)", where, DefaultStateDir)
	}
	if _, err := c.State.Lease(); err != nil {
		return fmt.Errorf("%s: [state] snapshot_lease: %w", where, err)
	}
	if err := c.Retention.Policy().Check(); err != nil {
		return fmt.Errorf("%s: [retention]: %s", where, strings.NewReplacer("--keep-", "keep_").Replace(err.Error()))
	}
	for i, v := range c.VMs {
		if v.Name == "" && v.Path == "" && v.Moref == "" {
			return fmt.Errorf("%s: [[vm]] table %d matches every VM: give name, path or moref", where, i+1)
		}
		for _, p := range []string{v.Name, v.Path, v.Moref} {
			if _, err := pathpkg.Match(p, ""); err != nil {
				return fmt.Errorf("%s: [[vm]] table %d: bad pattern %q: %v", where, i+1, p, err)
			}
		}
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

// CopyRate is the bandwidth limit in bytes per second of everything a
// process copies at once (every disk of every job): [copy] rate, else
// [performance] bandwidth_limit_mbps; 0 means unlimited.
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
	case v.PasswordCredential != "":
		pw, err := Credential(v.PasswordCredential, getenv)
		if err != nil {
			return "", fmt.Errorf("vCenter password: %w", err)
		}
		return string(pw), nil
	case v.PasswordEnv != "":
		childenv.Hide(v.PasswordEnv)
		pw := getenv(v.PasswordEnv)
		if pw == "" {
			return "", fmt.Errorf("vCenter password: environment variable %s ([vcenter] password_env) is not set", v.PasswordEnv)
		}
		return pw, nil
	}
	return "", errors.New("no vCenter password: set [vcenter] password_file, password_env or password_credential, SENDENSE_VCENTER_PASSWORD_FILE, or --vcenter-password-file")
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

func nonEmpty(s ...string) int {
	n := 0
	for _, v := range s {
		if v != "" {
			n++
		}
	}
	return n
}

// Passphrase returns the passphrase of an encrypted repository from
// password_file or password_credential. It never logs or echoes it.
func (r Repository) Passphrase(getenv func(string) string) ([]byte, error) {
	switch {
	case r.PasswordFile != "":
		return secretLine(r.PasswordFile, "repository passphrase")
	case r.PasswordCredential != "":
		pw, err := Credential(r.PasswordCredential, getenv)
		if err != nil {
			return nil, fmt.Errorf("repository passphrase: %w", err)
		}
		return pw, nil
	}
	return nil, errors.New("no passphrase: give --password-file FILE, SENDENSE_REPOSITORY_PASSWORD_FILE, or [repository] password_file or password_credential")
}

// secretLine reads the first line of a secret file (without its "\r").
func secretLine(path, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return nil, fmt.Errorf("%s: the first line of %s is empty", what, path)
	}
	return []byte(line), nil
}

func credentialName(name string) bool {
	if name == "." || name == ".." {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.", c)) {
			return false
		}
	}
	return name != ""
}

// Credential reads the systemd credential name: the first line of
// $CREDENTIALS_DIRECTORY/name, which systemd fills from
// LoadCredential= or LoadCredentialEncrypted= (decrypted with the TPM or
// the host key, on a file system only the service reads).
func Credential(name string, getenv func(string) string) ([]byte, error) {
	if !credentialName(name) {
		return nil, fmt.Errorf("credential name %q is not a plain file name", name)
	}
	dir := getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return nil, fmt.Errorf("credential %q: $CREDENTIALS_DIRECTORY is not set: systemd sets it for a service with LoadCredentialEncrypted=%s:… (contrib/systemd/sendense.service); from a shell, run the command with systemd-run -p LoadCredentialEncrypted=%s:FILE --pipe --wait, or use a password file", name, name, name)
	}
	return secretLine(filepath.Join(dir, name), "credential "+name)
}
