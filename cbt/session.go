package cbt

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// sessionRT is the soap.RoundTripper of a Client: it logs in again once when
// a call fails with NotAuthenticated (an expired or terminated session) and
// repeats the call, and it keeps the session alive while the client is idle.
type sessionRT struct {
	inner    soap.RoundTripper
	sm       types.ManagedObjectReference // SessionManager
	user     string
	password string

	mu      sync.Mutex
	gen     uint64 // incremented by every successful login
	last    time.Time
	relogin int // logins after the first, for tests and logs

	stop chan struct{}
	done chan struct{}
}

func (s *sessionRT) login(ctx context.Context) error {
	req := types.Login{This: s.sm, UserName: s.user, Password: s.password}
	_, err := methods.Login(ctx, s.inner, &req)
	if err != nil {
		return err
	}
	s.gen++
	return nil
}

func isNotAuthenticated(err error) bool {
	return err != nil && fault.Is(err, &types.NotAuthenticated{})
}

// RoundTrip implements soap.RoundTripper.
func (s *sessionRT) RoundTrip(ctx context.Context, req, res soap.HasFault) error {
	s.mu.Lock()
	gen := s.gen
	s.last = time.Now()
	s.mu.Unlock()

	err := s.inner.RoundTrip(ctx, req, res)
	if !isNotAuthenticated(err) {
		return err
	}
	switch req.(type) {
	case *methods.LoginBody, *methods.LogoutBody:
		return err
	}

	s.mu.Lock()
	if s.gen == gen { // nobody logged in again meanwhile
		slog.Debug("cbt: session not authenticated, logging in again", "user", s.user)
		if lerr := s.login(ctx); lerr != nil {
			s.mu.Unlock()
			return fmt.Errorf("%w: the session ended (%v) and logging in again failed: %v", ErrSessionFailed, err, lerr)
		}
		s.relogin++
	}
	s.mu.Unlock()

	// The first answer may have left a fault in res: start from a clean one.
	rv := reflect.ValueOf(res).Elem()
	rv.Set(reflect.Zero(rv.Type()))
	return s.inner.RoundTrip(ctx, req, res)
}

// keepAlive calls GetCurrentTime (through RoundTrip, so an expired session
// is renewed) whenever the client was idle for interval.
func (s *sessionRT) keepAlive(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			idle := time.Since(s.last)
			s.mu.Unlock()
			if idle < interval {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, err := methods.GetCurrentTime(ctx, s)
			cancel()
			if err != nil {
				slog.Debug("cbt: keep-alive failed", "err", err)
			}
		}
	}
}

func (s *sessionRT) close() {
	if s.stop != nil {
		close(s.stop)
		<-s.done
		s.stop = nil
	}
}
