package orchestrator

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/vddk"
)

// Services are what jobs share: the configuration, the vCenter session
// and where the plugin is.
type Services struct {
	Config   *config.Config
	Client   *cbt.Client
	Cred     Credentials
	Plugin   string   // nbdkit-sendense-plugin.so path, or "sendense"
	Reporter Reporter // nil: no progress
	TempDir  string   // private sockets and files go below it ("": os.TempDir)
	Verbose  bool     // nbdkit -v

	// AcceptNewHostKey writes unknown SSH host keys into known_hosts
	// (--accept-new-host-key); changed ones are refused regardless.
	AcceptNewHostKey bool
	// Tunnels are the SSH tunnels jobs share (copies of Services share
	// them too); nil: created on first use.
	Tunnels *TunnelPool
	// JobID names the job in its snapshot's owner marker ("": a new id
	// per VM job). The agent sets its job's id.
	JobID string
	// LoginSeconds is how long logging in to vCenter took (reported as
	// the jobs' first phase; 0: not measured).
	LoginSeconds float64
}

// Preflight checks, before any snapshot is taken, that the tools a job
// starts are there: nbdkit, the plugin, VDDK, qemu-img and qemu-nbd.
func (s *Services) Preflight() error {
	for _, tool := range []struct{ name, pkg string }{{"nbdkit", "nbdkit"}, {"qemu-img", "qemu-utils"}, {"qemu-nbd", "qemu-utils"}} {
		if _, err := exec.LookPath(tool.name); err != nil {
			return fmt.Errorf("%s not found: install it (Debian package %s)", tool.name, tool.pkg)
		}
	}
	if strings.Contains(s.Plugin, "/") {
		if _, err := os.Stat(s.Plugin); err != nil {
			return fmt.Errorf("the nbdkit plugin: %w (--plugin, $SENDENSE_PLUGIN)", err)
		}
	}
	if _, err := vddk.Find(s.Config.VDDK.Libdir); err != nil {
		return fmt.Errorf("[vddk] libdir %s (--vddk-libdir, $SENDENSE_VDDK_LIBDIR): %w", s.Config.VDDK.Libdir, err)
	}
	return nil
}

func (s *Services) reporter() Reporter {
	if s.Reporter == nil {
		return nopReporter{}
	}
	return s.Reporter
}
