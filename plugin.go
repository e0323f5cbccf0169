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
)

func init() {
	slog.SetDefault(slog.New(slog.NewTextHandler(debugWriter{}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	nbdkit.Register(&adapter{plugin.New(&plugin.VDDKBackend{}, plugin.QueryChangedAreas)})
}

func main() {}

// debugWriter sends log/slog output to nbdkit_debug (shown with nbdkit -v).
type debugWriter struct{}

func (debugWriter) Write(p []byte) (int, error) {
	nbdkit.Debug("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// adapter implements nbdkit.Plugin over package plugin.
type adapter struct{ p *plugin.Plugin }

func (a *adapter) Config(key, value string) error { return a.p.Config.Set(key, value) }
func (a *adapter) ConfigComplete() error          { return a.p.ConfigComplete() }
func (a *adapter) AfterFork() error               { return a.p.AfterFork() }
func (a *adapter) Unload()                        { a.p.Unload() }

func (a *adapter) Open(readonly bool) (nbdkit.Connection, error) {
	h, err := a.p.Open()
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

func (c connection) CanExtents() (bool, error)   { return true, nil }
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
