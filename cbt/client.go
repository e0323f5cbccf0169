package cbt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Config says how to reach and log in to a vCenter or ESXi server.
type Config struct {
	// Server is a host name or address, "host:port", or an https URL
	// ("https://vc.example.com/sdk"); the /sdk path is implied.
	Server string
	// Port overrides the port of Server; 0 means the one in Server, or 443.
	Port int
	// User and Password are the vSphere credentials.
	User, Password string
	// Thumbprint pins the server certificate by its SHA-1 thumbprint
	// ("AA:BB:…", 20 bytes; a SHA-256 one is accepted too).
	Thumbprint string
	// CAFile is a PEM file of certificate authorities to verify the server
	// certificate (and its host name) with. With a thumbprint, both must pass.
	CAFile string
	// Insecure allows a server whose certificate cannot be verified, when
	// neither Thumbprint nor CAFile is given. Never the default.
	Insecure bool
	// KeepAlive is how long the session may stay idle before the client
	// refreshes it; 0 means 5 minutes, a negative value turns it off.
	KeepAlive time.Duration
}

// Client is a logged-in vSphere session. Its methods may be called from
// several goroutines.
type Client struct {
	vc   *vim25.Client
	rt   *sessionRT
	host string
	user string

	idMu sync.Mutex
	id   string // ServerID
}

// serverURL turns Config.Server and Config.Port into the SDK URL.
func serverURL(cfg Config) (*url.URL, error) {
	s := strings.TrimSpace(cfg.Server)
	if s == "" {
		return nil, errors.New("no server given: set the vCenter or ESXi host name")
	}
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("invalid server %q: %v", cfg.Server, err)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("invalid server %q: only https is supported", cfg.Server)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("invalid server %q: no host name", cfg.Server)
	}
	port := u.Port()
	if cfg.Port != 0 {
		port = strconv.Itoa(cfg.Port)
	}
	if port == "" {
		port = "443"
	}
	u.Host = net.JoinHostPort(u.Hostname(), port)
	if u.Path == "" || u.Path == "/" {
		u.Path = "/sdk"
	}
	u.User = nil
	return u, nil
}

// Connect logs in to the server described by cfg. Its errors name the
// problem and wrap ErrThumbprint (showing the expected and the presented
// thumbprint), ErrUntrusted, ErrLogin or ErrUnreachable.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	u, err := serverURL(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.User == "" {
		return nil, errors.New("no user given: set the vSphere user name")
	}
	v, err := newVerifier(cfg, u.Host, u.Hostname())
	if err != nil {
		return nil, err
	}
	sc := soap.NewClient(u, true) // verification is done by v
	sc.DefaultTransport().TLSClientConfig = v.tlsConfig()

	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, connectError(u.Host, err)
	}
	rt := &sessionRT{inner: sc, sm: *vc.ServiceContent.SessionManager, user: cfg.User, password: cfg.Password}
	vc.RoundTripper = rt
	if err := rt.login(ctx); err != nil {
		if fault.Is(err, &types.InvalidLogin{}) {
			return nil, fmt.Errorf("%w: login to %s as %q failed: incorrect user name or password", ErrLogin, u.Host, cfg.User)
		}
		return nil, connectError(u.Host, err)
	}
	c := &Client{vc: vc, rt: rt, host: u.Host, user: cfg.User}
	interval := cfg.KeepAlive
	if interval == 0 {
		interval = 5 * time.Minute
	}
	if interval > 0 {
		rt.stop, rt.done = make(chan struct{}), make(chan struct{})
		go rt.keepAlive(interval)
	}
	return c, nil
}

func connectError(host string, err error) error {
	var te *TLSError
	if errors.As(err, &te) {
		return te
	}
	var oe *net.OpError
	var de *net.DNSError
	if errors.As(err, &oe) || errors.As(err, &de) {
		return fmt.Errorf("%w: cannot reach vSphere at %s: %v", ErrUnreachable, host, err)
	}
	return fmt.Errorf("connecting to %s: %w", host, err)
}

// Close logs out and stops the keep-alive.
func (c *Client) Close(ctx context.Context) error {
	c.rt.close()
	return session.NewManager(c.vc).Logout(ctx)
}

// Vim25 returns the underlying govmomi client, for calls this package does
// not wrap. It renews its session like the Client does.
func (c *Client) Vim25() *vim25.Client { return c.vc }

// Host returns the server's host:port.
func (c *Client) Host() string { return c.host }

// IsVC reports whether the server is a vCenter (rather than an ESXi host).
func (c *Client) IsVC() bool { return c.vc.IsVC() }
