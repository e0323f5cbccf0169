// Package remote runs a backup repository on another machine (the
// control plane) over the SSH tunnel: Host implements the repository's
// file system (repo.FS) with SFTP and remote locks, and qemu.Runner with
// commands in SSH sessions, so that qemu-img and qemu-nbd run where the
// images are and the repository works there exactly as on this machine.
//
// Files: SFTP (github.com/pkg/sftp) over the tunnel's SSH client. Atomic
// writes are a temporary file in the same directory, fsync@openssh.com,
// posix-rename@openssh.com and an fsync of the directory.
//
// Leases: qemu-nbd servers and locks must outlive a dropped connection
// long enough for a backup to reconnect and resume, and must not outlive
// an agent that is gone. Each is a program started in its own session on
// the remote machine (setsid, so the end of an SSH session does not stop
// it) under a small supervisor that stops it when the Host's lease has not
// been renewed for Options.Grace; a lock is a flock held by such a
// program. One SSH session per Host renews the lease (a heartbeat the
// agent drives, so a connection that stalls stops renewing it) and reports
// programs that exited. See docs/repository.md, "Remote repositories".
package remote

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/tunnel"
)

// Defaults of Options.
const (
	DefaultGrace       = 2 * time.Minute
	DefaultTick        = 200 * time.Millisecond
	DefaultDialTimeout = 30 * time.Second
)

// ErrLeaseExpired says that the remote side stopped this agent's
// programs and released its locks because the lease was not renewed in
// time (the connection was down for longer than Options.Grace).
var ErrLeaseExpired = errors.New("the lease on the remote machine expired (the connection was down for too long): its qemu-nbd servers were stopped and its locks released")

// errClosed is returned after Close.
var errClosed = errors.New("remote repository connection closed")

// Options tune a Host. Zero values mean the defaults.
type Options struct {
	// Grace is how long programs and locks survive on the remote side
	// after the last lease renewal (default 2 minutes): the time a backup
	// has to reconnect after its connection dropped, and the longest a
	// lock of an agent that died stays held. Whole seconds.
	Grace time.Duration
	// Tick is how often the lease is renewed (default 200 ms); it also
	// bounds how soon an exited program is noticed.
	Tick time.Duration
	// DialTimeout bounds a reconnection made for one operation (default
	// 30 s).
	DialTimeout time.Duration
	// Logger receives warnings (default slog.Default()).
	Logger *slog.Logger
}

// Host is a connection to one remote machine through the tunnel: the
// repository's file system and the runner of its QEMU tools. It redials
// (through Dial, e.g. the Services' tunnel pool) when the tunnel died.
// Its methods are safe for concurrent use.
type Host struct {
	dial   func(context.Context) (*tunnel.Tunnel, error)
	opts   Options
	log    *slog.Logger
	name   string // ssh://user@host:port
	where  string // user@host:port
	tmpDir string // the remote temporary directory
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	t        *tunnel.Tunnel
	sc       *sftp.Client
	leaseDir string // "" until the first lease
	hb       *heartbeat
	objs     map[string]*object // live leased programs, by directory
	closed   bool
}

// Needed are the programs the remote side needs besides the shell: the
// QEMU tools, and what the scripts use.
var Needed = []string{"qemu-img", "qemu-nbd", "flock", "setsid", "mktemp", "sleep", "mv", "rm", "stat"}

// packageOf is the Debian package holding each needed program.
var packageOf = map[string]string{"qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils", "flock": "util-linux", "setsid": "util-linux"}

