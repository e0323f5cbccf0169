package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/crypto/ssh"
)

// Forward is a local unix socket, in a private directory (mode 0700),
// whose every connection is carried to a remote address as one SSH
// channel. It lives until Close or until its Tunnel goes down.
type Forward struct {
	t      *Tunnel
	remote string // as given, for messages
	kind   string // "unix" or "tcp"
	open   func(c *conn) (ssh.Channel, error)
	dir    string
	sock   string
	ln     *net.UnixListener

	mu     sync.Mutex
	conns  map[*net.UnixConn]struct{}
	err    error
	closed bool
	wg     sync.WaitGroup
}

// ForwardUnix forwards a local socket to the unix socket remoteSocket on
// the server (channel type direct-streamlocal@openssh.com; the server needs
// AllowStreamLocalForwarding, OpenSSH's default). ctx bounds the setup only.
func (t *Tunnel) ForwardUnix(ctx context.Context, remoteSocket string) (*Forward, error) {
	if remoteSocket == "" {
		return nil, errors.New("ssh tunnel: forward: empty remote socket path")
	}
	return t.forward(ctx, "unix", remoteSocket, func(c *conn) (ssh.Channel, error) {
		return t.openUnix(c, remoteSocket)
	})
}

// ForwardTCP forwards a local socket to hostport as seen from the server
// (channel type direct-tcpip; the server needs AllowTcpForwarding, OpenSSH's
// default). ctx bounds the setup only.
func (t *Tunnel) ForwardTCP(ctx context.Context, hostport string) (*Forward, error) {
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	return t.forward(ctx, "tcp", hostport, func(c *conn) (ssh.Channel, error) {
		return t.openTCP(c, host, port)
	})
}

func (t *Tunnel) forward(ctx context.Context, kind, remote string, open func(*conn) (ssh.Channel, error)) (*Forward, error) {
	if err := t.downErr(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := privateDir()
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("ssh tunnel: forward to %s: %w", remote, err)
	}
	f := &Forward{t: t, remote: remote, kind: kind, open: open, dir: dir, sock: sock, ln: ln,
		conns: map[*net.UnixConn]struct{}{}}
	if !t.adopt(f) {
		ln.Close()
		os.RemoveAll(dir)
		return nil, t.downErr()
	}
	f.wg.Add(1)
	go f.accept()
	t.log.Debug("ssh: forwarding", "socket", sock, "to", kind+":"+remote)
	return f, nil
}

// privateDir makes a new 0700 directory for a socket, short enough for a
// socket path (108 bytes on Linux).
func privateDir() (string, error) {
	base := os.TempDir()
	if len(base) > 60 {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "sendense-tunnel-")
	if err != nil {
		return "", fmt.Errorf("ssh tunnel: private socket directory: %w", err)
	}
	return dir, nil
}

// Socket is the local socket's path.
func (f *Forward) Socket() string { return f.sock }

// URI is the NBD URI of the local socket: nbd+unix:///?socket=PATH.
func (f *Forward) URI() string { return "nbd+unix:///?socket=" + uriEscape(f.sock) }

// Remote is the forwarded remote address (socket path or host:port).
func (f *Forward) Remote() string { return f.remote }

// Err is the last failure to open a channel for a local connection (such a
// connection is closed at once), or nil.
func (f *Forward) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Close stops forwarding, closes the connections in progress and removes
// the private directory. It is safe to call more than once.
func (f *Forward) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.ln.Close()
	f.wg.Wait()
	f.t.release(f)
	if err := os.RemoveAll(f.dir); err != nil {
		return fmt.Errorf("ssh tunnel: forward: %w", err)
	}
	return nil
}

func (f *Forward) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.AcceptUnix()
		if err != nil {
			f.mu.Lock()
			closed := f.closed
			f.mu.Unlock()
			if !closed && !errors.Is(err, net.ErrClosed) {
				f.t.log.Error("ssh: forward: accept", "socket", f.sock, "err", err)
			}
			return
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(c)
			ch, err := f.open(f.t.pick())
			if err != nil {
				f.mu.Lock()
				f.err = err
				f.mu.Unlock()
				f.t.log.Warn("ssh: forward: channel refused; closing the local connection", "socket", f.sock, "err", err)
				c.Close()
				return
			}
			f.t.splice(c, ch)
		}()
	}
}

