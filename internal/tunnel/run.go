package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sendense/capture/internal/tailbuf"

	"golang.org/x/crypto/ssh"
)

// KillDelay is how long a killed remote command gets between SIGTERM and
// SIGKILL.
const KillDelay = 5 * time.Second

// ExitError is a remote command that ran and failed.
type ExitError struct {
	Target string // user@host:port
	Cmd    string // the command line
	Status int    // exit status; -1 when killed by a signal
	Signal string // the signal that killed it ("KILL"), if any
	Stderr string // its standard error, trimmed (the last 64 KiB at most)
}

func (e *ExitError) Error() string {
	status := fmt.Sprintf("exit status %d", e.Status)
	if e.Signal != "" {
		status = "killed by signal " + e.Signal
	}
	msg := fmt.Sprintf("ssh %s: remote command %s: %s", e.Target, shorten(e.Cmd), status)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

// shorten quotes a command line for messages, cut at 200 bytes.
func shorten(cmd string) string {
	if len(cmd) > 200 {
		cmd = cmd[:200] + "…"
	}
	return fmt.Sprintf("%q", cmd)
}

// Run runs cmd (a shell command line on the server: build it with
// ShellQuote) to completion with stdin (nil: none) and returns its
// standard output and error. A non-zero exit is an *ExitError carrying the
// status and standard error. Cancelling ctx kills the command.
func (t *Tunnel) Run(ctx context.Context, cmd string, stdin io.Reader) (stdout, stderr []byte, err error) {
	var out bytes.Buffer
	p, err := t.Start(ctx, cmd, stdin, &out)
	if err != nil {
		return nil, nil, err
	}
	err = p.Wait()
	return out.Bytes(), []byte(p.Stderr()), err
}

// Process is a remote command started with Start.
type Process struct {
	t      *Tunnel
	cmd    string
	sess   *ssh.Session
	stdin  io.WriteCloser // the session's stdin, held open to keep the command alive
	stderr *tailbuf.Buffer
	done   chan struct{}
	err    error

	once   sync.Once
	mu     sync.Mutex
	killed error // why the command was killed, if it was
	stop   func() bool
}

// Start starts cmd on the server. With stdin nil the command's standard
// input is /dev/null and the command is bound to its SSH session: its
// process group is terminated (SIGTERM, SIGKILL 5 s later) when the session
// or the connection ends for any reason, so a long-running server such as
// qemu-nbd never outlives the tunnel. With stdin set, the command reads it;
// a kill closes the session, which gives the command EOF on its input, and
// sends SIGTERM (OpenSSH delivers signals for non-root logins only), so a
// command that ignores both may outlive a kill. stdout (nil: discarded)
// receives its standard output; its standard error is kept for Stderr and
// errors. Cancelling ctx, Kill, Close and closing the Tunnel kill the
// command.
func (t *Tunnel) Start(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) (*Process, error) {
	if err := t.downErr(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sess, err := t.pick().client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("ssh %s: open a session for %s: %w", t.cfg.target(), shorten(cmd), err)
	}
	p := &Process{t: t, cmd: cmd, sess: sess, stderr: tailbuf.New(stderrLimit), done: make(chan struct{})}
	sess.Stdout = stdout
	sess.Stderr = p.stderr
	remote := cmd
	if stdin == nil {
		if p.stdin, err = sess.StdinPipe(); err != nil {
			sess.Close()
			return nil, fmt.Errorf("ssh %s: %w", t.cfg.target(), err)
		}
		remote = "sh -c " + ShellQuote(watchScript) + " sendense " + ShellQuote(cmd)
	} else {
		sess.Stdin = stdin
	}
	if err := sess.Start(remote); err != nil {
		sess.Close()
		return nil, fmt.Errorf("ssh %s: start %s: %w", t.cfg.target(), shorten(cmd), err)
	}
	if !t.adopt(p) {
		sess.Close()
		return nil, t.downErr()
	}
	p.stop = context.AfterFunc(ctx, func() { p.kill(ctx.Err()) })
	t.log.Debug("ssh: started remote command", "cmd", cmd)
	go p.wait()
	return p, nil
}

// watchScript runs "$1" with stdin from /dev/null and binds it to the
// session: when the session's stdin reaches EOF (we closed it or the
// session, or the connection is gone), or when the shell gets SIGTERM,
// SIGINT or SIGHUP, while the command runs, the whole process group (the
// session's: sshd makes each session a process group) gets SIGTERM, and
// SIGKILL 5 s later. A process group, because "sh -c" may fork the command
// rather than exec it (dash does). sshd's own "signal" requests are not
// enough: OpenSSH ignores them for root logins. The script exits with the
// command's status.
const watchScript = `exec 3<&0 </dev/null
sh -c "$1" 3<&- &
p=$!
trap "trap '' TERM; kill -TERM 0" TERM INT HUP
{ cat >/dev/null; kill -0 $$ || exit; trap '' TERM; kill -TERM 0; sleep 5; kill -KILL 0; } <&3 >/dev/null 2>&1 &
exec 3<&-
while :; do wait $p; s=$?; kill -0 $p 2>/dev/null || break; done
exit $s`

func (p *Process) wait() {
	err := p.sess.Wait()
	p.mu.Lock()
	killed := p.killed
	p.mu.Unlock()
	var ee *ssh.ExitError
	switch {
	case killed != nil:
		err = fmt.Errorf("ssh %s: remote command %s: %w", p.t.cfg.target(), shorten(p.cmd), killed)
	case errors.As(err, &ee):
		e := &ExitError{Target: p.t.cfg.target(), Cmd: p.cmd, Status: ee.ExitStatus(), Stderr: p.stderr.String()}
		if ee.Signal() != "" {
			e.Status, e.Signal = -1, ee.Signal()
		}
		err = e
	case err != nil:
		if down := p.t.downErr(); down != nil {
			err = down
		}
		err = fmt.Errorf("ssh %s: remote command %s ended without an exit status: %w", p.t.cfg.target(), shorten(p.cmd), err)
	}
	p.finish(err)
}

// finish records the outcome and releases everything, once.
func (p *Process) finish(err error) {
	p.once.Do(func() {
		p.err = err
		p.stop()
		p.sess.Close()
		p.t.release(p)
		close(p.done)
	})
}

// Done is closed when the command has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the command to exit; nil means exit status 0, an
// *ExitError a failure, other errors a kill or a lost connection.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Stderr is the command's standard error so far (the last 64 KiB).
func (p *Process) Stderr() string { return p.stderr.String() }

// Signal sends sig (SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
// SIGUSR2) to the command's process group; a no-op once it has exited.
func (p *Process) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	name, ok := signalNames[sig]
	if !ok {
		return fmt.Errorf("ssh tunnel: signal %v cannot be sent over SSH", sig)
	}
	return p.sess.Signal(name)
}

