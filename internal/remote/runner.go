package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/pkg/sftp"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/tunnel"
)

// Host is a qemu.Runner that runs the tools on the remote machine.
var (
	_ qemu.Runner       = (*Host)(nil)
	_ qemu.Exposer      = (*Host)(nil)
	_ qemu.Locator      = (*Host)(nil)
	_ qemu.SecretRunner = (*Host)(nil)
)

// Run runs name with args there (one SSH session) and returns its
// standard output; see qemu.Runner. A missing program matches
// exec.ErrNotFound; a failure is a *qemu.ExitError with the standard
// error.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return h.runTool(ctx, nil, tunnel.ShellQuote(append([]string{name}, args...)...), name, args)
}

// RunSecret implements qemu.SecretRunner: the secret travels in the SSH
// session's standard input into a pipe the program reads as file
// descriptor 3 (qemu.SecretPath) — never argv, environment or a file.
func (h *Host) RunSecret(ctx context.Context, secret []byte, name string, args ...string) ([]byte, error) {
	if bytes.ContainsAny(secret, "\n\x00") {
		return nil, errors.New("a secret for a remote program must be one line of text")
	}
	cmd := script(secretRunScript, "sendense-secret", append([]string{name}, args...)...)
	return h.runTool(ctx, bytes.NewReader(append(bytes.Clone(secret), '\n')), cmd, name, args)
}

// StartSecret implements qemu.SecretRunner (env is not passed: Start
// runs the program in the remote user's environment).
func (h *Host) StartSecret(secret []byte, _ []string, name string, args ...string) (qemu.Process, error) {
	ctx, cancel := context.WithTimeout(h.ctx, h.opts.DialTimeout+30*time.Second)
	defer cancel()
	if bytes.ContainsAny(secret, "\n\x00") {
		return nil, errors.New("a secret for a remote program must be one line of text")
	}
	o, _, err := h.launch(ctx, bytes.NewReader(append(bytes.Clone(secret), '\n')), secretStartScript, name, args,
		append([]string{name}, args...)...)
	if err != nil {
		return nil, err
	}
	return o, nil
}

func (h *Host) runTool(ctx context.Context, stdin io.Reader, cmd, name string, args []string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out, stderr, err := h.runIn(ctx, cmd, stdin)
	if err == nil {
		return out, nil
	}
	if ctx.Err() != nil {
		return out, fmt.Errorf("%s %s on %s: %w", name, firstArg(args), h.where, ctx.Err())
	}
	var ee *tunnel.ExitError
	if errors.As(err, &ee) {
		if ee.Status == 127 && strings.Contains(string(stderr), "not found") {
			return out, &notFoundError{tool: name, where: h.where}
		}
		e := &qemu.ExitError{Tool: name, Args: args, Code: ee.Status, Stderr: ee.Stderr,
			Status: fmt.Sprintf("exit status %d on %s", ee.Status, h.where)}
		if ee.Signal != "" {
			e.Code, e.Status = -1, "killed by signal "+ee.Signal+" on "+h.where
		}
		return out, e
	}
	return out, fmt.Errorf("%s %s on %s: %w", name, firstArg(args), h.where, err)
}

// firstArg is the sub-command (qemu-img) for messages.
func firstArg(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

// Start starts a long-running program there (qemu-nbd) under a lease: it
// survives a dropped connection for Options.Grace, so that the agent can
// reconnect to it, and stops when the lease expires.
func (h *Host) Start(name string, args ...string) (qemu.Process, error) {
	ctx, cancel := context.WithTimeout(h.ctx, h.opts.DialTimeout+30*time.Second)
	defer cancel()
	o, _, err := h.launch(ctx, nil, startScript, name, args, append([]string{name}, args...)...)
	if err != nil {
		return nil, err
	}
	return o, nil
}

// MkdirTemp creates a new directory there, 0700 from the start (under
// the remote temporary directory when dir is "").
func (h *Host) MkdirTemp(dir, pattern string) (string, error) {
	if dir == "" {
		dir = h.tmpDir
	}
	ctx, cancel := context.WithTimeout(h.ctx, h.opts.DialTimeout+30*time.Second)
	defer cancel()
	t, _, err := h.conn(ctx)
	if err != nil {
		return "", err
	}
	p, err := mkdirTemp(ctx, t, dir, pattern)
	if err != nil {
		return "", fmt.Errorf("on %s: %w", h.where, err)
	}
	return p, nil
}

// RemoveAll removes path there and anything under it (nil when it does
// not exist).
func (h *Host) RemoveAll(p string) error {
	return h.sftpOp(func(sc *sftp.Client) error {
		if err := removeAll(sc, p); err != nil {
			return fmt.Errorf("removing %s on %s: %w", p, h.where, err)
		}
		return nil
	})
}

// DialUnix connects to a unix socket there through the tunnel.
func (h *Host) DialUnix(ctx context.Context, p string) (net.Conn, error) {
	t, _, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	return t.DialUnix(ctx, p)
}

// Expose forwards a local socket to the unix socket p there and returns
// its NBD URI (qemu.Exposer). It reconnects first when the tunnel died.
func (h *Host) Expose(ctx context.Context, p string) (string, io.Closer, error) {
	t, _, err := h.conn(ctx)
	if err != nil {
		return "", nil, err
	}
	f, err := t.ForwardUnix(ctx, p)
	if err != nil {
		return "", nil, err
	}
	return f.URI(), f, nil
}
