package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Export is one export of a Daemon: the block node (see PinnedNode) served
// under Name.
type Export struct {
	Name string
	// Node is the block node exported (a qemu --blockdev object without
	// its node-name). With Writable it is the backing file of a
	// throw-away qcow2 overlay created in the daemon's private directory,
	// and is never written.
	Node     map[string]any
	Capacity uint64 // the overlay's size (Writable)
	Writable bool
}

// DaemonOptions control StartDaemon.
type DaemonOptions struct {
	// Listen is where the NBD server listens: "unix:PATH" (a new socket,
	// PATH must not exist, mode 0600) or "tcp:HOST:PORT"; "" is a socket
	// in a new private directory.
	Listen string
	// TLSDir, if set, is a directory of x509 files in QEMU's layout
	// (ca-cert.pem, server-cert.pem, server-key.pem): clients must use TLS.
	TLSDir  string
	Exports []Export
	// StartTimeout bounds the wait for the daemon (default 30 s).
	StartTimeout time.Duration
}

// Daemon is a qemu-storage-daemon on this machine serving several exports
// on one NBD server, until Close or its context's cancellation.
type Daemon struct {
	dir    string // private: the pid file and the overlays
	listen string
	tls    bool
	socket string // the unix socket it listens on, removed by Close
	proc   Process
}

// URI is the NBD URI of export name.
func (d *Daemon) URI(name string) string {
	kind, addr, _ := ParseListen(d.listen)
	if kind == "unix" {
		abs, _ := filepath.Abs(addr)
		return "nbd+unix:///" + escapeQuery(name) + "?socket=" + escapeQuery(abs)
	}
	scheme := "nbd"
	if d.tls {
		scheme = "nbds"
	}
	return scheme + "://" + addr + "/" + escapeQuery(name)
}

// ToolStorageDaemon is the qemu-storage-daemon program (Debian
// qemu-system-common).
const ToolStorageDaemon = "qemu-storage-daemon"

// ParseListen checks a --listen address ("unix:PATH" or "tcp:HOST:PORT")
// and returns its kind and address.
func ParseListen(s string) (kind, addr string, err error) {
	kind, addr, ok := strings.Cut(s, ":")
	switch {
	case !ok || addr == "":
		return "", "", fmt.Errorf("listen address %q: use unix:PATH or tcp:HOST:PORT", s)
	case kind == "unix":
		return kind, addr, nil
	case kind == "tcp":
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", "", fmt.Errorf("listen address %q: %v (use tcp:HOST:PORT, [::1]:PORT for IPv6)", s, err)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", "", fmt.Errorf("listen address %q: the port must be 1-65535", s)
		}
		if host == "" {
			return "", "", fmt.Errorf("listen address %q: name the host or address to listen on (0.0.0.0 for every IPv4 address)", s)
		}
		return kind, addr, nil
	}
	return "", "", fmt.Errorf("listen address %q: use unix:PATH or tcp:HOST:PORT", s)
}