func (f *Forward) track(c *net.UnixConn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forward) untrack(c *net.UnixConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

// DialUnix connects to the unix socket remoteSocket on the server. The
// connection is one end of a local socketpair spliced to an SSH channel, so
// it supports deadlines and half-close, and its File gives a descriptor
// for libnbd's ConnectSocket. It is closed when the Tunnel goes down.
func (t *Tunnel) DialUnix(ctx context.Context, remoteSocket string) (net.Conn, error) {
	return t.dialRemote(ctx, remoteSocket, func(c *conn) (ssh.Channel, error) { return t.openUnix(c, remoteSocket) })
}

// DialTCP is DialUnix for hostport as seen from the server.
func (t *Tunnel) DialTCP(ctx context.Context, hostport string) (net.Conn, error) {
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	return t.dialRemote(ctx, hostport, func(c *conn) (ssh.Channel, error) { return t.openTCP(c, host, port) })
}

func (t *Tunnel) dialRemote(ctx context.Context, remote string, open func(*conn) (ssh.Channel, error)) (net.Conn, error) {
	if err := t.downErr(); err != nil {
		return nil, err
	}
	type result struct {
		ch  ssh.Channel
		err error
	}
	res := make(chan result, 1)
	go func() {
		ch, err := open(t.pick())
		res <- result{ch, err}
	}()
	var r result
	select {
	case r = <-res:
	case <-ctx.Done():
		go func() {
			if r := <-res; r.ch != nil {
				r.ch.Close()
			}
		}()
		return nil, fmt.Errorf("ssh %s: connect to %s: %w", t.cfg.target(), remote, ctx.Err())
	}
	if r.err != nil {
		return nil, r.err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		r.ch.Close()
		return nil, fmt.Errorf("ssh tunnel: socketpair: %w", err)
	}
	mine, err := fileConn(fds[0])
	if err != nil {
		syscall.Close(fds[1])
		r.ch.Close()
		return nil, err
	}
	theirs, err := fileConn(fds[1])
	if err != nil {
		mine.Close()
		r.ch.Close()
		return nil, err
	}
	sp := &splicer{c: mine}
	if !t.adopt(sp) {
		mine.Close()
		theirs.Close()
		r.ch.Close()
		return nil, t.downErr()
	}
	go func() {
		t.splice(mine, r.ch)
		t.release(sp)
	}()
	return theirs, nil
}

// splicer closes a DialUnix/DialTCP splice when the Tunnel goes down.
type splicer struct{ c *net.UnixConn }

func (s *splicer) Close() error { return s.c.Close() }

func fileConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "socketpair")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("ssh tunnel: socketpair: %w", err)
	}
	return c.(*net.UnixConn), nil
}

// openUnix opens a direct-streamlocal@openssh.com channel.
func (t *Tunnel) openUnix(c *conn, path string) (ssh.Channel, error) {
	payload := ssh.Marshal(struct {
		Path      string
		Reserved0 string
		Reserved1 uint32
	}{Path: path})
	ch, reqs, err := c.client.OpenChannel("direct-streamlocal@openssh.com", payload)
	if err != nil {
		return nil, t.openError("unix socket "+path, "AllowStreamLocalForwarding", err)
	}
	go ssh.DiscardRequests(reqs)
	return ch, nil
}

// openTCP opens a direct-tcpip channel.
func (t *Tunnel) openTCP(c *conn, host string, port uint32) (ssh.Channel, error) {
	payload := ssh.Marshal(struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}{Host: host, Port: port, OriginHost: "127.0.0.1"})
	ch, reqs, err := c.client.OpenChannel("direct-tcpip", payload)
	if err != nil {
		return nil, t.openError(net.JoinHostPort(host, strconv.Itoa(int(port))), "AllowTcpForwarding, PermitOpen", err)
	}
	go ssh.DiscardRequests(reqs)
	return ch, nil
}

func (t *Tunnel) openError(what, options string, err error) error {
	var oce *ssh.OpenChannelError
	if errors.As(err, &oce) {
		switch oce.Reason {
		case ssh.Prohibited:
			return fmt.Errorf("ssh %s: the server does not allow forwarding to %s (check %s in its sshd_config): %w",
				t.cfg.target(), what, options, err)
		case ssh.ConnectionFailed:
			return fmt.Errorf("ssh %s: the server could not connect to %s (is the NBD server running there?): %w",
				t.cfg.target(), what, err)
		}
	}
	if down := t.downErr(); down != nil {
		return fmt.Errorf("ssh %s: connect to %s: %w", t.cfg.target(), what, down)
	}
	return fmt.Errorf("ssh %s: connect to %s: %w", t.cfg.target(), what, err)
}

func splitHostPort(hostport string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, fmt.Errorf("ssh tunnel: forward to %q: want host:port: %w", hostport, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("ssh tunnel: forward to %q: bad port %q", hostport, p)
	}
	return host, uint32(port), nil
}

// uriEscape percent-encodes what may not appear raw in a URI query value.
func uriEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("/-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

var _ io.Closer = (*Forward)(nil)
