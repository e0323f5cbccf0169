package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ServeOptions control ServeNBD.
type ServeOptions struct {
	// Format of the image: "qcow2" (default) or "raw". Ignored with
	// NoBacking and Backing.
	Format string
	// ReadOnly exports the image read-only (--read-only).
	ReadOnly bool
	// NoBacking serves the qcow2 image alone, as if it had no backing
	// file (see Pinned): what verify reads to check an image's own
	// clusters. Use it read-only.
	NoBacking bool
	// Backing pins the image's backing chain (see Pinned): the image is
	// served through exactly these qcow2 files, top first, whatever its
	// header names.
	Backing []string
	// SocketDir is where the private (0700) directory holding the socket
	// is created; "" is the default temporary directory.
	SocketDir string
	// Discard passes trims and zero writes that may unmap to the image
	// (--discard=unmap), so clusters rewritten as zeroes are freed. With
	// qcow2 v3 images (what CreateImage makes) a discarded or zeroed
	// cluster of an overlay becomes a zero cluster: it never exposes the
	// backing file. Without it zero writes still make zero clusters but
	// keep any cluster already allocated, and trims are ignored.
	Discard bool
	// Cache is qemu-nbd's --cache mode. "" chooses by measurement
	// (docs/repository.md): "none" for writable exports (about 1.5x
	// faster than writeback for a full backup; it falls back to
	// writeback where O_DIRECT is not supported) and "writeback" for
	// read-only ones (the page cache helps readers).
	Cache string
	// AIO is qemu-nbd's --aio mode; "" is "threads" (io_uring and native
	// were not faster in our measurements and are not available
	// everywhere).
	AIO string
	// Shared is the most clients at once; 0 means no limit (--shared=0).
	Shared int
	// StartTimeout bounds the wait for the socket (default 30 s).
	StartTimeout time.Duration
}

// Server is a running qemu-nbd, persistent (it keeps serving after
// clients disconnect) until Close. Its context's cancellation also stops
// it. When the Runner runs it on another machine (an Exposer), URI is the
// local end of a forward to its socket, which Reconnect re-establishes
// after the connection to that machine was lost.
type Server struct {
	image  string
	dir    string
	socket string
	proc   Process
	runner Runner
	tool   string

	mu  sync.Mutex
	uri string    // "": the socket itself
	exp io.Closer // the exposure of a remote socket

	once      sync.Once
	closeErr  error
	closing   chan struct{}
	cancelled atomic.Bool // stopped because its context was cancelled
}

// URI is the NBD URI of the export (nbd+unix:///?socket=…) on this
// machine.
func (s *Server) URI() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.uri != "" {
		return s.uri
	}
	return "nbd+unix:///?socket=" + escapeQuery(s.socket)
}

