package tunnel

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sendense/capture/internal/nbdtest"
	"github.com/sendense/capture/internal/sshtest"
)

func TestUnknownHostKeyRefused(t *testing.T) {
	s := sshtest.Start(t)
	cfg := config(t, s)
	cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts") // does not exist
	_, err := Dial(context.Background(), cfg)
	var hke *HostKeyError
	if !errors.As(err, &hke) || hke.Changed() {
		t.Fatalf("Dial with an unknown host key: %v; want an unknown-host HostKeyError", err)
	}
	want := "host key of " + s.Addr() + " is not known: ED25519 " + ssh.FingerprintSHA256(s.HostKey) +
		"; add this line to " + cfg.KnownHosts + ": " + s.KnownHostsLine
	if err.Error() != want {
		t.Fatalf("error:\n%s\nwant:\n%s", err, want)
	}
	if _, err := os.Stat(cfg.KnownHosts); !errors.Is(err, os.ErrNotExist) {
		t.Error("known_hosts written without AcceptNewHostKey")
	}
	if !Permanent(err) {
		t.Error("an unknown host key is not Permanent")
	}

	// An existing file without this host: the same refusal.
	os.WriteFile(cfg.KnownHosts, []byte("[example.com]:443 "+strings.TrimPrefix(s.KnownHostsLine, knownHostsHost(s))+"\n"), 0o600)
	if _, err := Dial(context.Background(), cfg); !errors.As(err, &hke) || hke.Changed() {
		t.Fatalf("Dial with another host's key on file: %v", err)
	}
}

// knownHostsHost is the host field of s's known_hosts line.
func knownHostsHost(s *sshtest.Server) string {
	return strings.Fields(s.KnownHostsLine)[0] + " "
}

func TestAcceptNewHostKey(t *testing.T) {
	s := sshtest.Start(t)
	cfg := config(t, s)
	cfg.KnownHosts = filepath.Join(t.TempDir(), "new", ".ssh", "known_hosts")
	cfg.AcceptNewHostKey = true
	dial(t, cfg).Close()
	data, err := os.ReadFile(cfg.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != s.KnownHostsLine+"\n" {
		t.Fatalf("known_hosts holds %q, want %q", data, s.KnownHostsLine+"\n")
	}
	st, _ := os.Stat(cfg.KnownHosts)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("known_hosts mode %v, want 0600", st.Mode().Perm())
	}
	// Now known: works without AcceptNewHostKey, and nothing is added
	// twice.
	cfg.AcceptNewHostKey = false
	dial(t, cfg).Close()
	cfg.AcceptNewHostKey = true
	cfg.Connections = 2
	dial(t, cfg).Close()
	if data2, _ := os.ReadFile(cfg.KnownHosts); string(data2) != string(data) {
		t.Errorf("known_hosts changed on a known host: %q", data2)
	}

	// Appending to a file whose last line has no newline.
	other := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(other, []byte("example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFsMn0B2b9m8wPn0ISYc7v5vdQ2sT1hYi6vgVfv6kqYO"), 0o600)
	cfg.KnownHosts, cfg.Connections = other, 1
	dial(t, cfg).Close()
	data, _ = os.ReadFile(other)
	if lines := strings.Split(strings.TrimSpace(string(data)), "\n"); len(lines) != 2 || lines[1] != s.KnownHostsLine {
		t.Errorf("known_hosts after appending: %q", data)
	}
}

