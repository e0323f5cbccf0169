package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sendense/capture/orchestrator"
)

// reverse keeps the API reachable from the control plane: with [tunnel]
// host set, the agent asks the SSH server to listen on [tunnel]
// api_forward (default 127.0.0.1:10808, on the control plane) and serves
// the API on that listener too, over the tunnel: the control plane never
// connects to the agent's network. Authentication is the same.
type reverse struct {
	tun *orchestrator.Services // the tunnel pool and [tunnel] configuration
	up  atomic.Bool
}

// reverseWarnEvery is how often a reverse forward that stays down with
// the same error is logged as a warning.
const reverseWarnEvery = 10 * time.Minute

// tunnelURL is the SSH server of [tunnel] as a URL for Services.Tunnel.
func (s *Server) tunnelURL() *url.URL {
	t := s.cfg.Tunnel
	u := &url.URL{Scheme: "ssh", Host: net.JoinHostPort(t.Host, strconv.Itoa(t.Port))}
	if t.User != "" {
		u.User = url.User(t.User)
	}
	return u
}

// serveReverse serves hs on the reverse forward until ctx ends or hs shuts
// down, dialing the tunnel again (with backoff) when it drops.
func (s *Server) serveReverse(ctx context.Context, hs *http.Server) {
	addr := s.cfg.Tunnel.APIForward
	if s.cfg.Tunnel.Host == "" || addr == "" {
		return
	}
	delay := time.Second
	var lastMsg string
	var lastWarn time.Time
	for ctx.Err() == nil {
		err := s.serveReverseOnce(ctx, hs, addr)
		s.rev.up.Store(false)
		if errors.Is(err, http.ErrServerClosed) || ctx.Err() != nil {
			return
		}
		// Warn when the cause changes and every 10 minutes, not at every
		// retry: a tunnel that cannot come up must not flood the log.
		level := slog.LevelDebug
		if msg := err.Error(); msg != lastMsg || time.Since(lastWarn) >= reverseWarnEvery {
			level, lastMsg, lastWarn = slog.LevelWarn, msg, time.Now()
		}
		s.log.Log(ctx, level, "the API's reverse forward through the SSH tunnel is down; retrying with backoff (up to 30s)", "forward", addr, "retry_in", delay, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
}

func (s *Server) serveReverseOnce(ctx context.Context, hs *http.Server, addr string) error {
	t, err := s.rev.tun.Tunnel(ctx, s.tunnelURL())
	if err != nil {
		return err
	}
	ln, err := t.Client().Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-t.Done():
		case <-ctx.Done():
		}
		ln.Close()
	}()
	s.rev.up.Store(true)
	s.log.Info("the API is reachable from the control plane through the SSH tunnel", "ssh", t.Config().Host, "forward", addr)
	return hs.Serve(ln)
}
