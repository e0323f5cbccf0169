package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	// Writable serves the disk for writing (no -r; no Snapshot): restore
	// into vSphere (docs/nbdkit-sendense-plugin.md, WRITABLE EXPORTS).
	Writable bool
}

// NBDKit is a running nbdkit serving one disk on a private unix socket.
type NBDKit struct {
	Socket  string
	cmd     *exec.Cmd
	errs    *tailbuf.Lines // nbdkit's "error:" lines (the plugin's and VDDK's included)
	last    *tailbuf.Lines // its last lines, whatever they are
	verbose bool
	done    chan struct{}
	err     error // exit status, valid after done is closed
}

// args returns nbdkit's command line: everything but the password, which
// comes from file descriptor 3. The export is read-only (-r) unless
// Writable: a backup never writes the disk it reads.
func (p *PluginSource) args(socket string) []string {
	a := []string{"--exit-with-parent", "-f", "-U", socket}
	if !p.Writable {
		a = append(a, "-r")
	}
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
	errs := &tailbuf.Lines{N: 4, Match: nbdkitError}
	last := &tailbuf.Lines{N: 3}
	cmd.Stderr = io.MultiWriter(errs, last)
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
	n := &NBDKit{Socket: socket, cmd: cmd, errs: errs, last: last, verbose: p.Verbose, done: make(chan struct{})}
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
			return n.Explain(fmt.Errorf("nbdkit exited (%v)", n.err))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.Dial("unix", n.Socket); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return n.Explain(fmt.Errorf("nbdkit did not listen on %s within %v", n.Socket, timeout))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Exited says, within wait, whether nbdkit exited, and how.
func (n *NBDKit) Exited(wait time.Duration) (bool, error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-n.done:
		return true, n.err
	case <-t.C:
		return false, nil
	}
}

// Explain adds nbdkit's side to err, the failure of a job reading from it
// (or of nbdkit itself): its own error lines (the plugin's and VDDK's
// messages), else its last lines; a hint when the problem is a known one;
// and with --verbose its command line (which holds no secret: the
// password goes through a pipe).
func (n *NBDKit) Explain(err error) error {
	said := n.errs.Lines()
	if exited, _ := n.Exited(0); len(said) == 0 && exited {
		said = n.last.Lines()
	}
	if len(said) == 0 {
		return err
	}
	var b strings.Builder
	for _, l := range said {
		b.WriteString("\n  ")
		b.WriteString(strings.TrimSpace(l))
	}
	if h := nbdkitHint(said); h != "" {
		b.WriteString("\n  hint: " + h)
	}
	if n.verbose {
		b.WriteString("\n  command: " + RedactArgs(n.cmd.Args))
	}
	return &ChildError{Err: err, Detail: b.String()}
}

// ChildError is a failure explained by what a child process (nbdkit and
// the plugin) said: Detail is its lines, indented, one per line.
type ChildError struct {
	Err    error
	Detail string
}

func (e *ChildError) Error() string { return e.Err.Error() + "; nbdkit said:" + e.Detail }
func (e *ChildError) Unwrap() error { return e.Err }

// nbdkitError says whether a line of nbdkit's is an error worth quoting:
// not the broken pipes of a client that went away.
func nbdkitError(line string) bool {
	return strings.Contains(line, "error:") && !strings.Contains(line, "Broken pipe") && !strings.Contains(line, "Connection reset by peer")
}

// nbdkitHint recognises problems whose fix is known from nbdkit's lines.
func nbdkitHint(lines []string) string {
	text := strings.Join(lines, "\n")
	switch {
	case strings.Contains(text, "FAKEVDDK_ROOT") && os.Getenv("FAKEVDDK_ROOT") == "":
		return "FAKEVDDK_ROOT is not set in sendense's environment: the fake VDDK (tests, the lab) reads the disks below it; " +
			"source the lab's env file (. lab.env, see docs/lab.md)"
	case strings.Contains(text, "libvixDiskLib") || strings.Contains(text, "cannot open shared object file"):
		return "VDDK could not be loaded: [vddk] libdir (--vddk-libdir, $SENDENSE_VDDK_LIBDIR) must be the VDDK directory, with " +
			"lib64/libvixDiskLib.so.N below it; sendense puts LIBDIR/lib64 on nbdkit's LD_LIBRARY_PATH for VDDK's own libraries"
	case strings.Contains(text, "thumbprint"):
		return "the server's certificate thumbprint differs: check [vcenter] thumbprint (--thumbprint)"
	case strings.Contains(text, "Cannot connect to host"):
		return "VDDK could not reach the ESXi host or vCenter from this machine (ports 443 and 902): check the network and the transports ([vddk] transports)"
	}
	return ""
}

// secretArg matches command-line parameters that may hold a secret, and
// secretRef the values that only say where it is.
var (
	secretArg = regexp.MustCompile(`^(-{0,2}[A-Za-z_-]*(password|passwd|token|secret|cookie)[A-Za-z_-]*)=(.*)$`)
	secretRef = regexp.MustCompile(`^(-[0-9]*|\+.*)$`)
)

// RedactArgs joins a command line for messages, with the values of
// password=, token= and similar parameters replaced by "***" unless they
// name where the secret is (-FD, +FILE, "-" for stdin).
func RedactArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if m := secretArg.FindStringSubmatch(a); m != nil && !secretRef.MatchString(m[3]) {
			a = m[1] + "=***"
		}
		if strings.ContainsAny(a, " '\"\t") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
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
