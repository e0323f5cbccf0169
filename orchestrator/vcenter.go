package orchestrator

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/config"
)

// Credentials are the resolved vCenter connection settings.
type Credentials struct {
	cbt.Config
}

// ResolveVCenter turns the [vcenter] configuration into connection
// settings, reading the password from its file or variable.
func ResolveVCenter(c *config.Config) (Credentials, error) {
	v := c.VCenter
	if v.URL == "" {
		return Credentials{}, errors.New("no vCenter given: set [vcenter] url, SENDENSE_VCENTER_URL or --vcenter")
	}
	if v.User == "" {
		return Credentials{}, errors.New("no vCenter user given: set [vcenter] user, SENDENSE_VCENTER_USER or --vcenter-user")
	}
	if v.Thumbprint == "" && v.CAFile == "" && !v.Insecure {
		return Credentials{}, fmt.Errorf("the certificate of %s cannot be verified: set [vcenter] thumbprint (SENDENSE_VCENTER_THUMBPRINT, --thumbprint) or ca_file (--ca-file); insecure = true (--insecure) accepts any certificate", v.URL)
	}
	pw, err := v.Password(os.Getenv)
	if err != nil {
		return Credentials{}, err
	}
	return Credentials{cbt.Config{
		Server:     v.URL,
		User:       v.User,
		Password:   pw,
		Thumbprint: v.Thumbprint,
		CAFile:     v.CAFile,
		Insecure:   v.Insecure,
	}}, nil
}

// Connect logs in to the configured vCenter.
func Connect(ctx context.Context, c *config.Config) (*cbt.Client, Credentials, error) {
	cred, err := ResolveVCenter(c)
	if err != nil {
		return nil, cred, err
	}
	client, err := cbt.Connect(ctx, cred.Config)
	if err != nil {
		return nil, cred, err
	}
	if cred.Thumbprint == "" {
		if cred.Thumbprint, err = serverThumbprint(ctx, cred); err != nil {
			client.Close(context.WithoutCancel(ctx))
			return nil, cred, err
		}
	}
	return client, cred, nil
}

// HostPort returns the server's host name and port (0: the default) for
// the plugin's server= and port=.
func (c Credentials) HostPort() (string, int) {
	u, err := url.Parse(c.Server)
	if err != nil || u.Host == "" {
		u, err = url.Parse("https://" + c.Server)
		if err != nil {
			return c.Server, 0
		}
	}
	port, _ := strconv.Atoi(u.Port())
	return u.Hostname(), port
}

// serverThumbprint reads the SHA-1 thumbprint of the server's certificate,
// which VDDK needs, when the certificate was verified with a CA bundle
// (or insecure was chosen) instead of a thumbprint.
func serverThumbprint(ctx context.Context, c Credentials) (string, error) {
	host, port := c.HostPort()
	if port == 0 {
		port = 443
	}
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}} // already verified by cbt.Connect
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return "", fmt.Errorf("reading the certificate of %s: %w", host, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", fmt.Errorf("%s sent no certificate", host)
	}
	sum := sha1.Sum(certs[0].Raw)
	hexes := make([]string, len(sum))
	for i, b := range sum {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(hexes, ":"), nil
}
