package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"os"

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
	return client, cred, nil
}
