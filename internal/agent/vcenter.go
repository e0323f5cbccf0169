package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/vim25/methods"

	"github.com/sendense/capture/orchestrator"
)

// Timings of the vCenter session.
const (
	connectRetry   = 10 * time.Second // between login attempts while vCenter is unreachable
	connectTimeout = 60 * time.Second
	checkCacheFor  = 5 * time.Second // a live check serves health requests for this long
	checkTimeout   = 5 * time.Second
)

// errNotConnected is returned while the agent has no vCenter session.
var errNotConnected = errors.New("not connected to vCenter")

// vcenter is the agent's one vCenter session, shared by every job and
// request. The cbt.Client logs in again by itself when the session
// expires or is terminated, and keeps it alive; what is left here is the
// first login, retried in the background until it succeeds, and a cheap
// live check (GetCurrentTime) cached for checkCacheFor so that health
// requests never hammer vCenter.
type vcenter struct {
	connect   func(ctx context.Context) (*orchestrator.Services, error)
	onConnect func() // called once logged in
	log       *slog.Logger
	now       func() time.Time

	svc       atomic.Pointer[orchestrator.Services]
	connected chan struct{} // closed once svc is set

	mu      sync.Mutex
	lastErr error // of the last login attempt

	cmu       sync.Mutex
	status    vcStatus
	checkedAt time.Time
	checking  chan struct{} // non-nil while a live check runs
	checks    atomic.Int64  // live checks made (tests)
}

// vcStatus is the outcome of a live check.
type vcStatus struct {
	OK         bool
	Err        string
	APIVersion string
}

func newVCenter(connect func(context.Context) (*orchestrator.Services, error), log *slog.Logger, now func() time.Time) *vcenter {
	return &vcenter{connect: connect, log: log, now: now, connected: make(chan struct{})}
}

// run logs in, retrying every connectRetry until it succeeds or ctx ends.
func (v *vcenter) run(ctx context.Context) {
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, connectTimeout)
		svc, err := v.connect(cctx)
		cancel()
		if err == nil && ctx.Err() != nil { // shutting down meanwhile
			_ = svc.Client.Close(context.Background())
			return
		}
		if err == nil {
			v.svc.Store(svc)
			close(v.connected)
			v.mu.Lock()
			v.lastErr = nil
			v.mu.Unlock()
			v.invalidate()
			v.log.Info("connected to vCenter", "server", svc.Client.Host())
			if v.onConnect != nil {
				v.onConnect()
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		v.mu.Lock()
		v.lastErr = err
		v.mu.Unlock()
		v.invalidate()
		if attempt == 1 || attempt%30 == 0 {
			v.log.Warn("cannot log in to vCenter, retrying", "every", connectRetry, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(connectRetry):
		}
	}
}

// services returns the shared services, or an error wrapping
// errNotConnected with the reason of the last failed login.
func (v *vcenter) services() (*orchestrator.Services, error) {
	if s := v.svc.Load(); s != nil {
		return s, nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.lastErr != nil {
		return nil, fmt.Errorf("%w: %v", errNotConnected, v.lastErr)
	}
	return nil, fmt.Errorf("%w: logging in", errNotConnected)
}

// close logs out.
func (v *vcenter) close() {
	if s := v.svc.Load(); s != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Client.Close(ctx); err != nil {
			v.log.Debug("logging out of vCenter", "err", err)
		}
	}
}

func (v *vcenter) invalidate() {
	v.cmu.Lock()
	v.checkedAt = time.Time{}
	v.cmu.Unlock()
}

// check returns the vCenter status, from a live check at most
// checkCacheFor old. Only one live check runs at a time: while one runs,
// callers get the previous status (the first callers wait for it).
func (v *vcenter) check(ctx context.Context) vcStatus {
	v.cmu.Lock()
	if !v.checkedAt.IsZero() && (v.now().Sub(v.checkedAt) < checkCacheFor || v.checking != nil) {
		st := v.status
		v.cmu.Unlock()
		return st
	}
	if ch := v.checking; ch != nil {
		v.cmu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return vcStatus{Err: ctx.Err().Error()}
		}
		v.cmu.Lock()
		st := v.status
		v.cmu.Unlock()
		return st
	}
	ch := make(chan struct{})
	v.checking = ch
	v.cmu.Unlock()

	st := v.liveCheck(ctx)

	v.cmu.Lock()
	v.status, v.checkedAt, v.checking = st, v.now(), nil
	v.cmu.Unlock()
	close(ch)
	return st
}

// cached returns the last status without checking (false if none).
func (v *vcenter) cached() (vcStatus, bool) {
	v.cmu.Lock()
	defer v.cmu.Unlock()
	return v.status, !v.checkedAt.IsZero()
}

func (v *vcenter) liveCheck(ctx context.Context) vcStatus {
	s, err := v.services()
	if err != nil {
		return vcStatus{Err: err.Error()}
	}
	v.checks.Add(1)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), checkTimeout)
	defer cancel()
	vc := s.Client.Vim25()
	if _, err := methods.GetCurrentTime(cctx, vc); err != nil {
		return vcStatus{Err: fmt.Sprintf("vCenter %s does not answer: %v", s.Client.Host(), err)}
	}
	return vcStatus{OK: true, APIVersion: vc.ServiceContent.About.ApiVersion}
}

// cbtSupport says whether the server's vSphere API has Changed Block
// Tracking (QueryChangedDiskAreas, vSphere 4.0 and later).
func (st vcStatus) cbtSupport() string {
	if !st.OK {
		return "unknown"
	}
	major, _, _ := strings.Cut(st.APIVersion, ".")
	if n, err := strconv.Atoi(major); err == nil && n < 4 {
		return "unavailable"
	}
	return "available"
}
