package orchestrator

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/time/rate"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/tunnel"
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
	// Limiter is the bandwidth limit every copy of these services shares
	// (NewLimiter: [copy] rate or [performance] bandwidth_limit_mbps for
	// all disks of all jobs together); nil: each copy limits itself to
	// the configured rate.
	Limiter *rate.Limiter
	TempDir string // private sockets and files go below it ("": os.TempDir)
	Verbose bool   // nbdkit -v

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
	// OnTunnelRetry, when set, is told of each failed SSH connection
	// attempt that will be retried, and (Attempt 0) when the dialing is
	// over; nil: they are logged.
	OnTunnelRetry func(tunnel.Retry)
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

// NewLimiter returns the token bucket of cfg's bandwidth limit, to share
// among copies (Services.Limiter); nil when there is no limit.
func NewLimiter(cfg *config.Config) *rate.Limiter {
	r := cfg.CopyRate()
	if r <= 0 {
		return nil
	}
	burst, _ := cfg.Copy.RequestSizeBytes()
	if burst <= 0 {
		burst = copier.DefaultRequestSize
	}
	return rate.NewLimiter(rate.Limit(r), burst)
}

func (s *Services) reporter() Reporter {
	if s.Reporter == nil {
		return nopReporter{}
	}
	return s.Reporter
}