// Open connects to the remote machine with dial, starts SFTP and checks
// that the programs it needs are installed there: a missing qemu-img or
// qemu-nbd is a *qemu.ToolMissingError naming the machine and the
// Debian package, with every missing program named in the message.
func Open(ctx context.Context, dial func(context.Context) (*tunnel.Tunnel, error), opts Options) (*Host, error) {
	if opts.Grace <= 0 {
		opts.Grace = DefaultGrace
	}
	if opts.Grace < time.Second {
		opts.Grace = time.Second
	}
	if opts.Tick <= 0 {
		opts.Tick = DefaultTick
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	h := &Host{dial: dial, opts: opts, objs: map[string]*object{}, log: opts.Logger}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.mu.Lock()
	t, _, err := h.connLocked(ctx)
	h.mu.Unlock()
	if err != nil {
		h.cancel()
		return nil, err
	}
	cfg := t.Config()
	h.where = fmt.Sprintf("%s@%s:%d", cfg.User, cfg.Host, cfg.Port)
	h.name = "ssh://" + h.where
	h.log = opts.Logger.With("remote", h.where)
	if err := h.preflight(ctx, t); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// preflight learns the temporary directory and checks the programs.
func (h *Host) preflight(ctx context.Context, t *tunnel.Tunnel) error {
	out, _, err := t.Run(ctx, script(preflightScript, "sendense-preflight", Needed...), nil)
	if err != nil {
		return fmt.Errorf("checking the programs on %s: %w", h.where, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	h.tmpDir = strings.TrimRight(lines[0], "/")
	if h.tmpDir == "" || !path.IsAbs(h.tmpDir) {
		h.tmpDir = "/tmp"
	}
	missing := lines[1:]
	if len(missing) == 0 {
		return nil
	}
	pkgs := map[string]bool{}
	var names []string
	for _, m := range missing {
		names = append(names, m)
		if p := packageOf[m]; p != "" {
			pkgs[p] = true
		} else {
			pkgs["coreutils"] = true
		}
	}
	var list []string
	for p := range pkgs {
		list = append(list, p)
	}
	sort.Strings(list)
	msg := fmt.Sprintf("%s not installed or not in $PATH on %s (the remote repository runs them there): install the Debian package(s) %s there",
		strings.Join(names, ", "), h.where, strings.Join(list, ", "))
	for _, m := range missing {
		if strings.HasPrefix(m, "qemu-") {
			return &missingError{msg: msg, tool: &qemu.ToolMissingError{Tool: m, Where: h.where, Err: exec.ErrNotFound}}
		}
	}
	return errors.New(msg)
}

// missingError names every missing program and unwraps to the
// *qemu.ToolMissingError of the first QEMU tool.
type missingError struct {
	msg  string
	tool *qemu.ToolMissingError
}

func (e *missingError) Error() string { return e.msg }
func (e *missingError) Unwrap() error { return e.tool }

// Name is "ssh://user@host:port" (repo.FS).
func (h *Host) Name() string { return h.name }

// Where is "user@host:port" (qemu.Locator).
func (h *Host) Where() string { return h.where }

// conn returns the live tunnel and SFTP client, reconnecting when the
// tunnel died.
func (h *Host) conn(ctx context.Context) (*tunnel.Tunnel, *sftp.Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.connLocked(ctx)
}

func (h *Host) connLocked(ctx context.Context) (*tunnel.Tunnel, *sftp.Client, error) {
	if h.closed {
		return nil, nil, errClosed
	}
	if h.t != nil && h.t.Err() == nil && h.sc != nil {
		return h.t, h.sc, nil
	}
	dctx, cancel := context.WithTimeout(ctx, h.opts.DialTimeout)
	defer cancel()
	t, err := h.dial(dctx)
	if err != nil {
		return nil, nil, err
	}
	sc, err := sftp.NewClient(t.Client())
	if err != nil {
		return nil, nil, fmt.Errorf("ssh %s: starting SFTP (the server needs the sftp subsystem: Subsystem sftp in sshd_config): %w", t.Config().Host, err)
	}
	if h.sc != nil {
		h.sc.Close()
	}
	reconnected := h.t != nil
	h.t, h.sc = t, sc
	if reconnected && h.log != nil {
		h.log.Info("reconnected to the remote repository's machine")
	}
	if h.leaseDir != "" {
		// Our programs and locks: still leased, or gone for good.
		if _, err := sc.Stat(h.leaseDir); errors.Is(err, os.ErrNotExist) {
			h.leasesLostLocked()
		} else if h.hb == nil {
			if err := h.startHeartbeatLocked(t); err != nil {
				return nil, nil, err
			}
		}
	}
	return t, sc, nil
}

// sftpOp runs fn with the SFTP client, reconnecting first if needed.
func (h *Host) sftpOp(fn func(sc *sftp.Client) error) error {
	_, sc, err := h.conn(context.Background())
	if err != nil {
		return err
	}
	return fn(sc)
}

// run runs a shell command line there and maps a missing program (exit
// status 127) to an error matching exec.ErrNotFound.
func (h *Host) run(ctx context.Context, cmd string) ([]byte, []byte, error) {
	return h.runIn(ctx, cmd, nil)
}

// runIn is run with stdin as the command's standard input (nil: none).
func (h *Host) runIn(ctx context.Context, cmd string, stdin io.Reader) ([]byte, []byte, error) {
	t, _, err := h.conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	return t.Run(ctx, cmd, stdin)
}

// script is the command line running a script with sh -c.
func script(body, name string, args ...string) string {
	return tunnel.ShellQuote(append([]string{"sh", "-c", body, name}, args...)...)
}

// ensureLeases makes the lease directory and starts the heartbeat.
func (h *Host) ensureLeases(ctx context.Context) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, sc, err := h.connLocked(ctx)
	if err != nil {
		return "", err
	}
	if h.leaseDir != "" {
		return h.leaseDir, nil
	}
	dir, err := mkdirTemp(ctx, t, h.tmpDir, "sendense-lease-")
	if err != nil {
		return "", fmt.Errorf("lease directory on %s: %w", h.where, err)
	}
	h.leaseDir = dir
	if err := h.startHeartbeatLocked(t); err != nil {
		h.leaseDir = ""
		removeAll(sc, dir)
		return "", err
	}
	return dir, nil
}

// graceSeconds is Grace in whole seconds for the scripts.
func (h *Host) graceSeconds() string {
	return strconv.Itoa(int((h.opts.Grace + time.Second - 1) / time.Second))
}

// heartbeat is the session renewing the lease; it also carries signals
// to leased programs.
type heartbeat struct {
	proc *tunnel.Process
	stop chan struct{}
	once sync.Once
	cmds chan string

	mu      sync.Mutex
	waiters map[string][]chan struct{} // object name → signal requests
}

// poke makes the heartbeat look for exited programs now (no lease
// renewal is lost if it cannot).
func (hb *heartbeat) poke() {
	select {
	case hb.cmds <- "\n":
	default:
	}
}

func (hb *heartbeat) close() {
	hb.once.Do(func() { close(hb.stop) })
}

// signal asks the heartbeat to signal a program and waits for the
// answer; false when the heartbeat could not (it ended, or no answer in
// time).
func (hb *heartbeat) signal(name string, pid int, sig string, wait bool, timeout time.Duration) bool {
	w := "0"
	if wait {
		w = "1"
	}
	ch := make(chan struct{})
	hb.mu.Lock()
	hb.waiters[name] = append(hb.waiters[name], ch)
	hb.mu.Unlock()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case hb.cmds <- fmt.Sprintf("kill %s %d %s %s\n", name, pid, sig, w):
	case <-hb.stop:
		return false
	case <-timer.C:
		return false
	}
	select {
	case <-ch:
		return true
	case <-hb.stop:
	case <-timer.C:
	}
	return false
}

// answered wakes the requests waiting for object name.
func (hb *heartbeat) answered(name string) {
	hb.mu.Lock()
	chs := hb.waiters[name]
	delete(hb.waiters, name)
	hb.mu.Unlock()
	for _, ch := range chs {
		close(ch)
	}
}

func (h *Host) startHeartbeatLocked(t *tunnel.Tunnel) error {
	pr, pw := io.Pipe()
	dir := h.leaseDir
	hb := &heartbeat{stop: make(chan struct{}), cmds: make(chan string), waiters: map[string][]chan struct{}{}}
	lines := &lineWriter{fn: func(line string) { h.heartbeatLine(hb, dir, line) }}
	proc, err := t.Start(h.ctx, script(heartbeatScript, "sendense-heartbeat", dir), pr, lines)
	if err != nil {
		pw.Close()
		return fmt.Errorf("starting the lease heartbeat on %s: %w", h.where, err)
	}
	hb.proc = proc
	h.hb = hb
	go func() {
		tick := time.NewTicker(h.opts.Tick)
		defer tick.Stop()
		defer pw.Close()
		line := "\n"
		for {
			if _, err := io.WriteString(pw, line); err != nil {
				return
			}
			select {
			case <-hb.stop:
				return
			case line = <-hb.cmds:
			case <-tick.C:
				line = "\n"
			}
		}
	}()
	go func() {
		err := proc.Wait()
		pr.CloseWithError(io.ErrClosedPipe)
		hb.close()
		h.mu.Lock()
		if h.hb == hb {
			h.hb = nil
		}
		closed := h.closed
		h.mu.Unlock()
		if err != nil && !closed {
			h.log.Debug("remote lease heartbeat ended", "err", err)
		}
	}()
	return nil
}

// heartbeatLine handles one report of the heartbeat of lease directory
// dir.
func (h *Host) heartbeatLine(hb *heartbeat, dir, line string) {
	switch {
	case strings.HasPrefix(line, "signalled "):
		hb.answered(strings.TrimPrefix(line, "signalled "))
	case line == "gone":
		h.mu.Lock()
		if h.leaseDir == dir && !h.closed {
			h.leasesLostLocked()
		}
		h.mu.Unlock()
	case strings.HasPrefix(line, "exit "):
		rest := strings.TrimPrefix(line, "exit ")
		i := strings.LastIndexByte(rest, ' ')
		if i < 0 {
			return
		}
		odir, status := rest[:i], rest[i+1:]
		h.mu.Lock()
		o := h.objs[odir]
		delete(h.objs, odir)
		h.mu.Unlock()
		if o != nil {
			go o.exited(status)
		}
	}
}

// leasesLostLocked ends every leased object: the remote side stopped
// them.
func (h *Host) leasesLostLocked() {
	if h.leaseDir != "" {
		h.log.Error("remote leases expired: the remote qemu-nbd servers were stopped and the locks released", "dir", h.leaseDir)
	}
	objs := h.objs
	h.objs = map[string]*object{}
	h.leaseDir = ""
	if h.hb != nil {
		h.hb.close()
		h.hb = nil
	}
	for _, o := range objs {
		o.finish(fmt.Errorf("%s on %s: %w", o.what(), h.where, ErrLeaseExpired))
	}
}

// Close stops what this Host still runs on the remote side (servers,
// locks), ends the heartbeat, removes the lease directory and closes
// SFTP. The tunnel belongs to the caller (the pool). Safe to call twice.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	t, sc, dir, hb := h.t, h.sc, h.leaseDir, h.hb
	objs := h.objs
	h.objs = map[string]*object{}
	h.hb = nil
	h.mu.Unlock()
	up := t != nil && t.Err() == nil
	if up && len(objs) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		for _, o := range objs {
			if _, _, err := t.Run(ctx, script(signalScript, "sendense-signal", o.dir, strconv.Itoa(o.pid), "TERM", "1"), nil); err != nil {
				h.log.Warn("stopping a remote program", "program", o.what(), "err", err)
			}
		}
		cancel()
	}
	if hb != nil {
		// End of input ends the heartbeat; then nothing writes into the
		// lease directory any more.
		hb.close()
		select {
		case <-hb.proc.Done():
		case <-time.After(5 * time.Second):
			hb.proc.Kill()
		}
	}
	if up && dir != "" {
		// A supervisor may still be writing its program's status.
		var err error
		for range 5 {
			if err = removeAll(sc, dir); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			h.log.Warn("removing the lease directory", "dir", dir, "err", err)
		}
	}
	for _, o := range objs {
		o.finish(fmt.Errorf("%s on %s: %w", o.what(), h.where, errClosed))
	}
	if sc != nil {
		sc.Close()
	}
	h.cancel()
	return nil
}

