// Command plugin.go is the main package of the Go half of the nbdkit
// sendense plugin, built with -buildmode=c-shared into
// build/sendense-plugin-go.so. The C front (plugin/front) loads it after
// nbdkit forks and calls the sendense_go_* functions exported by
// plugin/nbdkit, which call the adapter below, which calls package plugin.
package main

import "C"

import (
	"log/slog"
	"strings"

	"github.com/sendense/capture/plugin"
	"github.com/sendense/capture/plugin/nbdkit"
	"github.com/sendense/capture/vddk"
)

func init() {
	slog.SetDefault(slog.New(slog.NewTextHandler(debugWriter{}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	backend := &plugin.VDDKBackend{}
	nbdkit.Register(&adapter{p: plugin.New(backend, plugin.QueryChangedAreas), backend: backend})
	vddk.SetTrace(vddk.TraceControl)
}

func main() {}

// debugWriter sends log/slog output to nbdkit_debug (shown with nbdkit -v).
type debugWriter struct{}

func (debugWriter) Write(p []byte) (int, error) {
	nbdkit.Debug("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// adapter implements nbdkit.Plugin over package plugin.
type adapter struct {
	p       *plugin.Plugin
	backend *plugin.VDDKBackend
	stats   bool // -D sendense.stats=1
}

func (a *adapter) Config(key, value string) error { return a.p.Config.Set(key, value) }
func (a *adapter) ConfigComplete() error          { return a.p.ConfigComplete() }
func (a *adapter) AfterFork() error               { return a.p.AfterFork() }

// Debug takes -D sendense.stats=1 (per-call statistics at unload) and
// -D sendense.datapath=1 (a debug line for every Read and Write too).
func (a *adapter) Debug(name string, value int) {
	switch name {
	case "stats":
		a.stats = value != 0
	case "datapath":
		if value != 0 {
			vddk.SetTrace(vddk.TraceAll)
		}
	}
}

// Unload prints the statistics (before VixDiskLib_Exit, which is not
// counted) and stops the backend.
func (a *adapter) Unload() {
	if lib := a.backend.Library(); a.stats && lib != nil {
		nbdkit.Debug("VixDiskLib call statistics (-D sendense.stats=1):")
		for _, l := range vddk.FormatStats(lib.Stats()) {
			nbdkit.Debug("  %s", l)
		}
	}
	a.p.Unload()
}

func (a *adapter) Open(readonly bool) (nbdkit.Connection, error) {
	h, err := a.p.Open(readonly)
	if err != nil {
		return nil, err
	}
	return connection{h}, nil
}

// connection implements nbdkit.Connection over a plugin.Handle.
type connection struct{ h *plugin.Handle }

func (c connection) Close() {
	if err := c.h.Close(); err != nil {
		nbdkit.Debug("close: %v", err)
	}
}

func (c connection) GetSize() (uint64, error) { return c.h.Size(), nil }

func (c connection) BlockSize() (uint32, uint32, uint32, error) {
	return plugin.SectorSize, plugin.PreferredBlock, plugin.MaximumBlock, nil
}

func (c connection) PRead(buf []byte, offset uint64, flags uint32) error {
	return c.h.PRead(buf, offset)
}

func (c connection) CanWrite() (bool, error) { return !c.h.ReadOnly(), nil }
func (c connection) CanFlush() (bool, error) { return !c.h.ReadOnly(), nil }

func (c connection) PWrite(buf []byte, offset uint64, flags uint32) error {
	return c.h.PWrite(buf, offset, flags&nbdkit.FlagFUA != 0)
}

func (c connection) Flush(flags uint32) error { return c.h.Flush() }

func (c connection) Zero(count uint32, offset uint64, flags uint32) error {
	return c.h.Zero(count, offset, flags&nbdkit.FlagFUA != 0)
}

func (c connection) CanExtents() (bool, error) { return true, nil }

// CanMultiConn: a read-only export is the same through every connection,
// and the writable connections share one VDDK handle (plugin.Plugin.Open),
// so a flush on one covers the writes of all.
func (c connection) CanMultiConn() (bool, error) { return true, nil }

func (c connection) Extents(count uint32, offset uint64, flags uint32, e nbdkit.Extents) error {
	m, err := c.h.Extents(count, offset)
	if err != nil {
		return err
	}
	for _, x := range m {
		if err := e.Add(x.Offset, x.Length, x.Type); err != nil {
			return err
		}
		if flags&nbdkit.FlagReqOne != 0 {
			break
		}
	}
	return nil
}

func (c connection) ExportDescription() (string, error) { return c.h.Description(), nil }
