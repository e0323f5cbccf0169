package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/sendense/capture/internal/units"
)

// Offsite is one [[offsite]] target: an S3 bucket (with Object Lock)
// that `sendense offsite sync` copies restore points to (docs/offsite.md).
type Offsite struct {
	Name      string `toml:"name"`       // --target NAME, s3://NAME/
	Endpoint  string `toml:"endpoint"`   // https://s3.example.com (http:// only for loopback tests)
	Region    string `toml:"region"`     // default us-east-1
	Bucket    string `toml:"bucket"`     // the bucket, created with Object Lock enabled
	Prefix    string `toml:"prefix"`     // optional key prefix, e.g. "site-a"
	PathStyle bool   `toml:"path_style"` // https://endpoint/bucket/key instead of https://bucket.endpoint/key
	CAFile    string `toml:"ca_file"`    // PEM CA bundle for a private endpoint

	// AccessKeyFile and SecretKeyFile hold the credentials (first line).
	// Unset, they are the systemd credentials
	// sendense-offsite-NAME.access and .secret in $CREDENTIALS_DIRECTORY.
	AccessKeyFile string `toml:"access_key_file"`
	SecretKeyFile string `toml:"secret_key_file"`

	ObjectLockMode string `toml:"object_lock_mode"` // "COMPLIANCE", "GOVERNANCE" or "" (no lock)
	RetentionDays  int    `toml:"retention_days"`   // each point stays locked this long after its upload

	Connections     int    `toml:"connections"`       // parts uploaded or downloaded at once (default 4)
	PartSize        string `toml:"part_size"`         // multipart part size (default 64M; 5M..5G)
	SyncAfterBackup bool   `toml:"sync_after_backup"` // the agent syncs after each successful backup
}

// Offsite defaults.
const (
	DefaultOffsiteRegion      = "us-east-1"
	DefaultOffsiteConnections = 4
	DefaultOffsitePartSize    = 64 << 20
	minPartSize               = 5 << 20
	maxPartSize               = 5 << 30
)

var (
	offsiteNamePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	bucketPattern      = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
)

// OffsiteTarget returns the [[offsite]] target called name.
func (c *Config) OffsiteTarget(name string) (*Offsite, error) {
	var names []string
	for i := range c.Offsite {
		if c.Offsite[i].Name == name {
			return &c.Offsite[i], nil
		}
		names = append(names, c.Offsite[i].Name)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no offsite target %q: the configuration has no [[offsite]] target (see docs/offsite.md; give the file with --config or $SENDENSE_CONFIG)", name)
	}
	return nil, fmt.Errorf("no offsite target %q in the configuration (it has %s)", name, strings.Join(names, ", "))
}

func (c *Config) checkOffsite(where string) error {
	seen := map[string]bool{}
	for i := range c.Offsite {
		o := &c.Offsite[i]
		if err := o.check(); err != nil {
			if o.Name == "" {
				return fmt.Errorf("%s: [[offsite]] number %d: %w", where, i+1, err)
			}
			return fmt.Errorf("%s: [[offsite]] %q: %w", where, o.Name, err)
		}
		if seen[o.Name] {
			return fmt.Errorf("%s: [[offsite]] name %q is used twice", where, o.Name)
		}
		seen[o.Name] = true
	}
	return nil
}

