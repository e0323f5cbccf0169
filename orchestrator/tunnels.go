package orchestrator

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/sendense/capture/internal/tunnel"
)

// TunnelPool shares one tunnel (SSH connection set) per user@host:port
// among a process's jobs and disks.
type TunnelPool struct {
	mu sync.Mutex
	m  map[string]*tunnel.Tunnel
}

// NewTunnelPool returns an empty pool.
func NewTunnelPool() *TunnelPool { return &TunnelPool{m: map[string]*tunnel.Tunnel{}} }

var poolInit sync.Mutex

func (s *Services) pool() *TunnelPool {
	poolInit.Lock()
	defer poolInit.Unlock()
	if s.Tunnels == nil {
		s.Tunnels = NewTunnelPool()
	}
	return s.Tunnels
}

// DefaultSSHPort is the port of ssh:// URLs that give none, unless the
// host is [tunnel] host (then [tunnel] port, default 443).
const DefaultSSHPort = 22

// TunnelConfig is the SSH tunnel configuration to the host of u
// (ssh://[user@]host[:port]/…): [tunnel] key, known_hosts and connections,
// the URL's user and port over [tunnel] user and port, and the copy's
// bandwidth limit. As ssh URLs go, the port is 22 unless the URL gives
// one, or the host is [tunnel] host: then it is [tunnel] port.
func (s *Services) TunnelConfig(u *url.URL) (tunnel.Config, error) {
	t := s.Config.Tunnel
	c := tunnel.Config{
		Host:             u.Hostname(),
		Port:             DefaultSSHPort,
		User:             t.User,
		KeyFile:          t.Key,
		KnownHosts:       t.KnownHosts,
		AcceptNewHostKey: s.AcceptNewHostKey,
		Connections:      t.Connections,
		Rate:             s.Config.CopyRate(),
		OnRetry:          s.OnTunnelRetry,
		Redial:           tunnel.Backoff{Within: t.RetryFor.Duration},
	}
	if c.Host == "" {
		c.Host = t.Host
	}
	if t.Host != "" && strings.EqualFold(c.Host, t.Host) && t.Port != 0 {
		c.Port = t.Port
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil {
			return c, fmt.Errorf("%s: bad port %q", u.Redacted(), p)
		}
		c.Port = n
	}
	if u.User != nil && u.User.Username() != "" {
		c.User = u.User.Username()
	}
	if _, set := u.User.Password(); u.User != nil && set {
		return c, fmt.Errorf("%s: passwords in ssh:// URLs are not supported: use a key ([tunnel] key, --ssh-key) or ssh-agent", u.Redacted())
	}
	return c, nil
}

// Tunnel returns the live tunnel to u's host, dialing it (again, when the
// previous one died) as needed.
func (s *Services) Tunnel(ctx context.Context, u *url.URL) (*tunnel.Tunnel, error) {
	cfg, err := s.TunnelConfig(u)
	if err != nil {
		return nil, err
	}
	key := fmt.Sprintf("%s@%s:%d", cfg.User, cfg.Host, cfg.Port)
	p := s.pool()
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.m[key]; t != nil {
		select {
		case <-t.Done():
			t.Close()
			delete(p.m, key)
		default:
			return t, nil
		}
	}
	t, err := tunnel.Redial(ctx, cfg)
	if s.OnTunnelRetry != nil {
		s.OnTunnelRetry(tunnel.Retry{Target: fmt.Sprintf("%s@%s:%d", cfg.User, cfg.Host, cfg.Port)}) // Attempt 0: over
	}
	if err != nil {
		return nil, err
	}
	p.m[key] = t
	return t, nil
}

// CloseTunnels closes every tunnel the services opened.
func (s *Services) CloseTunnels() {
	p := s.pool()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, t := range p.m {
		t.Close()
		delete(p.m, k)
	}
}

// TunnelStatus is "not configured" without [tunnel] host, else
// "connected" or "disconnected" for the tunnel to it.
func (s *Services) TunnelStatus() string {
	h := s.Config.Tunnel.Host
	if h == "" {
		return "not configured"
	}
	p := s.pool()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.m {
		if t.Config().Host == h && t.Err() == nil {
			return "connected"
		}
	}
	return "disconnected"
}

// sshTargets resolves ssh:// replication targets: an NBD server on a
// unix socket of the SSH server, forwarded to a local socket through the
// shared tunnel.
type sshTargets struct{ s *Services }

func (r sshTargets) Resolve(ctx context.Context, target string) (string, func(), error) {
	u, err := ParseTargetURI(target)
	if err != nil {
		return "", nil, err
	}
	t, err := r.s.Tunnel(ctx, u)
	if err != nil {
		return "", nil, err
	}
	fwd, err := t.ForwardUnix(ctx, u.Path)
	if err != nil {
		return "", nil, err
	}
	return fwd.URI(), func() { fwd.Close() }, nil
}
