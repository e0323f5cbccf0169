package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pkg/sftp"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/tunnel"
)

// object is a leased program on the remote side: a qemu-nbd (a
// qemu.Process) or the holder of a lock (a repo.Lock).
type object struct {
	h    *Host
	dir  string // its private directory under the lease directory
	pid  int
	name string
	args []string

	done chan struct{}
	once sync.Once
	err  error // set before done is closed

	mu       sync.Mutex
	unlocked bool // a lock released on purpose
}

func (o *object) what() string {
	if o.name == "sleep" {
		return "lock holder"
	}
	return o.name
}

// finish records how the program ended, once.
func (o *object) finish(err error) {
	o.once.Do(func() {
		o.err = err
		close(o.done)
	})
}

// exited handles the heartbeat's report: the exit status and standard
// error, then the object's directory goes.
func (o *object) exited(status string) {
	code, err := strconv.Atoi(status)
	if err != nil {
		code = -1
	}
	var stderr string
	_ = o.h.sftpOp(func(sc *sftp.Client) error {
		stderr = readTail(sc, path.Join(o.dir, "stderr"), 64<<10)
		return removeAll(sc, o.dir)
	})
	if code == 0 {
		o.finish(nil)
		return
	}
	e := &qemu.ExitError{Tool: o.name, Args: o.args, Code: code, Stderr: stderr, Status: "exit status " + status}
	if code > 128 && code < 160 {
		e.Code = -1
		e.Status = "signal: " + syscall.Signal(code-128).String()
	}
	o.finish(e)
}

// readTail reads the last n bytes of a remote file ("" on errors).
func readTail(sc *sftp.Client, p string, n int64) string {
	f, err := sc.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return string(b)
}

// Pid is the program's process id on the remote machine.
func (o *object) Pid() int { return o.pid }

// Done is closed when the program has exited (or its lease expired).
func (o *object) Done() <-chan struct{} { return o.done }

// Wait waits for the program to exit: nil for exit status 0, a
// *qemu.ExitError with its standard error for a failure, another error
// when it was lost (lease expired, the remote machine unreachable).
func (o *object) Wait() error {
	<-o.done
	return o.err
}

// Signal sends sig to the program (a no-op once it has exited). When the
// remote machine cannot be reached to deliver it, the object is given up
// (Wait returns why): its lease ends it there.
func (o *object) Signal(sig os.Signal) error {
	return o.signal(sig, false)
}

func (o *object) signal(sig os.Signal, wait bool) error {
	select {
	case <-o.done:
		return nil
	default:
	}
	name := signalName(sig)
	if name == "" {
		return fmt.Errorf("signal %v cannot be sent to a remote program", sig)
	}
	o.h.mu.Lock()
	hb := o.h.hb
	o.h.mu.Unlock()
	if hb != nil && hb.signal(path.Base(o.dir), o.pid, name, wait, 15*time.Second) {
		// Notice the exit soon, not at the next tick.
		go func() {
			for range 25 {
				select {
				case <-o.done:
					return
				case <-hb.stop:
					return
				case <-time.After(10 * time.Millisecond):
					hb.poke()
				}
			}
		}()
		return nil
	}
	w := "0"
	if wait {
		w = "1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.h.opts.DialTimeout)
	defer cancel()
	_, _, err := o.h.run(ctx, script(signalScript, "sendense-signal", o.dir, strconv.Itoa(o.pid), name, w))
	var ee *tunnel.ExitError
	if err != nil && !errors.As(err, &ee) {
		o.h.forget(o)
		o.finish(fmt.Errorf("%s on %s: lost contact (%w); it stops by itself within %v when its lease expires",
			o.what(), o.h.where, err, o.h.opts.Grace))
	}
	return err
}

func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGKILL:
		return "KILL"
	case syscall.SIGINT:
		return "INT"
	case syscall.SIGHUP:
		return "HUP"
	}
	return ""
}

