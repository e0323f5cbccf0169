package agent

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/sshtest"
)

// TestReverseForward: with [tunnel] configured, the API is reachable on
// the control plane's [tunnel] api_forward through the SSH tunnel (real
// OpenSSH), with the same authentication, health says the tunnel is
// connected, and the forward comes back after the SSH connection dies.
func TestReverseForward(t *testing.T) {
	srv := sshtest.Start(t)
	e := newEnv(t, []lab.VMSpec{{Name: "web", Disks: []lab.DiskSpec{{Capacity: lab.MiB}}}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	forward := ln.Addr().String() // a free port on the "control plane"
	ln.Close()
	e.cfg.Tunnel.Host, e.cfg.Tunnel.Port, e.cfg.Tunnel.User = srv.Host, srv.Port, srv.User
	e.cfg.Tunnel.Key, e.cfg.Tunnel.KnownHosts, e.cfg.Tunnel.APIForward = srv.UserKeyFile, srv.KnownHostsFile, forward
	e.start()

	health := func(token string) (int, Health) {
		req, _ := http.NewRequest("GET", "http://"+forward+"/api/v1/health", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, Health{}
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var h Health
		json.Unmarshal(b, &h)
		return resp.StatusCode, h
	}
	waitUp := func(what string) Health {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if code, h := health(testToken); code == http.StatusOK {
				return h
			}
		}
		t.Fatalf("the API never became reachable through the tunnel %s", what)
		return Health{}
	}
	if h := waitUp("at start"); h.TunnelStatus != "connected" {
		t.Fatalf("tunnel_status %q through the forward", h.TunnelStatus)
	}
	if code, _ := health(""); code != http.StatusUnauthorized {
		t.Fatalf("without the token through the forward: %d, want 401", code)
	}
	if n := srv.KillSessions(); n == 0 {
		t.Fatal("no SSH session to kill")
	}
	waitUp("after the SSH connection died")
}
