package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/orchestrator"
)

// bareConfig is an agent configuration without a lab.
func bareConfig(t *testing.T) *config.Config {
	dir := t.TempDir()
	tf := filepath.Join(dir, "token")
	os.WriteFile(tf, []byte(testToken+"\n"), 0o600)
	cfg := config.Defaults()
	cfg.API = config.API{Listen: "127.0.0.1:0", TokenFile: tf, StateDir: filepath.Join(dir, "state")}
	cfg.Repository.Path = filepath.Join(dir, "repo")
	return cfg
}

func unreachable(context.Context) (*orchestrator.Services, error) {
	return nil, errors.New("cannot reach vSphere at vc.example.com:443: connection refused")
}

// TestVCenterDown: the agent serves while vCenter is unreachable: health
// says so (and what the tunnel hook says), requests that need vCenter get
// 503, and metrics show it down.
func TestVCenterDown(t *testing.T) {
	cfg := bareConfig(t)
	cfg.Tunnel.Host = "control.example.com"
	a := startAgent(t, Options{Config: cfg, Connect: unreachable, Logger: testLogger(), TunnelStatus: func() string { return "connected" }})
	var h Health
	for i := 0; i < 100; i++ { // until the first login attempt failed
		h = Health{}
		if a.get("/api/v1/health", http.StatusOK, &h); strings.Contains(h.VCenterError, "connection refused") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h.Status != "degraded" || h.VCenterConnection != "error" || !strings.Contains(h.VCenterError, "connection refused") ||
		h.CBTSupport != "unknown" || h.TunnelStatus != "connected" {
		t.Fatalf("health with vCenter down: %+v", h)
	}
	for _, tc := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/api/v1/vms", nil},
		{"GET", "/api/v1/vms/" + esc("/DC0/vm/web") + "/specs", nil},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "/DC0/vm/web"}},
	} {
		code, body := a.do(tc.method, tc.path, tc.body)
		if ae := errBody(t, body); code != http.StatusServiceUnavailable || ae.Message != "vCenter unavailable" || !strings.Contains(ae.Detail, "connection refused") {
			t.Errorf("%s %s with vCenter down: %d %s", tc.method, tc.path, code, body)
		}
	}
	if m := a.metrics(); m["sendense_vcenter_up"] != 0 {
		t.Fatalf("sendense_vcenter_up = %v", m["sendense_vcenter_up"])
	}
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
}

// selfSigned writes a certificate and key for 127.0.0.1.
func selfSigned(t *testing.T, dir string) (string, string, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	cert, keyf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	pool := x509.NewCertPool()
	c, _ := x509.ParseCertificate(der)
	pool.AddCert(c)
	return cert, keyf, pool
}

// TestListenSecurity: TLS is served when configured (and then allows a
// non-loopback address), a non-loopback address without TLS is refused,
// --insecure-no-auth works on loopback only, and a configured tunnel
// without its hook reports "disconnected".
func TestListenSecurity(t *testing.T) {
	cfg := bareConfig(t)
	cert, key, pool := selfSigned(t, t.TempDir())
	cfg.API.TLSCert, cfg.API.TLSKey = cert, key
	a := startAgent(t, Options{Config: cfg, Connect: unreachable, Logger: testLogger()})
	a.http.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	if !strings.HasPrefix(a.url, "https://") {
		t.Fatal(a.url)
	}
	var h Health
	a.get("/api/v1/health", http.StatusOK, &h)
	if code, _ := a.doToken("", "GET", "/api/v1/health", nil); code != http.StatusUnauthorized {
		t.Fatalf("TLS without a token: %d", code)
	}
	if resp, err := http.Get("http" + strings.TrimPrefix(a.url, "https") + "/api/v1/health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP answered on the TLS port")
		}
	}
	a.stop()

	for _, tc := range []struct {
		api      config.API
		insecure bool
		bad      string
	}{
		{config.API{Listen: "0.0.0.0:0", TLSCert: cert, TLSKey: key}, false, ""},
		{config.API{Listen: "0.0.0.0:0"}, false, "not a loopback address"},
		{config.API{Listen: "[::]:8081"}, true, "not a loopback address"},
		{config.API{Listen: "localhost:0"}, true, ""},
		{config.API{Listen: "127.0.0.1:0", TLSCert: cert, TLSKey: key}, true, "--insecure-no-auth is only allowed"},
		{config.API{Listen: "127.0.0.1:0", TLSCert: cert}, false, "go together"},
		{config.API{Listen: "127.0.0.1:0", TLSCert: key, TLSKey: cert}, false, "tls_cert"},
		{config.API{Listen: "127.0.0.1:0"}, false, "no API token"},
	} {
		c := bareConfig(t)
		api := tc.api
		api.StateDir, api.TokenFile = c.API.StateDir, ""
		if !tc.insecure && tc.bad != "no API token" {
			api.TokenFile = c.API.TokenFile
		}
		c.API = api
		srv, err := New(Options{Config: c, Connect: unreachable, InsecureNoAuth: tc.insecure, Logger: testLogger()})
		var ce *ConfigError
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%+v (no auth %v): %v", tc.api, tc.insecure, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad) || !errors.As(err, &ce)):
			t.Errorf("%+v (no auth %v): %v, want a configuration error %q", tc.api, tc.insecure, err, tc.bad)
		}
		if srv != nil {
			srv.Close()
		}
	}

	// Without authentication (loopback only).
	c := bareConfig(t)
	c.API.TokenFile = ""
	c.Tunnel.Host = "control.example.com"
	a = startAgent(t, Options{Config: c, Connect: unreachable, InsecureNoAuth: true, Logger: testLogger()})
	code, body := a.doToken("", "GET", "/api/v1/health", nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"tunnel_status":"disconnected"`) {
		t.Fatalf("no-auth health: %d %s", code, body)
	}
}

// TestTokenFile: the token file's rules; its content never shows.
func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	for _, tc := range []struct{ path, bad string }{
		{write("ok", "  "+testToken+"  \nsecond line ignored\n"), ""},
		{write("empty", "\n"), "is empty"},
		{write("short", "tooshort\n"), "shorter than 16"},
		{write("blank", "0123456789 abcdef0123456789\n"), "blanks"},
		{filepath.Join(dir, "missing"), "no such file"},
		{"", "no API token"},
	} {
		a, err := readToken(tc.path, testLogger())
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%s: %v", tc.path, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("%s: %v, want %q", tc.path, err, tc.bad)
		case err != nil && strings.Contains(err.Error(), "0123456789"):
			t.Errorf("%s: the token in the error: %v", tc.path, err)
		}
		if tc.bad == "" {
			for _, h := range []struct {
				header string
				ok     bool
			}{{"Bearer " + testToken, true}, {"bearer " + testToken, true}, {"Bearer " + testToken[1:], false},
				{"Basic " + testToken, false}, {testToken, false}, {"", false}} {
				r, _ := http.NewRequest("GET", "/", nil)
				r.Header.Set("Authorization", h.header)
				if a.ok(r) != h.ok {
					t.Errorf("Authorization %q: ok %v", h.header, !h.ok)
				}
			}
		}
	}
}
