package orchestrator

import (
	"net/url"
	"testing"

	"github.com/sendense/capture/internal/config"
)

// TestTunnelPort: ssh:// URLs follow the ssh URL convention, port 22 when
// none is given, but the configured tunnel host keeps [tunnel] port.
func TestTunnelPort(t *testing.T) {
	cfg := config.Defaults() // [tunnel] port 443
	cfg.Tunnel.Host = "cp.example.com"
	s := &Services{Config: cfg}
	for _, tc := range []struct {
		url  string
		port int
	}{
		{"ssh://backup.example.com/srv/backups", 22},
		{"ssh://sendense@backup.example.com:2222/srv/backups", 2222},
		{"ssh://cp.example.com/srv/backups", 443},
		{"ssh://CP.example.com/srv/backups", 443},
		{"ssh://cp.example.com:22/srv/backups", 22},
	} {
		u, _ := url.Parse(tc.url)
		c, err := s.TunnelConfig(u)
		if err != nil || c.Port != tc.port {
			t.Errorf("%s: port %d, %v; want %d", tc.url, c.Port, err, tc.port)
		}
	}
	cfg.Tunnel.Port = 8022
	u, _ := url.Parse("ssh://cp.example.com/x")
	if c, _ := s.TunnelConfig(u); c.Port != 8022 {
		t.Errorf("[tunnel] port 8022: got %d", c.Port)
	}
}

func TestRedactArgs(t *testing.T) {
	got := RedactArgs([]string{"nbdkit", "password=-3", "password=s3cret", "--token=abc", "file=[ds] a.vmdk", "password=+/etc/pw"})
	want := "nbdkit password=-3 password=*** --token=*** 'file=[ds] a.vmdk' password=+/etc/pw"
	if got != want {
		t.Errorf("RedactArgs:\n got %s\nwant %s", got, want)
	}
}
