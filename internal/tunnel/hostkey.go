package tunnel

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyError is a host key that is not in the known_hosts file
// (Known empty), differs from the one recorded there (Known lists the
// recorded keys), or is marked @revoked.
type HostKeyError struct {
	Addr    string                // host:port
	File    string                // the known_hosts file
	Key     ssh.PublicKey         // the key the server presented
	Line    string                // the known_hosts line for Key
	Known   []knownhosts.KnownKey // the keys recorded for the host
	Revoked *knownhosts.KnownKey  // the @revoked entry matching Key
}

// Changed says whether the host has other keys on record.
func (e *HostKeyError) Changed() bool { return len(e.Known) > 0 && e.Revoked == nil }

func (e *HostKeyError) Error() string {
	switch {
	case e.Revoked != nil:
		return fmt.Sprintf("host key of %s (%s) is marked @revoked in %s:%d: refusing to connect",
			e.Addr, fingerprint(e.Key), e.Revoked.Filename, e.Revoked.Line)
	case e.Changed():
		var known []string
		for _, k := range e.Known {
			known = append(known, fmt.Sprintf("%s (%s:%d)", fingerprint(k.Key), k.Filename, k.Line))
		}
		return fmt.Sprintf("HOST KEY OF %s HAS CHANGED: the server presented %s but %s has %s; "+
			"someone may be intercepting the connection (man-in-the-middle attack), or the host key was replaced. "+
			"Refusing to connect. If the change is expected, remove the old entry (ssh-keygen -R '%s' -f %s) and connect again",
			e.Addr, fingerprint(e.Key), e.File, strings.Join(known, ", "), knownhosts.Normalize(e.Addr), e.File)
	default:
		return fmt.Sprintf("host key of %s is not known: %s; add this line to %s: %s",
			e.Addr, fingerprint(e.Key), e.File, e.Line)
	}
}

// hostKeys checks the server's host key for one handshake.
type hostKeys struct {
	addr   string // host:port
	file   string
	accept bool
	log    *slog.Logger
	cb     ssh.HostKeyCallback // nil when the file does not exist
	known  []knownhosts.KnownKey
	err    error // the last refusal, as returned by check
}

func loadHostKeys(c *Config) (*hostKeys, error) {
	h := &hostKeys{addr: c.addr(), file: c.KnownHosts, accept: c.AcceptNewHostKey, log: c.Logger}
	if err := h.load(); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *hostKeys) load() error {
	h.cb, h.known = nil, nil
	cb, err := knownhosts.New(h.file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return cfgErr("known_hosts %s: %v (--known-hosts, [tunnel] known_hosts)", h.file, err)
	}
	h.cb = cb
	// Which keys are known for this host: check a key no host has.
	probe, _ := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	var ke *knownhosts.KeyError
	if errors.As(cb(h.addr, dummyAddr{}, probe), &ke) {
		h.known = ke.Want
	}
	return nil
}

// algorithms are the host key algorithms to ask for: those of the keys on
// record, so that a server with several host keys presents the known one
// (nil: x/crypto's defaults).
func (h *hostKeys) algorithms() []string {
	var algs []string
	add := func(a ...string) {
		for _, x := range a {
			if !contains(algs, x) {
				algs = append(algs, x)
			}
		}
	}
	for _, k := range h.known {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return algs
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// check is the ssh.HostKeyCallback.
func (h *hostKeys) check(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := h.verify(key)
	var hke *HostKeyError
	if errors.As(err, &hke) && !hke.Changed() && hke.Revoked == nil && h.accept {
		err = h.write(key)
	}
	h.err = err
	return err
}

// verify checks key against the file as loaded.
func (h *hostKeys) verify(key ssh.PublicKey) error {
	var err error = &knownhosts.KeyError{}
	if h.cb != nil {
		err = h.cb(h.addr, dummyAddr{}, key)
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	line := knownhosts.Line([]string{h.addr}, key)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return &HostKeyError{Addr: h.addr, File: h.file, Key: key, Line: line, Revoked: &re.Revoked}
	case errors.As(err, &ke):
		return &HostKeyError{Addr: h.addr, File: h.file, Key: key, Line: line, Known: ke.Want}
	default:
		return fmt.Errorf("known_hosts %s: %w", h.file, err)
	}
}

// write appends key to the file, under an exclusive lock, unless the host
// got a key there meanwhile (which is then checked instead).
func (h *hostKeys) write(key ssh.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(h.file), 0o700); err != nil {
		return fmt.Errorf("known_hosts %s: %w", h.file, err)
	}
	f, err := os.OpenFile(h.file, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("known_hosts %s: %w", h.file, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("known_hosts %s: lock: %w", h.file, err)
	}
	if err := h.load(); err != nil {
		return err
	}
	if err := h.verify(key); err == nil {
		return nil
	} else if hke, ok := err.(*HostKeyError); !ok || hke.Changed() || hke.Revoked != nil {
		return err
	}
	line := knownhosts.Line([]string{h.addr}, key) + "\n"
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	if _, err := io.WriteString(f, line); err != nil {
		return fmt.Errorf("known_hosts %s: %w", h.file, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("known_hosts %s: %w", h.file, err)
	}
	h.log.Warn("ssh: accepted a new host key and added it to known_hosts",
		"host", h.addr, "key", fingerprint(key), "file", h.file)
	return h.load()
}

// dummyAddr stands for the remote address: knownhosts prefers the host
// name it is given, which is always set here.
type dummyAddr struct{}

func (dummyAddr) Network() string { return "tcp" }
func (dummyAddr) String() string  { return "0.0.0.0:0" }
