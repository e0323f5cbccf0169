package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/sendense/capture/internal/childenv"
	"github.com/sendense/capture/internal/tailbuf"
)

// Runner runs the QEMU tools. LocalRunner runs them on this machine; a
// remote implementation (the control plane, over SSH) runs them where the
// images are, so every file system path handed to a Runner is a path on
// that machine.
type Runner interface {
	// Run runs name with args to completion and returns its standard
	// output. A failure to start returns an error matching exec.ErrNotFound
	// when the program is missing; a bad exit returns an *ExitError that
	// carries the standard error.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	// Start starts a long-running program (a server). Its standard error
	// is kept for error reports.
	Start(name string, args ...string) (Process, error)
	// MkdirTemp creates a new directory, mode 0700, under dir (the default
	// temporary directory when dir is "").
	MkdirTemp(dir, pattern string) (string, error)
	// RemoveAll removes path and anything under it.
	RemoveAll(path string) error
	// DialUnix connects to a unix socket.
	DialUnix(ctx context.Context, path string) (net.Conn, error)
}

// Exposer is implemented by a Runner whose unix sockets are on another
// machine (the control plane, over SSH): Expose makes the socket at path
// there reachable from this machine and returns the NBD URI to connect to
// (e.g. a forwarded local socket) and what to close to stop exposing it.
// ServeNBD uses it so that Server.URI works here.
type Exposer interface {
	Expose(ctx context.Context, path string) (uri string, c io.Closer, err error)
}

// Locator is implemented by a Runner that runs the tools elsewhere: Where
// names that machine for messages ("sendense@cp.example.com:22").
type Locator interface {
	Where() string
}

// Process is a program started with Runner.Start.
type Process interface {
	Pid() int
	// Signal sends sig to the process (a no-op once it has exited).
	Signal(sig os.Signal) error
	// Done is closed when the process has exited.
	Done() <-chan struct{}
	// Wait waits for the exit and returns nil for a zero exit status,
	// else an *ExitError with the standard error.
	Wait() error
}

// ExitError is a tool that ran and failed.
type ExitError struct {
	Tool   string   // program name, e.g. "qemu-img"
	Args   []string // its arguments
	Status string   // "exit status 1", "signal: killed"
	Code   int      // exit status; -1 when killed by a signal
	Stderr string   // standard error, trimmed (the last 64 KiB at most)
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("%s %s: %s", e.Tool, firstArg(e.Args), e.Status)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

// firstArg is the sub-command of a qemu-img call, or the image served by
// qemu-nbd (its last argument).
func firstArg(args []string) string {
	if len(args) == 0 {
		return ""
	}
	if !strings.HasPrefix(args[0], "-") {
		return args[0]
	}
	return args[len(args)-1]
}

// ToolMissingError says that a QEMU program is not installed.
type ToolMissingError struct {
	Tool  string
	Where string // the machine it is missing on ("": this one)
	Err   error
}

func (e *ToolMissingError) Error() string {
	pkg := "qemu-utils"
	if e.Tool == ToolStorageDaemon {
		pkg = "qemu-system-common"
	}
	if e.Where != "" {
		return fmt.Sprintf("%s is not installed or not in $PATH on %s: install the Debian package %s there (apt-get install %s)", e.Tool, e.Where, pkg, pkg)
	}
	return fmt.Sprintf("%s is not installed or not in $PATH: install the Debian package %s (apt-get install %s)", e.Tool, pkg, pkg)
}

func (e *ToolMissingError) Unwrap() error { return e.Err }

// stderrLimit bounds the standard error kept per process.
const stderrLimit = 64 << 10

// LocalRunner runs the tools on this machine. Children get their own
// process group, so a terminal's ^C reaches sendense only, which then stops
// them in order (context cancellation sends SIGTERM, and SIGKILL after
// KillDelay).
type LocalRunner struct {
	// KillDelay is how long a cancelled command may take to exit after
	// SIGTERM (default 10 s).
	KillDelay time.Duration
}

func (r LocalRunner) killDelay() time.Duration {
	if r.KillDelay > 0 {
		return r.KillDelay
	}
	return 10 * time.Second
}

// Run implements Runner.
func (r LocalRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return r.RunSecret(ctx, nil, name, args...)
}

// secretPipe returns the read end of a pipe holding secret (nil for no
// secret), to pass as file descriptor 3 (SecretPath): the secret never
// touches a file system.
func secretPipe(secret []byte) (*os.File, error) {
	if secret == nil {
		return nil, nil
	}
	rd, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	_, err = w.Write(secret) // far less than a pipe's buffer
	w.Close()
	if err != nil {
		rd.Close()
		return nil, err
	}
	return rd, nil
}

// RunSecret implements SecretRunner.
func (r LocalRunner) RunSecret(ctx context.Context, secret []byte, name string, args ...string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = childenv.Environ()
	pipe, err := secretPipe(secret)
	if err != nil {
		return nil, err
	}
	if pipe != nil {
		defer pipe.Close()
		cmd.ExtraFiles = []*os.File{pipe}
	}
	var stdout bytes.Buffer
	stderr := tailbuf.New(stderrLimit)
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	// Its own process group (a terminal's ^C reaches sendense only), and
	// killed when sendense dies: a tool never outlives its caller.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = r.killDelay()
	err = cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	if ctx.Err() != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w", name, firstArg(args), ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.Bytes(), &ExitError{Tool: name, Args: args, Status: ee.ProcessState.String(), Code: ee.ExitCode(), Stderr: stderr.String()}
	}
	return stdout.Bytes(), err
}

// Start implements Runner. The child gets SIGTERM if sendense dies.
func (r LocalRunner) Start(name string, args ...string) (Process, error) {
	return r.StartEnv(nil, name, args...)
}

// StartEnv is Start with env ("KEY=value") added to the child's
// environment.
func (r LocalRunner) StartEnv(env []string, name string, args ...string) (Process, error) {
	return r.StartSecret(nil, env, name, args...)
}

// StartSecret implements SecretRunner.
func (r LocalRunner) StartSecret(secret []byte, env []string, name string, args ...string) (Process, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = childenv.Environ(env...)
	pipe, err := secretPipe(secret)
	if err != nil {
		return nil, err
	}
	if pipe != nil {
		defer pipe.Close() // the child has its own copy once started
		cmd.ExtraFiles = []*os.File{pipe}
	}
	p := &localProcess{cmd: cmd, stderr: tailbuf.New(stderrLimit), done: make(chan struct{})}
	cmd.Stderr = p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// MkdirTemp implements Runner.
func (LocalRunner) MkdirTemp(dir, pattern string) (string, error) {
	return os.MkdirTemp(dir, pattern) // always 0700
}

// RemoveAll implements Runner.
func (LocalRunner) RemoveAll(path string) error { return os.RemoveAll(path) }

// DialUnix implements Runner.
func (LocalRunner) DialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

type localProcess struct {
	cmd    *exec.Cmd
	stderr *tailbuf.Buffer
	done   chan struct{}
	err    error
}

func (p *localProcess) Pid() int              { return p.cmd.Process.Pid }
func (p *localProcess) Done() <-chan struct{} { return p.done }

func (p *localProcess) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

func (p *localProcess) Wait() error {
	<-p.done
	if p.err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return &ExitError{Tool: p.cmd.Args[0], Args: p.cmd.Args[1:], Status: ee.ProcessState.String(), Code: ee.ExitCode(), Stderr: p.stderr.String()}
	}
	return p.err
}