func TestChangedHostKeyRefused(t *testing.T) {
	s := sshtest.Start(t)
	cfg := config(t, s)
	// Record another key for the server's address.
	old, err := sshtest.WriteKey(filepath.Join(t.TempDir(), "old"), "ed25519")
	if err != nil {
		t.Fatal(err)
	}
	cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	line := knownHostsHost(s) + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(old.PublicKey()))) + "\n"
	os.WriteFile(cfg.KnownHosts, []byte(line), 0o600)
	for _, accept := range []bool{false, true} {
		cfg.AcceptNewHostKey = accept
		_, err := Dial(context.Background(), cfg)
		var hke *HostKeyError
		if !errors.As(err, &hke) || !hke.Changed() {
			t.Fatalf("accept=%v: Dial with a changed host key: %v; want a changed HostKeyError", accept, err)
		}
		msg := err.Error()
		for _, want := range []string{"HAS CHANGED", s.Addr(), ssh.FingerprintSHA256(s.HostKey), ssh.FingerprintSHA256(old.PublicKey()),
			cfg.KnownHosts, "man-in-the-middle", "ssh-keygen -R"} {
			if !strings.Contains(msg, want) {
				t.Errorf("accept=%v: error %q lacks %q", accept, msg, want)
			}
		}
		if data, _ := os.ReadFile(cfg.KnownHosts); string(data) != line {
			t.Fatalf("accept=%v: known_hosts modified: %q", accept, data)
		}
	}
}

func TestHostKeyAlgorithmFromKnownHosts(t *testing.T) {
	// A server with three host keys; known_hosts records only one of the
	// non-default types: the client must ask for that one.
	s := sshtest.StartWith(t, sshtest.Options{HostKeyTypes: []string{"ed25519", "ecdsa", "rsa"}})
	for _, typ := range []string{"ecdsa", "rsa"} {
		pubText, err := os.ReadFile(filepath.Join(s.Dir, "ssh_host_"+typ+"_key.pub"))
		if err != nil {
			t.Fatal(err)
		}
		cfg := config(t, s)
		cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
		os.WriteFile(cfg.KnownHosts, []byte(knownHostsHost(s)+string(pubText)), 0o600)
		dial(t, cfg).Close()
	}
}

func TestWrongUserKeyRefused(t *testing.T) {
	s := sshtest.Start(t)
	cfg := config(t, s)
	cfg.KeyFile = filepath.Join(t.TempDir(), "id_other")
	other, err := sshtest.WriteKey(cfg.KeyFile, "ed25519")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Dial(context.Background(), cfg)
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("Dial with an unauthorized key: %v; want an AuthError", err)
	}
	for _, want := range []string{s.User + "@" + s.Addr(), "refused", cfg.KeyFile, ssh.FingerprintSHA256(other.PublicKey()), "authorized_keys"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if !Permanent(err) {
		t.Error("a refused key is not Permanent")
	}
}

func TestOtherKeyTypes(t *testing.T) {
	s := sshtest.Start(t)
	for _, typ := range []string{"ecdsa", "rsa"} {
		cfg := config(t, s)
		cfg.KeyFile = filepath.Join(t.TempDir(), "id_"+typ)
		k, err := sshtest.WriteKey(cfg.KeyFile, typ)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Authorize(k.PublicKey()); err != nil {
			t.Fatal(err)
		}
		dial(t, cfg).Close()
	}
}

func TestKeyFileErrors(t *testing.T) {
	s := sshtest.Start(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("-----BEGIN SECRET-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END SECRET-----\n"), 0o600)
	encrypted := filepath.Join(dir, "id_encrypted")
	if _, err := sshtest.WriteEncryptedKey(encrypted, "ed25519", []byte("hunter2")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSH_AUTH_SOCK", "")
	for _, tc := range []struct {
		file  string
		wants []string
	}{
		{filepath.Join(dir, "missing"), []string{"missing", "no such file"}},
		{garbage, []string{garbage, "not a usable private key"}},
		{encrypted, []string{encrypted, "encrypted", "ssh-add " + encrypted, "never prompts"}},
	} {
		cfg := config(t, s)
		cfg.KeyFile = tc.file
		_, err := Dial(context.Background(), cfg)
		var kfe *KeyFileError
		if !errors.As(err, &kfe) {
			t.Fatalf("%s: %v, want a KeyFileError", tc.file, err)
		}
		for _, w := range tc.wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.file, err, w)
			}
		}
		for _, secret := range []string{"hunter2", "c2VjcmV0", "PRIVATE KEY"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: error %q shows key material", tc.file, err)
			}
		}
	}
}

