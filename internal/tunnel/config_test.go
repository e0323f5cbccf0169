package tunnel

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestConfigDefaults(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	home, _ := os.UserHomeDir()
	c, err := Config{Host: "cp.example.com", KeyFile: "~/.ssh/id_ed25519"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 443 || c.KeepAlive.Interval != 15*time.Second || c.KeepAlive.Count != 3 ||
		c.Connections != DefaultConnections || c.DialTimeout != 30*time.Second || c.User == "" ||
		c.Ciphers[0] != "aes128-gcm@openssh.com" || c.Logger == nil {
		t.Errorf("defaults: %+v", c)
	}
	if want := filepath.Join(home, ".ssh", "known_hosts"); c.KnownHosts != want {
		t.Errorf("KnownHosts %q, want %q", c.KnownHosts, want)
	}
	if want := filepath.Join(home, ".ssh", "id_ed25519"); c.KeyFile != want {
		t.Errorf("KeyFile %q, want %q", c.KeyFile, want)
	}
	if c.target() != c.User+"@cp.example.com:443" {
		t.Errorf("target %q", c.target())
	}
	// Idempotent (Reconnect applies them again).
	if c2, err := c.withDefaults(); err != nil || c2.KnownHosts != c.KnownHosts || c2.Port != c.Port {
		t.Errorf("withDefaults twice: %+v %v", c2, err)
	}
	if c, _ := (Config{Host: "::1", Port: 2222, KeyFile: "k"}).withDefaults(); c.addr() != "[::1]:2222" {
		t.Errorf("IPv6 addr %q", c.addr())
	}
}

func TestConfigErrors(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{KeyFile: "k"}, "[tunnel] host"},
		{Config{Host: "h", KeyFile: "k", Port: 65536}, "[tunnel] port"},
		{Config{Host: "h", KeyFile: "k", Connections: -1}, "[tunnel] connections"},
		{Config{Host: "h", KeyFile: "k", Rate: -5}, "--rate"},
		{Config{Host: "h"}, "--ssh-key"},
		{Config{Host: "h", UseAgent: true}, "SSH_AUTH_SOCK"},
	} {
		_, err := tc.cfg.withDefaults()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !Permanent(err) {
			t.Errorf("%+v: %v, want a permanent error naming %q", tc.cfg, err, tc.want)
		}
	}
}

func TestKeyTypeLabel(t *testing.T) {
	for typ, want := range map[string]string{
		ssh.KeyAlgoED25519:     "ED25519",
		ssh.KeyAlgoECDSA256:    "ECDSA",
		ssh.KeyAlgoECDSA521:    "ECDSA",
		ssh.KeyAlgoRSA:         "RSA",
		ssh.KeyAlgoSKED25519:   "ED25519-SK",
		ssh.CertAlgoED25519v01: "ED25519-CERT",
		"ssh-foo":              "ssh-foo",
	} {
		if got := keyTypeLabel(typ); got != want {
			t.Errorf("keyTypeLabel(%q) = %q, want %q", typ, got, want)
		}
	}
}

func TestURIEscape(t *testing.T) {
	if got := uriEscape("/tmp/sendense-tunnel-123/nbd.sock"); got != "/tmp/sendense-tunnel-123/nbd.sock" {
		t.Errorf("plain path escaped: %q", got)
	}
	if got := uriEscape("/tmp/a b&c=d/nbd.sock"); got != "/tmp/a%20b%26c%3Dd/nbd.sock" {
		t.Errorf("escaped %q", got)
	}
}

func TestLimiter(t *testing.T) {
	var nolimit *limiter
	if nolimit.chunk(1<<20) != 1<<20 || nolimit.wait(context.Background(), 1<<30) != nil {
		t.Error("a nil limiter limits")
	}
	l := newLimiter(1 << 20)
	if l.burst != 52428 || l.chunk(1<<20) != l.burst {
		t.Errorf("1 MiB/s: burst %d", l.burst)
	}
	if l := newLimiter(100); l.burst != 16<<10 {
		t.Errorf("tiny rate: burst %d", l.burst)
	}
	if l := newLimiter(1 << 30); l.burst != 256<<10 {
		t.Errorf("huge rate: burst %d", l.burst)
	}
}