// IsLoopback says whether a tcp listen address only accepts connections
// from this machine.
func IsLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// StartDaemon starts qemu-storage-daemon with opts' exports and returns
// once it serves them (it writes its pid file only then).
func (t *Tools) StartDaemon(ctx context.Context, opts DaemonOptions) (*Daemon, error) {
	dir, err := os.MkdirTemp("", "sendense-mount-")
	if err != nil {
		return nil, fmt.Errorf("private directory: %w", err)
	}
	if opts.Listen == "" {
		opts.Listen = "unix:" + filepath.Join(dir, "nbd.sock")
	}
	kind, addr, err := ParseListen(opts.Listen)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	d := &Daemon{dir: dir, listen: opts.Listen, tls: opts.TLSDir != ""}
	server := map[string]any{}
	if kind == "unix" {
		if _, err := os.Lstat(addr); err == nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("listen address %s: the file exists; remove it or choose another path", addr)
		}
		server["addr"] = map[string]any{"type": "unix", "path": addr}
	} else {
		host, port, _ := net.SplitHostPort(addr)
		server["addr"] = map[string]any{"type": "inet", "host": host, "port": port}
	}
	args := []string{}
	add := func(flag string, v any) {
		b, _ := json.Marshal(v)
		args = append(args, flag, string(b))
	}
	if opts.TLSDir != "" {
		abs, err := filepath.Abs(opts.TLSDir)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		for _, f := range []string{"ca-cert.pem", "server-cert.pem", "server-key.pem"} {
			if _, err := os.Stat(filepath.Join(abs, f)); err != nil {
				os.RemoveAll(dir)
				return nil, fmt.Errorf("TLS credentials: %w (the directory needs ca-cert.pem, server-cert.pem and server-key.pem)", err)
			}
		}
		add("--object", map[string]any{"qom-type": "tls-creds-x509", "id": "tls0", "dir": abs, "endpoint": "server", "verify-peer": false})
		server["tls-creds"] = "tls0"
	}
	// The server first (exports need it); clients are told its URIs only
	// once the exports are there (the pid file).
	add("--nbd-server", server)
	for i, e := range opts.Exports {
		node := map[string]any{}
		for k, v := range e.Node {
			node[k] = v
		}
		name := fmt.Sprintf("n%d", i)
		if e.Writable {
			overlay := filepath.Join(dir, fmt.Sprintf("overlay-%d.qcow2", i))
			if err := t.createOverlay(ctx, overlay, e.Capacity); err != nil {
				os.RemoveAll(dir)
				return nil, err
			}
			node["read-only"] = true
			node = map[string]any{
				"driver":  "qcow2",
				"file":    map[string]any{"driver": "file", "filename": overlay},
				"backing": node,
			}
		} else {
			node["read-only"] = true
		}
		node["node-name"] = name
		add("--blockdev", node)
		add("--export", map[string]any{"type": "nbd", "id": fmt.Sprintf("e%d", i), "node-name": name,
			"name": e.Name, "writable": e.Writable})
	}
	pidfile := filepath.Join(dir, "pid")
	args = append(args, "--pidfile", pidfile)
	proc, err := LocalRunner{}.Start(ToolStorageDaemon, args...)
	if err != nil {
		os.RemoveAll(dir)
		return nil, (&Tools{}).toolError(ToolStorageDaemon, err)
	}
	d.proc = proc
	if err := d.waitReady(ctx, pidfile, opts.StartTimeout); err != nil {
		d.Close()
		return nil, err
	}
	if kind == "unix" {
		d.socket = addr // it made it: Close removes it
		// Whoever can connect reads the disks: the owner only.
		if err := os.Chmod(addr, 0o600); err != nil {
			d.Close()
			return nil, fmt.Errorf("listen address %s: %w", addr, err)
		}
	}
	go func() {
		select {
		case <-ctx.Done():
			proc.Signal(syscall.SIGTERM)
		case <-proc.Done():
		}
	}()
	return d, nil
}

// createOverlay creates an empty qcow2 image (no backing file in its
// header: the daemon is given its backing node).
func (t *Tools) createOverlay(ctx context.Context, path string, size uint64) error {
	if _, err := (&Tools{Runner: LocalRunner{}, QemuImg: t.img()}).runImgPrivate(ctx, nil, "create", "-q", "-f", "qcow2", path, strconv.FormatUint(size, 10)); err != nil {
		return fmt.Errorf("creating the overlay of a writable export: %w", err)
	}
	return nil
}

func (d *Daemon) waitReady(ctx context.Context, pidfile string, timeout time.Duration) error {
	return waitServing(ctx, d.proc, "qemu-storage-daemon", "write its pid file", timeout, func() error {
		if b, err := os.ReadFile(pidfile); err != nil || len(b) == 0 {
			return errors.New("no pid file yet")
		}
		return nil
	})
}

// Socket is the unix socket it listens on ("" for TCP).
func (d *Daemon) Socket() string { return d.socket }

// Done is closed when the daemon has exited.
func (d *Daemon) Done() <-chan struct{} { return d.proc.Done() }

// Close stops the daemon (SIGTERM, SIGKILL after 30 s) and removes its
// private directory with the overlays. A daemon that failed is an error.
func (d *Daemon) Close() error {
	var err error
	if d.proc != nil {
		d.proc.Signal(syscall.SIGTERM)
		select {
		case <-d.proc.Done():
		case <-time.After(30 * time.Second):
			d.proc.Signal(syscall.SIGKILL)
		}
		if werr := d.proc.Wait(); werr != nil {
			var ee *ExitError
			// SIGTERM is how it is stopped.
			if !errors.As(werr, &ee) || ee.Code != -1 && ee.Code != 0 {
				err = werr
			}
		}
	}
	if fi, serr := os.Lstat(d.socket); d.socket != "" && serr == nil && fi.Mode().Type() == os.ModeSocket {
		os.Remove(d.socket)
	}
	if rerr := os.RemoveAll(d.dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}