// startAgent runs a real ssh-agent for the test and returns its socket.
func startAgent(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("ssh-agent"); err != nil {
		t.Skip("ssh-agent is not installed")
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cmd := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if err := nbdtest.WaitUnix(sock, 5*time.Second); err != nil {
		t.Fatalf("ssh-agent: %v", err)
	}
	return sock
}

func sshAdd(t *testing.T, sock, keyFile string) {
	t.Helper()
	cmd := exec.Command("ssh-add", keyFile)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
}

func TestAgentAuth(t *testing.T) {
	s := sshtest.Start(t)
	sock := startAgent(t)
	sshAdd(t, sock, s.UserKeyFile)

	// Explicit socket, no key file.
	cfg := config(t, s)
	cfg.KeyFile, cfg.UseAgent, cfg.AgentSocket = "", true, sock
	tn := dial(t, cfg)
	if _, _, err := tn.Run(context.Background(), "true", nil); err != nil {
		t.Fatal(err)
	}
	tn.Close()

	// SSH_AUTH_SOCK, no key file: the agent is used.
	t.Setenv("SSH_AUTH_SOCK", sock)
	cfg = config(t, s)
	cfg.KeyFile = ""
	dial(t, cfg).Close()

	// An agent without the right key: refused, naming the agent.
	empty := startAgent(t)
	other := filepath.Join(t.TempDir(), "id_other")
	sshtest.WriteKey(other, "ed25519")
	sshAdd(t, empty, other)
	cfg.AgentSocket, cfg.UseAgent = empty, true
	_, err := Dial(context.Background(), cfg)
	var ae *AuthError
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "ssh-agent") {
		t.Fatalf("agent without the key: %v", err)
	}

	// No agent and no key file.
	t.Setenv("SSH_AUTH_SOCK", "")
	cfg = config(t, s)
	cfg.KeyFile = ""
	if _, err := Dial(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "--ssh-key") {
		t.Fatalf("no key at all: %v", err)
	}
}

func TestEncryptedKeyThroughAgent(t *testing.T) {
	s := sshtest.Start(t)
	sock := startAgent(t)
	keyFile := filepath.Join(t.TempDir(), "id_encrypted")
	k, err := sshtest.WriteEncryptedKey(keyFile, "ed25519", []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	s.Authorize(k.PublicKey())
	// Load it into the agent the way a user would (ssh-add asks for the
	// passphrase; SSH_ASKPASS answers).
	askpass := filepath.Join(t.TempDir(), "askpass")
	os.WriteFile(askpass, []byte("#!/bin/sh\necho hunter2\n"), 0o700)
	cmd := exec.Command("ssh-add", keyFile)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock, "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
	t.Setenv("SSH_AUTH_SOCK", sock)
	cfg := config(t, s)
	cfg.KeyFile = keyFile
	dial(t, cfg).Close()
}

func TestDialErrors(t *testing.T) {
	s := sshtest.Start(t)
	cfg := config(t, s)
	cfg.Host = ""
	if _, err := Dial(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "[tunnel] host") || !Permanent(err) {
		t.Errorf("no host: %v", err)
	}
	cfg = config(t, s)
	cfg.Port = 70000
	if _, err := Dial(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "70000") {
		t.Errorf("bad port: %v", err)
	}

	// Nothing listening.
	p := sshtest.StartProxy(t, s.Addr())
	p.Refuse(true)
	cfg = config(t, s)
	cfg.Port = p.Port()
	cfg.DialTimeout = 2 * time.Second
	_, err := Dial(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), cfg.User+"@127.0.0.1:") || Permanent(err) {
		t.Errorf("refused connection: %v", err)
	}

	// A server that never speaks SSH: the dial timeout applies.
	p.Refuse(false)
	p.Stall()
	start := time.Now()
	_, err = Dial(context.Background(), cfg)
	if err == nil || time.Since(start) > 10*time.Second || !strings.Contains(err.Error(), "no SSH handshake") {
		t.Errorf("stalled server: %v after %v", err, time.Since(start))
	}
	// And the context.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	cfg.DialTimeout = time.Minute
	start = time.Now()
	if _, err := Dial(ctx, cfg); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
		t.Errorf("cancelled dial: %v after %v", err, time.Since(start))
	}
}
