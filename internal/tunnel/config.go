package tunnel

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Defaults used when the Config fields are zero.
const (
	DefaultPort              = 443
	DefaultKeepAliveInterval = 15 * time.Second
	DefaultKeepAliveCount    = 3
	DefaultDialTimeout       = 30 * time.Second
	// DefaultConnections is the number of SSH connections channels are
	// spread over, chosen by measurement (docs/tunnel.md).
	DefaultConnections = 1
)

// DefaultCiphers is the cipher preference: AES-GCM first, as measured
// fastest here on both ends (docs/tunnel.md), then ChaCha20-Poly1305 for
// servers without AES-GCM.
var DefaultCiphers = []string{
	"aes128-gcm@openssh.com",
	"aes256-gcm@openssh.com",
	"chacha20-poly1305@openssh.com",
	"aes128-ctr",
	"aes256-ctr",
}

// Config says how to reach the control plane. The zero value of every
// field but Host means its default.
type Config struct {
	Host string // control plane host name or address (required)
	Port int    // SSH port (default 443)
	User string // remote user (default: the current user)

	// KeyFile is a private key file (Ed25519, ECDSA or RSA, OpenSSH or
	// PEM format) without passphrase. An encrypted key is used through
	// ssh-agent when the agent holds it, else refused: nothing prompts.
	KeyFile string
	// UseAgent offers the keys of ssh-agent (AgentSocket, or
	// $SSH_AUTH_SOCK). Without KeyFile the agent is used whenever
	// $SSH_AUTH_SOCK is set.
	UseAgent    bool
	AgentSocket string

	// KnownHosts is the known_hosts file host keys are checked against
	// (default ~/.ssh/known_hosts).
	KnownHosts string
	// AcceptNewHostKey writes the host key of a host that is not in
	// KnownHosts yet (creating the file, mode 0600). A changed key is
	// refused regardless.
	AcceptNewHostKey bool

	KeepAlive KeepAlive

	// Connections is the number of SSH connections forwards spread their
	// channels over (default DefaultConnections).
	Connections int
	// Rate limits the bytes per second through all forwards and
	// DialUnix/DialTCP connections together, both directions (0 =
	// unlimited). Run, Start and Client traffic is not limited.
	Rate int64

	// DialTimeout bounds the TCP connect and SSH handshake of each
	// connection (default 30 s).
	DialTimeout time.Duration
	// Ciphers overrides DefaultCiphers.
	Ciphers []string
	// Redial is the backoff of Redial and Reconnect.
	Redial Backoff
	// OnRetry, when set, is told of every failed attempt of Redial that
	// will be retried, instead of a log line (the CLI shows it as one
	// updating status line).
	OnRetry func(Retry)

	// Logger receives the tunnel's log (default slog.Default()).
	Logger *slog.Logger
}

// KeepAlive configures keepalive@openssh.com probes: one every Interval
// (default 15 s; negative disables them); Count (default 3) probes left
// unanswered declare the connection dead.
type KeepAlive struct {
	Interval time.Duration
	Count    int
}

// Backoff is a bounded exponential backoff: attempts wait Initial (default
// 1 s), then twice as long each time up to Max (default 30 s), for at most
// Attempts attempts (default 8) and at most Within (default 1 minute) from
// the first attempt's start to the last attempt's end.
type Backoff struct {
	Initial  time.Duration
	Max      time.Duration
	Attempts int
	Within   time.Duration
}

// DefaultRedialWithin is how long Redial tries by default.
const DefaultRedialWithin = time.Minute

// Retry is a failed attempt of Redial that will be retried.
type Retry struct {
	Target  string        // user@host:port
	Attempt int           // the attempt that failed, from 1
	Err     error         // why
	Wait    time.Duration // until the next attempt
	Left    time.Duration // until Redial gives up
}

// withDefaults returns c with defaults filled in, or an error naming the
// bad field.
func (c Config) withDefaults() (Config, error) {
	if c.Host == "" {
		return c, cfgErr("ssh tunnel: no host: set [tunnel] host")
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Port < 1 || c.Port > 65535 {
		return c, cfgErr("ssh tunnel: port %d out of range 1-65535 ([tunnel] port)", c.Port)
	}
	if c.User == "" {
		u, err := user.Current()
		if err != nil {
			return c, fmt.Errorf("ssh tunnel: no user given ([tunnel] user) and the current user is unknown: %w", err)
		}
		c.User = u.Username
	}
	var err error
	if c.KeyFile, err = expandHome(c.KeyFile); err != nil {
		return c, err
	}
	if c.KnownHosts == "" {
		c.KnownHosts = "~/.ssh/known_hosts"
	}
	if c.KnownHosts, err = expandHome(c.KnownHosts); err != nil {
		return c, err
	}
	if c.UseAgent && c.AgentSocket == "" {
		c.AgentSocket = os.Getenv("SSH_AUTH_SOCK")
		if c.AgentSocket == "" {
			return c, cfgErr("ssh tunnel: ssh-agent requested but SSH_AUTH_SOCK is not set: start ssh-agent, or give a key file (--ssh-key)")
		}
	}
	if c.KeyFile == "" && c.AgentSocket == "" {
		c.AgentSocket = os.Getenv("SSH_AUTH_SOCK")
		if c.AgentSocket == "" {
			return c, cfgErr("ssh tunnel: no SSH key: give a key file (--ssh-key or [tunnel] key) or run ssh-agent (SSH_AUTH_SOCK)")
		}
	}
	if c.KeepAlive.Interval == 0 {
		c.KeepAlive.Interval = DefaultKeepAliveInterval
	}
	if c.KeepAlive.Count <= 0 {
		c.KeepAlive.Count = DefaultKeepAliveCount
	}
	if c.Connections == 0 {
		c.Connections = DefaultConnections
	}
	if c.Connections < 0 || c.Connections > 64 {
		return c, cfgErr("ssh tunnel: %d connections out of range 1-64 ([tunnel] connections)", c.Connections)
	}
	if c.Rate < 0 {
		return c, cfgErr("ssh tunnel: negative rate %d (--rate)", c.Rate)
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if len(c.Ciphers) == 0 {
		c.Ciphers = DefaultCiphers
	}
	if c.Redial.Initial <= 0 {
		c.Redial.Initial = time.Second
	}
	if c.Redial.Max <= 0 {
		c.Redial.Max = 30 * time.Second
	}
	if c.Redial.Attempts <= 0 {
		c.Redial.Attempts = 8
	}
	if c.Redial.Within <= 0 {
		c.Redial.Within = DefaultRedialWithin
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// addr is "host:port".
func (c *Config) addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// target names the connection in errors and logs: "user@host:port".
func (c *Config) target() string { return c.User + "@" + c.addr() }

// expandHome replaces a leading "~/" with the home directory.
func expandHome(p string) (string, error) {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("ssh tunnel: expand %s: %w", p, err)
	}
	return filepath.Join(home, strings.TrimPrefix(p, "~")), nil
}

// configError is a bad configuration (Permanent).
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func cfgErr(format string, args ...any) error {
	return &configError{fmt.Sprintf(format, args...)}
}
