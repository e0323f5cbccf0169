// Package guestfs reads the file systems of a disk served over NBD with
// libguestfs: one guestfish process (Debian libguestfs-tools) per
// Session, read-only, driven through its standard input. guestfish
// boots a small appliance VM: about 15-25 s here without KVM (see
// docs/recovery.md for the measurement), once per session.
package guestfs

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/sendense/capture/internal/childenv"
)

// Session is a running guestfish with one disk added and its appliance
// launched.
type Session struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	marker string
	done   chan struct{}
}

// ErrMissing says guestfish is not installed.
var ErrMissing = errors.New("guestfish is not installed: install the Debian package libguestfs-tools (apt-get install libguestfs-tools)")

// Open starts guestfish read-only on export of the NBD server listening
// on the unix socket sock and launches its appliance. Where the
// appliance cannot use KVM (a nested or restricted host: QEMU aborts),
// it starts again with software emulation.
func Open(ctx context.Context, sock, export string) (*Session, error) {
	s, err := open(ctx, sock, export, nil)
	if err != nil && !errors.Is(err, ErrMissing) && ctx.Err() == nil {
		s, err = open(ctx, sock, export, []string{"LIBGUESTFS_BACKEND_SETTINGS=force_tcg"})
	}
	return s, err
}

func open(ctx context.Context, sock, export string, env []string) (*Session, error) {
	if _, err := exec.LookPath("guestfish"); err != nil {
		return nil, ErrMissing
	}
	b := make([]byte, 16)
	rand.Read(b)
	s := &Session{marker: "@@sendense-" + hex.EncodeToString(b) + "@@", done: make(chan struct{})}
	s.cmd = exec.CommandContext(ctx, "guestfish", "--ro")
	s.cmd.Env = childenv.Environ(append([]string{"LIBGUESTFS_BACKEND=direct"}, env...)...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var err error
	if s.in, err = s.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	// One stream: an error is seen before the marker that follows it.
	s.cmd.Stdout, s.cmd.Stderr = pw, pw
	s.out = bufio.NewReader(pr)
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting guestfish: %w", err)
	}
	go func() { s.cmd.Wait(); pw.CloseWithError(errors.New("guestfish exited")); close(s.done) }()
	if _, err := s.Do("add", export, "protocol:nbd", "server:unix:"+sock, "format:raw", "readonly:true"); err != nil {
		s.Close()
		return nil, err
	}
	if _, err := s.Do("run"); err != nil {
		s.Close()
		return nil, fmt.Errorf("launching the libguestfs appliance: %w", err)
	}
	return s, nil
}

// quote makes arg one guestfish word.
func quote(arg string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(arg) + `"`
}

// Do runs one guestfish command and returns its output; what guestfish
// says went wrong is the error.
func (s *Session) Do(args ...string) (string, error) {
	var line strings.Builder
	line.WriteString("-" + args[0]) // "-": guestfish goes on after an error
	for _, a := range args[1:] {
		if strings.ContainsAny(a, "\n\r\x00") {
			return "", fmt.Errorf("%q: a line break or NUL cannot be passed to guestfish", a)
		}
		line.WriteString(" " + quote(a))
	}
	fmt.Fprintf(&line, "\necho %s\n", s.marker)
	if _, err := io.WriteString(s.in, line.String()); err != nil {
		return "", fmt.Errorf("guestfish: %w", err)
	}
	var out, errs strings.Builder
	for {
		l, err := s.out.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("guestfish %s: %w: %s", args[0], err, strings.TrimSpace(errs.String()))
		}
		if strings.TrimRight(l, "\n") == s.marker {
			break
		}
		if strings.HasPrefix(l, "*stdin*:") || strings.HasPrefix(l, "libguestfs: error:") {
			errs.WriteString(l)
			continue
		}
		out.WriteString(l)
	}
	if errs.Len() > 0 {
		msg := strings.TrimSpace(errs.String())
		if i := strings.Index(msg, "libguestfs: error: "); i >= 0 {
			msg = msg[i+len("libguestfs: error: "):]
		}
		return out.String(), errors.New(msg)
	}
	return out.String(), nil
}

// Filesystems lists the file systems guestfish finds (device → type),
// without swap and what it cannot identify.
func (s *Session) Filesystems() ([][2]string, error) {
	out, err := s.Do("list-filesystems")
	if err != nil {
		return nil, err
	}
	var fss [][2]string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		dev, typ, ok := strings.Cut(l, ": ")
		if ok && typ != "unknown" && typ != "swap" {
			fss = append(fss, [2]string{dev, typ})
		}
	}
	return fss, nil
}

// Close ends guestfish (and its appliance), killing it after a minute.
func (s *Session) Close() {
	io.WriteString(s.in, "exit\n")
	s.in.Close()
	go io.Copy(io.Discard, s.out)
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		s.cmd.Process.Kill()
		<-s.done
	}
}
