package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sendense/capture/internal/childenv"
	"github.com/sendense/capture/internal/tailbuf"
)

// PluginSource says how nbdkit and our plugin read one disk of a snapshot.
type PluginSource struct {
	Plugin       string // path of nbdkit-sendense-plugin.so, or "sendense"
	Libdir       string
	Server       string // host name or address
	Port         int
	User         string
	Password     string // passed on a pipe (password=-FD), never in argv
	Thumbprint   string
	VM           string // moref
	Snapshot     string // moref
	File         string // "[ds] dir/disk.vmdk"
	Transports   string
	VDDKConfig   string
	ChangedAreas string // file of changed areas (incremental), "" for full
	Verbose      bool
}

// NBDKit is a running nbdkit serving one disk on a private unix socket.
type NBDKit struct {
	Socket string
	cmd    *exec.Cmd
	stderr *tailbuf.Buffer
	done   chan struct{}
	err    error // exit status, valid after done is closed
}

// args returns nbdkit's command line: everything but the password, which
// comes from file descriptor 3. The export is read-only (-r): a backup
// never writes the disk it reads.
func (p *PluginSource) args(socket string) []string {
	a := []string{"--exit-with-parent", "-f", "-r", "-U", socket}
	if p.Verbose {
		a = append(a, "-v")
	}
	a = append(a, p.Plugin, "file="+p.File, "libdir="+p.Libdir)
	add := func(k, v string) {
		if v != "" {
			a = append(a, k+"="+v)
		}
	}
	if p.Server != "" {
		add("server", p.Server)
		if p.Port != 0 {
			add("port", strconv.Itoa(p.Port))
		}
		add("user", p.User)
		a = append(a, "password=-3")
		add("thumbprint", p.Thumbprint)
		add("vm", "moref="+p.VM)
	}
	add("snapshot", p.Snapshot)
	add("transports", p.Transports)
	add("config", p.VDDKConfig)
	add("changed-areas", p.ChangedAreas)
	return a
}

// StartNBDKit starts nbdkit with the plugin on dir/name.sock and waits
// until it accepts connections. LD_LIBRARY_PATH gets $libdir/lib64, where
// VDDK's own libraries live.
func StartNBDKit(ctx context.Context, p PluginSource, dir, name string) (*NBDKit, error) {
	socket := filepath.Join(dir, name+".sock")
	cmd := exec.Command("nbdkit", p.args(socket)...)
	cmd.Env = childenv.Environ("LD_LIBRARY_PATH=" + joinPath(filepath.Join(p.Libdir, "lib64"), os.Getenv("LD_LIBRARY_PATH")))
	stderr := tailbuf.New(16 << 10)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var pwr *os.File
	if p.Server != "" {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		defer r.Close()
		cmd.ExtraFiles = []*os.File{r}
		pwr = w
	}
	slog.Debug("starting nbdkit", "args", strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		if pwr != nil {
			pwr.Close()
		}
		if errors.Is(err, exec.ErrNotFound) {
			return nil, errors.New("nbdkit not found: install it (Debian package nbdkit)")
		}
		return nil, fmt.Errorf("starting nbdkit: %w", err)
	}
	if pwr != nil {
		_, err := pwr.WriteString(p.Password)
		pwr.Close()
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("passing the password to nbdkit: %w", err)
		}
	}
	n := &NBDKit{Socket: socket, cmd: cmd, stderr: stderr, done: make(chan struct{})}
	go func() { n.err = cmd.Wait(); close(n.done) }()
	if err := n.waitReady(ctx, 60*time.Second); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

// URI is the NBD URI of the export.
func (n *NBDKit) URI() string { return "nbd+unix:///?socket=" + n.Socket }

func (n *NBDKit) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-n.done:
			return fmt.Errorf("nbdkit exited (%v): %s", n.err, errorText(n.stderr))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.Dial("unix", n.Socket); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nbdkit did not listen on %s within %v: %s", n.Socket, timeout, errorText(n.stderr))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Err explains a failed copy from nbdkit's side: if nbdkit exits within
// wait, its exit status and error messages, else nil.
func (n *NBDKit) Err(wait time.Duration) error {
	select {
	case <-n.done:
		return fmt.Errorf("nbdkit exited (%v): %s", n.err, errorText(n.stderr))
	case <-time.After(wait):
		return nil
	}
}

// Stop terminates nbdkit and waits for it.
func (n *NBDKit) Stop() {
	select {
	case <-n.done:
		return
	default:
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
	}
}

func joinPath(a, b string) string {
	if b == "" {
		return a
	}
	return a + ":" + b
}

// errorText returns the "error:" lines of the output, or its last line.
func errorText(t *tailbuf.Buffer) string {
	var errs []string
	lines := bytes.Split(bytes.TrimSpace(t.Bytes()), []byte("\n"))
	for _, l := range lines {
		if bytes.Contains(l, []byte("error:")) {
			errs = append(errs, string(bytes.TrimSpace(l)))
		}
	}
	if len(errs) == 0 && len(lines) > 0 {
		errs = append(errs, string(lines[len(lines)-1]))
	}
	return strings.Join(errs, "; ")
}
