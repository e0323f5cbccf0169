// Package sshtest runs a real OpenSSH server for tests: sshd on a free
// loopback port, as the current user, with everything it needs (host key,
// an Ed25519 user key, authorized_keys, known_hosts) in a temporary
// directory. It also provides Proxy, a TCP proxy that can cut or stall the
// stream on demand, to test what happens when the network fails.
//
// Typical use:
//
//	srv := sshtest.Start(t) // skips the test when sshd is not installed
//	// srv.Host, srv.Port, srv.User, srv.UserKeyFile, srv.KnownHostsFile
//
// The server allows public key authentication only, TCP and stream-local
// (unix socket) forwarding, and the sftp subsystem. Start works as root
// (StrictModes off, the privilege separation directory /run/sshd created
// when missing) and as an ordinary user, who can then only log in as
// itself, with an account that is not locked (sshd runs with UsePAM no).
// The server and anything it serves are killed in t.Cleanup, and sshd gets
// SIGKILL if the test binary dies first.
package sshtest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Server is a running sshd.
type Server struct {
	Host string // always 127.0.0.1
	Port int
	User string // the current user, the only one who can log in

	Dir string // the server's temporary directory

	HostKey     ssh.PublicKey // the server's (first) host key
	HostKeyFile string        // its private key file

	UserKey        ssh.Signer // an Ed25519 key listed in AuthorizedKeys
	UserKeyFile    string     // its private key file (OpenSSH format, no passphrase)
	AuthorizedKeys string     // the authorized_keys file sshd reads

	KnownHostsLine string // "[127.0.0.1]:PORT ssh-ed25519 AAAA…"
	KnownHostsFile string // a known_hosts file holding KnownHostsLine

	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{}
	mu   sync.Mutex
}

// Options change how Start configures sshd.
type Options struct {
	// HostKeyTypes are the host key types, in order: "ed25519" (the
	// default), "ecdsa", "rsa". HostKey is the first.
	HostKeyTypes []string
	// Config holds extra sshd_config lines (e.g. "MaxSessions 2").
	Config []string
	// Ciphers, when set, restricts sshd's ciphers ("Ciphers" line).
	Ciphers string
	// QuietHome gives SSH sessions an empty HOME (a directory of the
	// server's): the login shell reads ~/.bashrc for every command, and a
	// developer's (pyenv, …) can cost 150 ms each, which is not what tests
	// of many remote commands measure.
	QuietHome bool
	// Env holds extra NAME=VALUE variables of every session (SetEnv).
	Env []string
}

// Start starts sshd for the test with the default Options. It skips the
// test when sshd is not installed and fails it when sshd does not start.
func Start(t testing.TB) *Server { return StartWith(t, Options{}) }

// StartWith starts sshd for the test with opts.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	if _, err := FindSSHD(); err != nil {
		t.Skip(err)
	}
	s, err := New(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("sshd log:\n%s", s.Log())
		}
	})
	return s
}

// FindSSHD returns the absolute path of sshd (sshd must be started by its
// absolute path).
func FindSSHD() (string, error) {
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("sshd")
	if err != nil {
		return "", errors.New("sshd is not installed (apt-get install openssh-server)")
	}
	return filepath.Abs(p)
}

// New starts sshd with its files in dir (which must exist). Stop it with
// Stop. Start and StartWith are the test wrappers; New serves programs
// such as benchmarks.
func New(dir string, opts Options) (*Server, error) {
	sshd, err := FindSSHD()
	if err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("sshtest: current user: %w", err)
	}
	s := &Server{Host: "127.0.0.1", User: u.Username, Dir: dir}

	types := opts.HostKeyTypes
	if len(types) == 0 {
		types = []string{"ed25519"}
	}
	var hostKeyLines []string
	for i, typ := range types {
		file := filepath.Join(dir, "ssh_host_"+typ+"_key")
		signer, err := WriteKey(file, typ)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			s.HostKey, s.HostKeyFile = signer.PublicKey(), file
		}
		hostKeyLines = append(hostKeyLines, "HostKey "+file)
	}
	s.UserKeyFile = filepath.Join(dir, "id_ed25519")
	if s.UserKey, err = WriteKey(s.UserKeyFile, "ed25519"); err != nil {
		return nil, err
	}
	s.AuthorizedKeys = filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(s.AuthorizedKeys, ssh.MarshalAuthorizedKey(s.UserKey.PublicKey()), 0o600); err != nil {
		return nil, fmt.Errorf("sshtest: %w", err)
	}

	if os.Geteuid() == 0 {
		// The privilege separation directory sshd chroots into.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("sshtest: privilege separation directory: %w", err)
		}
	}

	sftp := ""
	for _, p := range []string{"/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server"} {
		if _, err := os.Stat(p); err == nil {
			sftp = "Subsystem sftp " + p
			break
		}
	}

	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Port = port
		lines := append(hostKeyLines,
			"ListenAddress 127.0.0.1:"+strconv.Itoa(port),
			"AuthorizedKeysFile "+s.AuthorizedKeys,
			"PidFile none",
			"StrictModes no", // the temporary directory sits in world-writable /tmp
			"UsePAM no",
			"PermitRootLogin prohibit-password",
			"PubkeyAuthentication yes",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"AllowTcpForwarding yes",
			"AllowStreamLocalForwarding yes",
			"PermitOpen any",
			"MaxSessions 64",
			"MaxStartups 64:30:128",
			"UseDNS no",
			"LogLevel VERBOSE",
			"AcceptEnv LANG LC_*",
			sftp,
		)
		if opts.Ciphers != "" {
			lines = append(lines, "Ciphers "+opts.Ciphers)
		}
		env := opts.Env
		if opts.QuietHome {
			home := filepath.Join(dir, "home")
			if err := os.MkdirAll(home, 0o700); err != nil {
				return nil, fmt.Errorf("sshtest: %w", err)
			}
			env = append([]string{"HOME=" + home}, env...)
		}
		if len(env) > 0 {
			lines = append(lines, "SetEnv "+strings.Join(env, " "))
		}
		lines = append(lines, opts.Config...)
		cfg := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfg, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("sshtest: %w", err)
		}
		s.log = &logBuffer{}
		s.cmd = exec.Command(sshd, "-D", "-e", "-f", cfg)
		s.cmd.Stderr = s.log
		s.cmd.Dir = dir
		// Dies with us even when a test times out and skips its cleanup.
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("sshtest: start %s: %w", sshd, err)
		}
		s.done = make(chan struct{})
		go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
		err = s.waitListening()
		if err == nil {
			break
		}
		s.Stop()
		if attempt < 5 && strings.Contains(s.Log(), "Address already in use") {
			continue
		}
		return nil, fmt.Errorf("%w; sshd log:\n%s", err, s.Log())
	}

	s.KnownHostsLine = knownhosts.Line([]string{s.Addr()}, s.HostKey)
	s.KnownHostsFile = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(s.KnownHostsFile, []byte(s.KnownHostsLine+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("sshtest: %w", err)
	}
	return s, nil
}