var signalNames = map[os.Signal]ssh.Signal{
	syscall.SIGTERM: ssh.SIGTERM, syscall.SIGKILL: ssh.SIGKILL, syscall.SIGINT: ssh.SIGINT,
	syscall.SIGHUP: ssh.SIGHUP, syscall.SIGQUIT: ssh.SIGQUIT, syscall.SIGUSR1: ssh.SIGUSR1,
	syscall.SIGUSR2: ssh.SIGUSR2,
}

// Kill terminates the command (SIGTERM, SIGKILL after KillDelay) and
// waits for it to end.
func (p *Process) Kill() error {
	p.kill(errors.New("killed"))
	<-p.done
	return nil
}

// Close is Kill.
func (p *Process) Close() error { return p.Kill() }

func (p *Process) kill(why error) {
	p.mu.Lock()
	if p.killed != nil {
		p.mu.Unlock()
		return
	}
	select {
	case <-p.done:
		p.mu.Unlock()
		return
	default:
	}
	p.killed = why
	p.mu.Unlock()
	p.sess.Signal(ssh.SIGTERM)
	if p.stdin != nil {
		p.stdin.Close() // the watch script terminates the command
	} else {
		p.sess.Close() // EOF on the command's input
	}
	go func() {
		select {
		case <-p.done:
			return
		case <-time.After(KillDelay + time.Second):
		}
		p.sess.Signal(ssh.SIGKILL)
		p.sess.Close()
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
			p.t.log.Warn("ssh: remote command did not exit after a kill; it may still be running",
				"cmd", p.cmd)
			p.finish(fmt.Errorf("ssh %s: remote command %s: %w (it did not confirm its exit)",
				p.t.cfg.target(), shorten(p.cmd), why))
		}
	}()
}

// ShellQuote quotes each argument for a POSIX shell and joins them with
// spaces: the result is a command line that runs exactly args.
func ShellQuote(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = quote(a)
	}
	return strings.Join(q, " ")
}

func quote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_@%+=:,./-", c) >= 0) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// stderrLimit bounds the standard error kept per command.
const stderrLimit = 64 << 10