// escapeQuery percent-encodes what a URI query value cannot hold, leaving
// the slashes of a path readable.
func escapeQuery(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte("/._-~", c) >= 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// Socket is the path of the unix socket (on the machine qemu-nbd runs on).
func (s *Server) Socket() string { return s.socket }

// Pid is qemu-nbd's process id.
func (s *Server) Pid() int { return s.proc.Pid() }

// ServeNBD starts qemu-nbd serving image on a unix socket in a new private
// directory and returns once the server answers an NBD handshake. Any
// number of clients may connect (unless opts.Shared) and the server keeps
// running between them until Close or until ctx is cancelled.
func (t *Tools) ServeNBD(ctx context.Context, image string, opts ServeOptions) (*Server, error) {
	cache := opts.Cache
	auto := cache == ""
	if auto {
		cache = "writeback"
		if !opts.ReadOnly {
			cache = "none"
		}
	}
	s, err := t.serve(ctx, image, opts, cache)
	if err != nil && auto && cache == "none" && noDirectIO(err) {
		slog.Debug("qemu-nbd: O_DIRECT not supported here, using --cache=writeback", "image", image)
		s, err = t.serve(ctx, image, opts, "writeback")
	}
	return s, err
}

// envStarter is a Runner that can add to a program's environment.
type envStarter interface {
	StartEnv(env []string, name string, args ...string) (Process, error)
}

// mallocTunables keep qemu-nbd's request buffers in its heap. qemu
// allocates a buffer per NBD request; with glibc's defaults a 256 KiB
// buffer is mmapped, or the heap's top is trimmed as requests complete,
// so every request faults its pages in again: measured on a full backup
// (4 GiB of data), 930,000 page faults and 2-3 s of qemu-nbd's CPU, a
// quarter of it, gone with these settings (20,000 faults). Requests are
// at most 32 MiB, glibc's largest mmap threshold.
const mallocTunables = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"

// serverEnv is what qemu-nbd's environment gets: mallocTunables, after
// (so overridden by) any GLIBC_TUNABLES of ours. Other C libraries ignore
// it.
func serverEnv() []string {
	v := mallocTunables
	if own := os.Getenv("GLIBC_TUNABLES"); own != "" {
		v += ":" + own
	}
	return []string{"GLIBC_TUNABLES=" + v}
}

// noDirectIO recognises qemu's complaint about O_DIRECT.
func noDirectIO(err error) bool {
	var ee *ExitError
	if !errors.As(err, &ee) {
		return false
	}
	return strings.Contains(ee.Stderr, "O_DIRECT") || strings.Contains(ee.Stderr, "Invalid argument")
}

func (t *Tools) serve(ctx context.Context, image string, opts ServeOptions, cache string) (*Server, error) {
	r := t.runner()
	dir, err := r.MkdirTemp(opts.SocketDir, "qemu-nbd-")
	if err != nil {
		return nil, fmt.Errorf("serve %s: private directory for the socket (--socket-dir): %w", image, err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	aio := opts.AIO
	if aio == "" {
		aio = "threads"
	}
	args := []string{
		"--persistent",
		"--shared=" + strconv.Itoa(opts.Shared),
		"--socket=" + sock,
		"--cache=" + cache,
		"--aio=" + aio,
	}
	if opts.ReadOnly {
		args = append(args, "--read-only")
	}
	if opts.Discard {
		args = append(args, "--discard=unmap")
	}
	name := image
	sec := t.secrets()
	if opts.NoBacking || opts.Backing != nil {
		name = sec.pinned(append([]string{image}, opts.Backing...)...)
	} else {
		f := opts.Format
		if f == "" {
			f = "qcow2"
		}
		args = append(args, "--format="+f)
	}
	args = append(append(args, sec.args()...), name)

	var proc Process
	if sec.key != nil {
		var sr SecretRunner
		if sr, err = sec.runner(); err == nil {
			proc, err = sr.StartSecret(sec.wire(), serverEnv(), t.nbd(), args...)
		}
	} else if es, ok := r.(envStarter); ok {
		proc, err = es.StartEnv(serverEnv(), t.nbd(), args...)
	} else {
		proc, err = r.Start(t.nbd(), args...)
	}
	if err != nil {
		r.RemoveAll(dir)
		return nil, fmt.Errorf("serve %s: %w", image, t.toolError(t.nbd(), err))
	}
	s := &Server{image: image, dir: dir, socket: sock, proc: proc, runner: r, tool: t.nbd(), closing: make(chan struct{})}
	if err := s.waitReady(ctx, opts.StartTimeout); err != nil {
		proc.Signal(syscall.SIGKILL)
		werr := proc.Wait()
		r.RemoveAll(dir)
		var ee *ExitError
		if errors.As(werr, &ee) && ctx.Err() == nil {
			return nil, fmt.Errorf("serve %s: %w", image, werr)
		}
		return nil, fmt.Errorf("serve %s: %w", image, err)
	}
	if ex, ok := r.(Exposer); ok {
		uri, c, err := ex.Expose(ctx, sock)
		if err != nil {
			proc.Signal(syscall.SIGKILL)
			proc.Wait()
			r.RemoveAll(dir)
			return nil, fmt.Errorf("serve %s: %w", image, err)
		}
		s.uri, s.exp = uri, c
	}
	go func() {
		select {
		case <-ctx.Done():
			s.cancelled.Store(true)
			proc.Signal(syscall.SIGTERM)
		case <-s.closing:
		case <-proc.Done():
		}
	}()
	return s, nil
}

// Reconnect makes the server reachable again after the connection to the
// machine it runs on was lost (a new forward through a new connection)
// and returns its new URI, once it answers. The server itself is the same
// process: what it acknowledged before the loss is still in it. A server
// that has exited is an error: it is never restarted, since a qcow2 image
// whose server was killed may hold writes that were never flushed. On
// this machine it only checks that the server still answers.
func (s *Server) Reconnect(ctx context.Context) (string, error) {
	select {
	case <-s.proc.Done():
		err := s.proc.Wait()
		if err == nil {
			err = errors.New("exited")
		}
		return "", fmt.Errorf("qemu-nbd serving %s is gone: %w", s.image, err)
	case <-s.closing:
		return "", fmt.Errorf("qemu-nbd serving %s: closed", s.image)
	default:
	}
	ex, ok := s.runner.(Exposer)
	if !ok {
		if err := s.probe(ctx); err != nil {
			return "", fmt.Errorf("qemu-nbd serving %s does not answer: %w", s.image, err)
		}
		return s.URI(), nil
	}
	s.mu.Lock()
	old := s.exp
	s.exp = nil
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	uri, c, err := ex.Expose(ctx, s.socket)
	if err != nil {
		return "", fmt.Errorf("qemu-nbd serving %s: %w", s.image, err)
	}
	if err := s.probe(ctx); err != nil {
		c.Close()
		return "", fmt.Errorf("qemu-nbd serving %s does not answer: %w", s.image, err)
	}
	s.mu.Lock()
	s.uri, s.exp = uri, c
	s.mu.Unlock()
	return uri, nil
}

// waitReady polls the socket until an NBD handshake succeeds.
func (s *Server) waitReady(ctx context.Context, timeout time.Duration) error {
	return waitServing(ctx, s.proc, "qemu-nbd", "answer on "+s.socket, timeout, func() error { return s.probe(ctx) })
}

// waitServing polls ready every 10 ms until it returns nil, proc exits
// (its error), ctx is done or timeout (default 30 s) passes; what names
// the tool, waiting what it waits for.
func waitServing(ctx context.Context, proc Process, tool, waiting string, timeout time.Duration, ready func() error) error {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = ready(); last == nil {
			return nil
		}
		select {
		case <-proc.Done():
			if err := proc.Wait(); err != nil {
				return err
			}
			return fmt.Errorf("%s exited before serving", tool)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("%s did not %s within %s: %v", tool, waiting, timeout, last)
		case <-tick.C:
		}
	}
}

// NBD handshake constants (the NBD protocol, "newstyle negotiation").
const (
	nbdMagic       = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic    = 0x49484156454F5054 // "IHAVEOPT"
	nbdOptAbort    = 2
	nbdFixedNew    = 1 << 0
	nbdNoZeroes    = 1 << 1
	probeIOTimeout = 2 * time.Second
)

// probe connects, reads the server's greeting and leaves politely with
// NBD_OPT_ABORT, so the server logs nothing.
func (s *Server) probe(ctx context.Context) error {
	c, err := s.runner.DialUnix(ctx, s.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeIOTimeout))
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return fmt.Errorf("reading the NBD greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != nbdOptMagic {
		return errors.New("not an NBD newstyle server")
	}
	flags := uint32(binary.BigEndian.Uint16(hello[16:]) & (nbdFixedNew | nbdNoZeroes))
	var msg bytes.Buffer
	binary.Write(&msg, binary.BigEndian, flags)
	binary.Write(&msg, binary.BigEndian, uint64(nbdOptMagic))
	binary.Write(&msg, binary.BigEndian, uint32(nbdOptAbort))
	binary.Write(&msg, binary.BigEndian, uint32(0))
	if _, err := c.Write(msg.Bytes()); err != nil {
		return fmt.Errorf("NBD handshake: %w", err)
	}
	// The server acknowledges the abort; its reply is not needed.
	var reply [20]byte
	io.ReadFull(c, reply[:])
	return nil
}

// Close stops the server (SIGTERM, then SIGKILL after 30 s), removes its
// directory and reports a bad exit: a server that died before Close, or
// that did not exit cleanly, is an error (a writable export may not have
// been flushed). Closing twice returns the first result.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.closing)
		var early bool
		select {
		case <-s.proc.Done():
			early = true
		default:
			s.proc.Signal(syscall.SIGTERM)
		}
		select {
		case <-s.proc.Done():
		case <-time.After(30 * time.Second):
			s.proc.Signal(syscall.SIGKILL)
		}
		err := s.proc.Wait()
		switch {
		case err != nil:
			s.closeErr = fmt.Errorf("qemu-nbd serving %s: %w", s.image, err)
		case early && !s.cancelled.Load():
			s.closeErr = fmt.Errorf("qemu-nbd serving %s exited before it was closed", s.image)
		}
		s.mu.Lock()
		exp := s.exp
		s.exp = nil
		s.mu.Unlock()
		if exp != nil {
			exp.Close()
		}
		if rerr := s.runner.RemoveAll(s.dir); rerr != nil && s.closeErr == nil {
			s.closeErr = fmt.Errorf("removing the socket directory %s: %w", s.dir, rerr)
		}
	})
	return s.closeErr
}