// waitListening waits for sshd's "Server listening" line.
func (s *Server) waitListening() error {
	want := fmt.Sprintf("Server listening on 127.0.0.1 port %d", s.Port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(s.Log(), want) {
			return nil
		}
		select {
		case <-s.done:
			return errors.New("sshtest: sshd exited")
		case <-time.After(10 * time.Millisecond):
		}
	}
	return errors.New("sshtest: sshd did not start listening within 10 s")
}

// Addr is "127.0.0.1:PORT".
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Log returns what sshd logged so far.
func (s *Server) Log() string { return s.log.String() }

// SSHArgs are OpenSSH client arguments that log into the server with the
// user key and the known_hosts file, non-interactively; append the remote
// command.
func (s *Server) SSHArgs() []string {
	return []string{
		"-p", strconv.Itoa(s.Port),
		"-i", s.UserKeyFile,
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + s.KnownHostsFile,
		"-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes",
		"-o", "LogLevel=ERROR",
		"-F", "none",
		s.User + "@" + s.Host,
	}
}

// WriteKnownHosts writes a known_hosts file naming the server's host key
// for each hostport, e.g. a Proxy's address ("127.0.0.1:PORT").
func (s *Server) WriteKnownHosts(file string, hostports ...string) error {
	var b strings.Builder
	for _, hp := range hostports {
		b.WriteString(knownhosts.Line([]string{hp}, s.HostKey) + "\n")
	}
	return os.WriteFile(file, []byte(b.String()), 0o600)
}

// Authorize adds key to the authorized_keys file.
func (s *Server) Authorize(key ssh.PublicKey) error {
	f, err := os.OpenFile(s.AuthorizedKeys, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(ssh.MarshalAuthorizedKey(key)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// SessionPIDs returns the sshd processes serving connections (the
// listener's children), so tests can kill one mid-transfer.
func (s *Server) SessionPIDs() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	return children(s.cmd.Process.Pid)
}

// KillSessions kills (SIGKILL) every sshd process serving a connection,
// which drops all connections abruptly, like a crashed server. The
// listener keeps running, so clients can reconnect. It returns how many
// were killed.
func (s *Server) KillSessions() int {
	n := 0
	for _, pid := range s.SessionPIDs() {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// Stop kills sshd and the processes serving connections. It is safe to
// call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	kids := children(cmd.Process.Pid)
	cmd.Process.Kill()
	for _, pid := range kids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	<-done
}

// children lists the direct children of pid (from /proc).
func children(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may contain spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}

// WriteKey generates a private key of type typ ("ed25519", "ecdsa" (P-256)
// or "rsa" (3072 bits)), writes it unencrypted to file (mode 0600, OpenSSH
// format) with its public key in file.pub, and returns it.
func WriteKey(file, typ string) (ssh.Signer, error) {
	return writeKey(file, typ, nil)
}

// WriteEncryptedKey is WriteKey with the private key encrypted with
// passphrase.
func WriteEncryptedKey(file, typ string, passphrase []byte) (ssh.Signer, error) {
	return writeKey(file, typ, passphrase)
}

func writeKey(file, typ string, passphrase []byte) (ssh.Signer, error) {
	var key any
	var err error
	switch typ {
	case "ed25519":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case "ecdsa":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa":
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	default:
		return nil, fmt.Errorf("sshtest: unknown key type %q", typ)
	}
	if err != nil {
		return nil, fmt.Errorf("sshtest: generate %s key: %w", typ, err)
	}
	var block *pem.Block
	if passphrase != nil {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(key, "sshtest", passphrase)
	} else {
		block, err = ssh.MarshalPrivateKey(key, "sshtest")
	}
	if err != nil {
		return nil, fmt.Errorf("sshtest: marshal %s key: %w", typ, err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		return nil, fmt.Errorf("sshtest: %w", err)
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("sshtest: %w", err)
	}
	if err := os.WriteFile(file+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		return nil, fmt.Errorf("sshtest: %w", err)
	}
	return signer, nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("sshtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// logBuffer collects sshd's log.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Grep returns the lines of sshd's log that contain s.
func (s *Server) Grep(str string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s.Log()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), str) {
			out = append(out, sc.Text())
		}
	}
	return out
}