// forget stops tracking o.
func (h *Host) forget(o *object) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.objs[o.dir] == o {
		delete(h.objs, o.dir)
	}
}

// launch runs a start or lock script, which prints "DIR PID", and
// registers the object.
func (h *Host) launch(ctx context.Context, stdin io.Reader, body, name string, args []string, scriptArgs ...string) (*object, int, error) {
	leases, err := h.ensureLeases(ctx)
	if err != nil {
		return nil, 0, err
	}
	cmd := script(body, "sendense-launch", append([]string{superviseScript, leases, h.graceSeconds()}, scriptArgs...)...)
	out, _, err := h.runIn(ctx, cmd, stdin)
	var ee *tunnel.ExitError
	if errors.As(err, &ee) {
		if ee.Status == 127 {
			tool := name
			if i := strings.Index(ee.Stderr, ": not found"); i > 0 {
				tool = strings.TrimSpace(ee.Stderr[:i])
			}
			return nil, ee.Status, &notFoundError{tool: tool, where: h.where}
		}
		return nil, ee.Status, err
	}
	if err != nil {
		return nil, 0, err
	}
	f := strings.Fields(strings.TrimSpace(string(out)))
	if len(f) < 2 {
		return nil, 0, fmt.Errorf("starting %s on %s: unexpected answer %q", name, h.where, out)
	}
	pid, err := strconv.Atoi(f[len(f)-1])
	if err != nil {
		return nil, 0, fmt.Errorf("starting %s on %s: unexpected answer %q", name, h.where, out)
	}
	dir := strings.Join(f[:len(f)-1], " ")
	o := &object{h: h, dir: dir, pid: pid, name: name, args: args, done: make(chan struct{})}
	h.mu.Lock()
	switch {
	case h.closed:
		h.mu.Unlock()
		o.signal(syscall.SIGTERM, false)
		return nil, 0, errClosed
	case h.leaseDir != leases:
		h.mu.Unlock()
		return nil, 0, fmt.Errorf("starting %s on %s: %w", name, h.where, ErrLeaseExpired)
	}
	h.objs[dir] = o
	h.mu.Unlock()
	return o, 0, nil
}

// notFoundError is a program missing on the remote machine; it matches
// exec.ErrNotFound, which qemu turns into a *qemu.ToolMissingError.
type notFoundError struct{ tool, where string }

func (e *notFoundError) Error() string {
	return fmt.Sprintf("%s: not found on %s", e.tool, e.where)
}

func (e *notFoundError) Unwrap() error { return exec.ErrNotFound }

// remoteLock is a flock held on the remote machine by a leased program.
type remoteLock struct {
	o    *object
	path string
}

// Unlock releases the lock: the holder is killed and gone when Unlock
// returns. Safe to call twice.
func (l *remoteLock) Unlock() {
	if l == nil || l.o == nil {
		return
	}
	l.o.mu.Lock()
	if l.o.unlocked {
		l.o.mu.Unlock()
		return
	}
	l.o.unlocked = true
	l.o.mu.Unlock()
	if err := l.o.signal(syscall.SIGTERM, true); err != nil {
		l.o.h.log.Warn("releasing a remote lock; it is released within the lease's grace period anyway",
			"lock", l.path, "err", err, "grace", l.o.h.opts.Grace)
	}
}

// Err is nil while the lock is held, else why it was lost (its lease
// expired).
func (l *remoteLock) Err() error {
	select {
	case <-l.o.done:
	default:
		return nil
	}
	l.o.mu.Lock()
	unlocked := l.o.unlocked
	l.o.mu.Unlock()
	if unlocked {
		return errors.New("unlocked")
	}
	if l.o.err != nil {
		return l.o.err
	}
	return fmt.Errorf("the holder of lock %s on %s exited", l.path, l.o.h.where)
}

// pollInterval is how often WaitLock tries a busy remote lock.
const pollInterval = 250 * time.Millisecond
