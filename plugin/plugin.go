package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sendense/capture/internal/extent"
)

// Disk is an opened disk: vddk.Disk satisfies it.
type Disk interface {
	Size() uint64
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes all of p at off (any alignment) or fails.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every completed write durable.
	Flush() error
	// ReadOnly tells whether the disk was opened read-only.
	ReadOnly() bool
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
	// Create makes the disk of create=true (local VDDK only); Open comes
	// after it.
	Create(c *Config) error
	// Open connects and opens the disk for one NBD connection, read-only
	// or read-write; closing the Disk releases everything Open acquired.
	Open(c *Config, readonly bool) (Disk, error)
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

	createMu sync.Mutex
	created  bool // create=true done in this process

	// The one writable disk of the process, shared by its connections
	// (see Open); nil when no writable connection is open.
	sharedMu   sync.Mutex
	shared     Disk
	sharedRefs int
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

// Open opens the disk for one NBD connection: read-only when nbdkit says
// so (-r) or the configuration does (Config.ForcedReadOnly), else
// read-write. With create=true the first open creates the disk.
//
// Each read-only connection has a VDDK handle of its own, so reads of
// different connections go through different handles in parallel. The
// writable connections share one handle, opened by the first and closed
// by the last: VDDK may refuse a second writer of a disk (its lock), and
// with one handle a flush on any connection covers the writes of all and
// every connection reads what any wrote, so the export can promise
// multi-conn to clients.
func (p *Plugin) Open(readonly bool) (*Handle, error) {
	c := &p.Config
	var changed extent.List
	if c.Incremental() {
		var err error
		if changed, err = p.changedAreas(); err != nil {
			return nil, err
		}
	}
	if err := p.create(); err != nil {
		return nil, err
	}
	readonly = readonly || c.ForcedReadOnly() != ""
	var disk Disk
	var err error
	if readonly {
		disk, err = p.backend.Open(c, true)
	} else {
		disk, err = p.openShared()
	}
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

// openShared returns the writable disk of the process, opening it for
// the first writable connection.
func (p *Plugin) openShared() (Disk, error) {
	p.sharedMu.Lock()
	defer p.sharedMu.Unlock()
	if p.shared == nil {
		d, err := p.backend.Open(&p.Config, false)
		if err != nil {
			return nil, err
		}
		p.shared = d
	}
	p.sharedRefs++
	return sharedRef{p.shared, p}, nil
}

// sharedRef is one connection's reference to the shared writable disk:
// closing it closes the disk with the last reference.
type sharedRef struct {
	Disk
	p *Plugin
}

func (r sharedRef) Close() error {
	p := r.p
	p.sharedMu.Lock()
	defer p.sharedMu.Unlock()
	if p.sharedRefs--; p.sharedRefs > 0 {
		return nil
	}
	d := p.shared
	p.shared = nil
	return d.Close()
}

// create runs create=true once per process; a failure is retried by the
// next open.
func (p *Plugin) create() error {
	if !p.Config.Create {
		return nil
	}
	p.createMu.Lock()
	defer p.createMu.Unlock()
	if p.created {
		return nil
	}
	if err := p.backend.Create(&p.Config); err != nil {
		return fmt.Errorf("create=true: %w", err)
	}
	slog.Debug("disk created", "file", p.Config.File, "size", p.Config.CreateSize)
	p.created = true
	return nil
}
