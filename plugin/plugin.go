package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sendense/capture/internal/extent"
)

// Disk is an opened disk of a snapshot: vddk.Disk satisfies it.
type Disk interface {
	Size() uint64
	ReadAt(p []byte, off int64) (int, error)
	// Allocated returns the allocated byte ranges inside [off, off+length)
	// in normal form, at the backend's allocation granularity.
	Allocated(off, length uint64) (extent.List, error)
	Close() error
}

// Backend opens disks. The VDDK backend is the real one; tests use others.
type Backend interface {
	// Check validates the configuration without side effects (it runs in
	// the pre-fork check), e.g. that a VDDK library exists under libdir.
	Check(c *Config) error
	// Start runs once in the serving process (VDDK: dlopen and InitEx).
	Start(c *Config) error
	// Open connects and opens the disk for one NBD connection; closing the
	// Disk releases everything Open acquired.
	Open(c *Config) (Disk, error)
	// Stop runs at unload.
	Stop()
}

// ChangeQuery asks vSphere for the areas changed since c.ChangeID (CBT).
type ChangeQuery func(ctx context.Context, c *Config) (extent.List, error)

// QueryTimeout bounds one changed-areas query at open.
const QueryTimeout = 5 * time.Minute

// Plugin is the process-wide plugin state.
type Plugin struct {
	Config  Config
	backend Backend
	query   ChangeQuery

	mu      sync.Mutex
	changed extent.List // cached result of query (changeid= only)
	queried bool
}

// New returns a plugin reading disks through backend and asking query for
// changed areas when changeid= is given.
func New(backend Backend, query ChangeQuery) *Plugin {
	return &Plugin{backend: backend, query: query}
}

// ConfigComplete checks the parameters (see Config.Complete) and the
// backend's view of them.
func (p *Plugin) ConfigComplete() error {
	if err := p.Config.Complete(); err != nil {
		return err
	}
	return p.backend.Check(&p.Config)
}

// AfterFork starts the backend in the serving process.
func (p *Plugin) AfterFork() error { return p.backend.Start(&p.Config) }

// Unload stops the backend.
func (p *Plugin) Unload() { p.backend.Stop() }

// changedAreas returns the areas an incremental export reports, querying
// vSphere once per process for changeid= (connections share the result;
// a failed query is retried by the next open).
func (p *Plugin) changedAreas() (extent.List, error) {
	if p.Config.ChangedAreasFile != "" {
		return p.Config.ChangedAreas, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.queried {
		ctx, cancel := context.WithTimeout(context.Background(), QueryTimeout)
		defer cancel()
		start := time.Now()
		areas, err := p.query(ctx, &p.Config)
		if err != nil {
			return nil, fmt.Errorf("changeid=%s: querying changed blocks of %s: %w", p.Config.ChangeID, p.Config.File, err)
		}
		slog.Debug("changed areas queried", "changeid", p.Config.ChangeID, "areas", len(areas),
			"bytes", areas.Bytes(), "seconds", time.Since(start).Seconds())
		p.changed, p.queried = areas, true
	}
	return p.changed, nil
}

// Open opens the disk for one NBD connection.
func (p *Plugin) Open() (*Handle, error) {
	c := &p.Config
	var changed extent.List
	if c.Incremental() {
		var err error
		if changed, err = p.changedAreas(); err != nil {
			return nil, err
		}
	}
	disk, err := p.backend.Open(c)
	if err != nil {
		return nil, err
	}
	h, err := newHandle(c, disk, changed)
	if err != nil {
		disk.Close()
		return nil, err
	}
	return h, nil
}