func (o *Offsite) check() error {
	if !offsiteNamePattern.MatchString(o.Name) {
		return fmt.Errorf("name %q must be 1-63 lower-case letters, digits, '.', '_' or '-' (it is used as s3://NAME/)", o.Name)
	}
	u, err := url.Parse(o.Endpoint)
	switch {
	case o.Endpoint == "":
		return errors.New("endpoint is missing (e.g. endpoint = \"https://s3.example.com\")")
	case err != nil:
		return fmt.Errorf("endpoint: %w", err)
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
		return fmt.Errorf("endpoint %q must be https://HOST[:PORT]", o.Endpoint)
	case u.User != nil:
		return errors.New("endpoint must not hold credentials: use access_key_file and secret_key_file")
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
		return fmt.Errorf("endpoint %q must have no path or query: the bucket is the bucket key", o.Endpoint)
	}
	if !bucketPattern.MatchString(o.Bucket) || strings.Contains(o.Bucket, "..") {
		return fmt.Errorf("bucket %q is not a valid S3 bucket name (3-63 lower-case letters, digits, '.' and '-')", o.Bucket)
	}
	if o.Prefix != "" {
		p := strings.Trim(o.Prefix, "/")
		if p == "" || path.Clean(p) != p || strings.HasPrefix(p, ".") || strings.Contains(p, "/.") || strings.ContainsAny(p, "\\\x00") {
			return fmt.Errorf("prefix %q must be a plain key prefix such as \"site-a\" or \"dr/site-a\" (no '.', '..' or empty components)", o.Prefix)
		}
		o.Prefix = p
	}
	if o.Region == "" {
		o.Region = DefaultOffsiteRegion
	}
	switch o.ObjectLockMode {
	case "COMPLIANCE", "GOVERNANCE":
		if o.RetentionDays < 1 {
			return fmt.Errorf("object_lock_mode %q needs retention_days of at least 1", o.ObjectLockMode)
		}
	case "":
		if o.RetentionDays != 0 {
			return errors.New("retention_days needs object_lock_mode (COMPLIANCE or GOVERNANCE)")
		}
	default:
		return fmt.Errorf("object_lock_mode %q must be COMPLIANCE, GOVERNANCE or \"\"", o.ObjectLockMode)
	}
	if o.RetentionDays > 36500 {
		return fmt.Errorf("retention_days %d is more than 100 years", o.RetentionDays)
	}
	if o.Connections == 0 {
		o.Connections = DefaultOffsiteConnections
	}
	if o.Connections < 1 || o.Connections > 64 {
		return fmt.Errorf("connections %d must be between 1 and 64", o.Connections)
	}
	if _, err := o.PartSizeBytes(); err != nil {
		return err
	}
	if (o.AccessKeyFile == "") != (o.SecretKeyFile == "") {
		return errors.New("set both access_key_file and secret_key_file, or neither (systemd credentials)")
	}
	return nil
}

// PartSizeBytes is part_size in bytes (the default when unset).
func (o *Offsite) PartSizeBytes() (int64, error) {
	if o.PartSize == "" {
		return DefaultOffsitePartSize, nil
	}
	n, err := units.ParseSize(o.PartSize)
	if err != nil {
		return 0, fmt.Errorf("part_size: %w", err)
	}
	if n < minPartSize || n > maxPartSize {
		return 0, fmt.Errorf("part_size %s must be between 5M and 5G (S3's limits)", o.PartSize)
	}
	return n, nil
}

// Credentials reads the access key and the secret key: from
// access_key_file and secret_key_file, else from the systemd credentials
// sendense-offsite-NAME.access and sendense-offsite-NAME.secret in the
// directory getenv("CREDENTIALS_DIRECTORY") names. The values never
// appear in errors.
func (o *Offsite) Credentials(getenv func(string) string) (access, secret string, err error) {
	af, sf := o.AccessKeyFile, o.SecretKeyFile
	if af == "" {
		dir := getenv("CREDENTIALS_DIRECTORY")
		if dir == "" {
			return "", "", fmt.Errorf("offsite target %s: no credentials: set access_key_file and secret_key_file, or run under systemd with LoadCredential=sendense-offsite-%s.access and .secret", o.Name, o.Name)
		}
		af = filepath.Join(dir, "sendense-offsite-"+o.Name+".access")
		sf = filepath.Join(dir, "sendense-offsite-"+o.Name+".secret")
	}
	if access, err = firstLine(af); err != nil {
		return "", "", fmt.Errorf("offsite target %s: access key: %w", o.Name, err)
	}
	if secret, err = firstLine(sf); err != nil {
		return "", "", fmt.Errorf("offsite target %s: secret key: %w", o.Name, err)
	}
	return access, secret, nil
}

func firstLine(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err // names the file, never the content
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSpace(line)
	if line == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return line, nil
}
