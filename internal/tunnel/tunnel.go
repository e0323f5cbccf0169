package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sendense/capture/internal/version"
)

// ErrClosed is returned by Err and by calls on a Tunnel after Close.
var ErrClosed = errors.New("ssh tunnel closed")

// DeadError says that a connection of the Tunnel died: keepalives went
// unanswered or the connection was closed or reset.
type DeadError struct {
	Target string // user@host:port
	Conn   int    // which SSH connection (0-based)
	Err    error
}

func (e *DeadError) Error() string {
	return fmt.Sprintf("ssh %s: connection %d lost: %v", e.Target, e.Conn, e.Err)
}

func (e *DeadError) Unwrap() error { return e.Err }

// Tunnel is a set of SSH connections to one server. Its methods are safe
// for concurrent use.
type Tunnel struct {
	cfg    Config
	log    *slog.Logger
	conns  []*conn
	next   atomic.Uint64
	lim    *limiter
	ctx    context.Context // cancelled when the Tunnel goes down
	cancel context.CancelFunc

	done     chan struct{}
	mu       sync.Mutex
	err      error
	children map[io.Closer]struct{} // forwards and processes, closed with the Tunnel
}

// conn is one SSH connection.
type conn struct {
	id     int
	client *ssh.Client
	tcp    net.Conn
}

// Dial connects to the server described by cfg with cfg.Connections SSH
// connections. ctx bounds the dialing only.
func Dial(ctx context.Context, cfg Config) (*Tunnel, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	t := &Tunnel{
		cfg:      cfg,
		log:      cfg.Logger.With("ssh", cfg.target()),
		lim:      newLimiter(cfg.Rate),
		done:     make(chan struct{}),
		children: map[io.Closer]struct{}{},
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	for i := 0; i < cfg.Connections; i++ {
		c, err := t.dialConn(ctx, i)
		if err != nil {
			for _, c := range t.conns {
				c.client.Close()
			}
			t.cancel()
			return nil, err
		}
		t.conns = append(t.conns, c)
	}
	for _, c := range t.conns {
		go t.watch(c)
		if cfg.KeepAlive.Interval > 0 {
			go t.keepAlive(c)
		}
	}
	t.log.Debug("ssh: connected", "connections", len(t.conns), "rate", cfg.Rate)
	return t, nil
}

// dialConn makes SSH connection number id.
func (t *Tunnel) dialConn(ctx context.Context, id int) (*conn, error) {
	cfg := &t.cfg
	hk, err := loadHostKeys(cfg)
	if err != nil {
		return nil, err
	}
	a, err := newAuth(cfg)
	if err != nil {
		return nil, err
	}
	defer a.close()

	d := net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	tcp, err := d.DialContext(ctx, "tcp", cfg.addr())
	if err != nil {
		return nil, fmt.Errorf("ssh %s: %w", cfg.target(), err)
	}
	// The handshake obeys DialTimeout and ctx.
	tcp.SetDeadline(time.Now().Add(cfg.DialTimeout))
	stop := context.AfterFunc(ctx, func() { tcp.SetDeadline(time.Unix(1, 0)) })
	cc := &ssh.ClientConfig{
		User:              cfg.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(a.signers...)},
		HostKeyCallback:   hk.check,
		HostKeyAlgorithms: hk.algorithms(),
		ClientVersion:     "SSH-2.0-sendense_" + strings.NewReplacer(" ", "_", "-", "_").Replace(version.Version),
		Config:            ssh.Config{Ciphers: cfg.Ciphers},
	}
	// Nagle's algorithm stays on, as OpenSSH leaves it for non-interactive
	// sessions: x/crypto/ssh writes every packet in two pieces (its 4 KiB
	// write buffer, then the rest), and with TCP_NODELAY each piece would be
	// a segment and a wakeup of sshd (docs/tunnel.md has the figures).
	if tc, ok := tcp.(*net.TCPConn); ok {
		tc.SetNoDelay(false)
	}
	sc, chans, reqs, err := ssh.NewClientConn(tcp, cfg.addr(), cc)
	stopped := stop()
	if err != nil {
		tcp.Close()
		return nil, t.handshakeError(ctx, stopped, hk, a, err)
	}
	tcp.SetDeadline(time.Time{})
	c := &conn{id: id, client: ssh.NewClient(sc, chans, reqs), tcp: tcp}
	t.log.Debug("ssh: connection up", "conn", id, "server", string(sc.ServerVersion()))
	return c, nil
}

