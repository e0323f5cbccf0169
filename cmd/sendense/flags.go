package main

import (
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/config"
)

// configFile is the root --config flag.
var configFile string

func init() {
	rootCmd.PersistentFlags().StringVar(&configFile, "config", "",
		"configuration `file` (default: /etc/sendense/sendense.toml, else $XDG_CONFIG_HOME/sendense/sendense.toml, "+
			"the first that exists; none: no file) [$SENDENSE_CONFIG]")
}

// vcenterFlags are the flags of commands that talk to vCenter. Each
// overrides its SENDENSE_* variable, which overrides its configuration
// key (docs/configuration.md).
type vcenterFlags struct {
	url, user, passwordFile, thumbprint, caFile string
	insecure                                    bool
}

func (f *vcenterFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "vcenter", "", "vCenter or ESXi `URL` or host ([vcenter] url) [$SENDENSE_VCENTER_URL]")
	fs.StringVar(&f.user, "vcenter-user", "", "vCenter `user` ([vcenter] user) [$SENDENSE_VCENTER_USER]")
	fs.StringVar(&f.passwordFile, "vcenter-password-file", "", "`file` holding the vCenter password ([vcenter] password_file) [$SENDENSE_VCENTER_PASSWORD_FILE]")
	fs.StringVar(&f.thumbprint, "thumbprint", "", "SHA-1 `thumbprint` of the vCenter certificate ([vcenter] thumbprint) [$SENDENSE_VCENTER_THUMBPRINT]")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM CA bundle `file` to verify the vCenter certificate ([vcenter] ca_file) [$SENDENSE_VCENTER_CA_FILE]")
	fs.BoolVar(&f.insecure, "insecure", false, "accept a vCenter certificate that cannot be verified ([vcenter] insecure)")
}

func (f *vcenterFlags) apply(fs *pflag.FlagSet, c *config.Config) {
	setString(fs, "vcenter", &c.VCenter.URL, f.url)
	setString(fs, "vcenter-user", &c.VCenter.User, f.user)
	if fs.Changed("vcenter-password-file") {
		c.VCenter.PasswordFile, c.VCenter.PasswordEnv = f.passwordFile, ""
	}
	setString(fs, "thumbprint", &c.VCenter.Thumbprint, f.thumbprint)
	setString(fs, "ca-file", &c.VCenter.CAFile, f.caFile)
	if fs.Changed("insecure") {
		c.VCenter.Insecure = f.insecure
	}
}

// vddkFlags are the flags of commands that start the plugin.
type vddkFlags struct {
	libdir, transports, plugin string
}

func (f *vddkFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.libdir, "vddk-libdir", "", "VDDK `directory` ([vddk] libdir) [$SENDENSE_VDDK_LIBDIR]")
	fs.StringVar(&f.transports, "transports", "", "VDDK transport `modes`, e.g. nbdssl:nbd ([vddk] transports)")
	fs.StringVar(&f.plugin, "plugin", "", "nbdkit plugin `path` (default: nbdkit-sendense-plugin.so next to sendense, else the installed plugin) [$SENDENSE_PLUGIN]")
}

func (f *vddkFlags) apply(fs *pflag.FlagSet, c *config.Config) {
	setString(fs, "vddk-libdir", &c.VDDK.Libdir, f.libdir)
	setString(fs, "transports", &c.VDDK.Transports, f.transports)
}

func setString(fs *pflag.FlagSet, name string, dst *string, v string) {
	if fs.Changed(name) {
		*dst = v
	}
}

// loadConfig reads the configuration file (--config, else
// $SENDENSE_CONFIG, else the first of config.SearchPaths that exists)
// under the SENDENSE_* environment; the command's flags override both.
// Errors are usage errors (exit status 2).
func loadConfig(cmd *cobra.Command) (*config.Config, error) {
	path := configFile
	if path == "" {
		path = os.Getenv("SENDENSE_CONFIG")
	}
	if path == "" {
		var err error
		if path, err = config.Find(os.Getenv); err != nil {
			return nil, usageErrorf("%v", err)
		}
	}
	c, err := config.Load(path, os.Getenv)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	applyRepositorySecrets(c) // --password-file; encrypted repositories
	slog.Debug("configuration", "file", c.File)
	return c, nil
}

// tunnelFlags configure the SSH tunnel to ssh:// repositories and
// targets; each overrides its [tunnel] key.
type tunnelFlags struct {
	key, knownHosts  string
	acceptNewHostKey bool
}

func (f *tunnelFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.key, "ssh-key", "", "SSH private key `file` for ssh:// repositories and targets ([tunnel] key; default: ssh-agent)")
	fs.StringVar(&f.knownHosts, "known-hosts", "", "known_hosts `file` SSH host keys are checked against ([tunnel] known_hosts; default ~/.ssh/known_hosts)")
	fs.BoolVar(&f.acceptNewHostKey, "accept-new-host-key", false, "trust and record the host key of an SSH server not in known_hosts yet (a changed key is always refused)")
}

func (f *tunnelFlags) apply(fs *pflag.FlagSet, c *config.Config) {
	setString(fs, "ssh-key", &c.Tunnel.Key, f.key)
	setString(fs, "known-hosts", &c.Tunnel.KnownHosts, f.knownHosts)
}