// lineWriter calls fn with each complete line written to it.
type lineWriter struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.fn(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// mktempScript makes a new directory, mode 0700 from the start (mktemp
// -d), named PATTERN plus random characters under DIR, and prints it.
//
//	$1 = DIR, $2 = PATTERN
const mktempScript = `umask 077 && exec mktemp -d "$1/$2XXXXXXXXXX"`

// mkdirTemp makes a new directory, mode 0700 in one step, named pattern
// plus a random suffix under dir, with a command on t.
func mkdirTemp(ctx context.Context, t *tunnel.Tunnel, dir, pattern string) (string, error) {
	out, _, err := t.Run(ctx, script(mktempScript, "sendense-mktemp", dir, pattern), nil)
	if err != nil {
		return "", fmt.Errorf("mktemp -d in %s: %w", dir, err)
	}
	p := strings.TrimSpace(string(out))
	if !path.IsAbs(p) || path.Dir(p) != path.Clean(dir) {
		return "", fmt.Errorf("mktemp -d in %s: unexpected answer %q", dir, out)
	}
	return p, nil
}

// removeAll removes p and everything under it; entries that disappear
// meanwhile (removed by someone else) are no error, nor is a missing p.
func removeAll(sc *sftp.Client, p string) error {
	fi, err := sc.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		entries, err := sc.ReadDir(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		for _, e := range entries {
			if err := removeAll(sc, path.Join(p, e.Name())); err != nil {
				return err
			}
		}
		err = sc.RemoveDirectory(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := sc.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// scanLines is bufio.ScanLines over a string.
func scanLines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