// handshakeError turns x/crypto/ssh's handshake errors into ours.
func (t *Tunnel) handshakeError(ctx context.Context, notCancelled bool, hk *hostKeys, a *auth, err error) error {
	target := t.cfg.target()
	var hke *HostKeyError
	switch {
	case hk.err != nil && errors.As(hk.err, &hke):
		return hke
	case hk.err != nil:
		return fmt.Errorf("ssh %s: %w", target, hk.err)
	case !notCancelled && ctx.Err() != nil:
		return fmt.Errorf("ssh %s: %w", target, ctx.Err())
	case strings.Contains(err.Error(), "unable to authenticate"):
		return &AuthError{Target: target, User: t.cfg.User, Offered: a.offered, Err: err}
	case strings.Contains(err.Error(), "no common algorithm for host key") && len(hk.known) > 0:
		var known []string
		for _, k := range hk.known {
			known = append(known, fingerprint(k.Key))
		}
		return fmt.Errorf("ssh %s: the server offers none of the host key types recorded for it in %s (%s): %w",
			target, hk.file, strings.Join(known, ", "), err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("ssh %s: no SSH handshake within %v (is an SSH server listening on port %d?): %w",
			target, t.cfg.DialTimeout, t.cfg.Port, err)
	}
	return fmt.Errorf("ssh %s: %w", target, err)
}

// watch waits for a connection to end and fails the Tunnel then.
func (t *Tunnel) watch(c *conn) {
	err := c.client.Wait()
	if err == nil {
		err = io.EOF
	}
	t.fail(&DeadError{Target: t.cfg.target(), Conn: c.id, Err: err})
}

// fail closes the Tunnel with err as its cause, once; later calls wait
// until the first has finished.
func (t *Tunnel) fail(err error) {
	t.mu.Lock()
	if t.err != nil {
		t.mu.Unlock()
		<-t.done
		return
	}
	t.err = err
	children := t.children
	t.children = nil
	t.mu.Unlock()
	t.cancel()
	closed := errors.Is(err, ErrClosed)
	if !closed {
		// Dead: nothing can reach the server any more; stop waiting
		// for it at once.
		t.log.Error("ssh: tunnel down", "err", err)
		t.closeConns()
	}
	// Forwards and processes; a process kill takes a round trip.
	var wg sync.WaitGroup
	for ch := range children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch.Close()
		}()
	}
	wg.Wait()
	t.closeConns()
	close(t.done)
}

func (t *Tunnel) closeConns() {
	for _, c := range t.conns {
		c.client.Close()
	}
}

// Close closes the forwards, kills the remote processes started with
// Start and Run and closes the SSH connections. It is safe to call more
// than once.
func (t *Tunnel) Close() error {
	t.fail(ErrClosed)
	return nil
}

// Done is closed when the Tunnel is closed or one of its connections dies.
func (t *Tunnel) Done() <-chan struct{} { return t.done }

// Err is nil while the Tunnel is up, ErrClosed after Close, else why it
// died (a *DeadError).
func (t *Tunnel) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// Config is the configuration in use, defaults filled in.
func (t *Tunnel) Config() Config { return t.cfg }

// Client is the underlying SSH client of one connection (round-robin), for
// protocols this package does not wrap (e.g. SFTP with github.com/pkg/sftp).
// Traffic through it bypasses Config.Rate.
func (t *Tunnel) Client() *ssh.Client { return t.pick().client }

// pick chooses a connection round-robin.
func (t *Tunnel) pick() *conn {
	return t.conns[int(t.next.Add(1)-1)%len(t.conns)]
}

// adopt registers a forward or process to close with the Tunnel; false if
// the Tunnel is already down.
func (t *Tunnel) adopt(c io.Closer) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return false
	}
	t.children[c] = struct{}{}
	return true
}

func (t *Tunnel) release(c io.Closer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.children, c)
}

// downErr is the error for calls on a Tunnel that is down.
func (t *Tunnel) downErr() error {
	if err := t.Err(); err != nil {
		if errors.Is(err, ErrClosed) {
			return err
		}
		return fmt.Errorf("ssh tunnel is down: %w", err)
	}
	return nil
}

// Redial is Dial retried with cfg.Redial's exponential backoff while the
// failure may be temporary (network errors, timeouts, lost connections).
// Refused host keys, refused user keys and unusable key files are returned
// at once. Every failed attempt is logged.
func Redial(ctx context.Context, cfg Config) (*Tunnel, error) {
	full, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b := full.Redial
	delay := b.Initial
	start := time.Now()
	deadline := start.Add(b.Within)
	for attempt := 1; ; attempt++ {
		// No attempt runs past the deadline: its dial timeout is cut.
		actx, cancel := context.WithDeadline(ctx, deadline)
		t, err := Dial(actx, cfg)
		cancel()
		if err == nil {
			if attempt > 1 {
				full.Logger.Info("ssh: connected again", "ssh", full.target(), "attempt", attempt)
			}
			return t, nil
		}
		if Permanent(err) || ctx.Err() != nil {
			return nil, err
		}
		// The last attempt comes just before the deadline.
		left := time.Until(deadline)
		wait := min(delay, left-100*time.Millisecond)
		if attempt >= b.Attempts || wait <= 0 {
			return nil, fmt.Errorf("%w (gave up after %d attempts in %v)", err, attempt, time.Since(start).Round(time.Second))
		}
		if full.OnRetry != nil {
			full.OnRetry(Retry{Target: full.target(), Attempt: attempt, Err: err, Wait: wait, Left: left})
		} else {
			full.Logger.Warn("ssh: connection failed, retrying", "ssh", full.target(),
				"attempt", attempt, "of", b.Attempts, "retry_in", wait, "give_up_in", left.Round(time.Second), "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (retry cancelled: %w)", err, ctx.Err())
		case <-time.After(wait):
		}
		delay = min(delay*2, b.Max)
	}
}

// Reconnect closes t (and its forwards and processes) and dials the same
// server again with Redial. Callers re-create their forwards on the new
// Tunnel.
func (t *Tunnel) Reconnect(ctx context.Context) (*Tunnel, error) {
	t.Close()
	return Redial(ctx, t.cfg)
}

// Permanent says whether err is a failure that retrying cannot fix: a
// refused or unknown host key, a refused user key, an unusable key file or
// a bad configuration.
func Permanent(err error) bool {
	var hke *HostKeyError
	var ae *AuthError
	var kfe *KeyFileError
	var ce *configError
	return errors.As(err, &hke) || errors.As(err, &ae) || errors.As(err, &kfe) || errors.As(err, &ce)
}
