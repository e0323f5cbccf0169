package plugin

import (
	"fmt"
	"io"

	"github.com/sendense/capture/internal/extent"
)

// Block sizes advertised to clients: VDDK reads whole 512-byte sectors.
const (
	SectorSize     = 512
	PreferredBlock = 64 * 1024 // the VDDK allocation granularity
	MaximumBlock   = 0xffffffff
)

// Handle is one NBD connection's view of the disk.
type Handle struct {
	disk        Disk
	size        uint64
	incremental bool
	changed     extent.List // incremental only: sector-aligned, normal form
	description string
}

func newHandle(c *Config, disk Disk, changed extent.List) (*Handle, error) {
	h := &Handle{disk: disk, size: disk.Size(), incremental: c.Incremental()}
	if h.incremental {
		if n := len(changed); n > 0 && changed[n-1].End() > h.size {
			return nil, fmt.Errorf("changed area %v extends past the end of %s (%d bytes): wrong disk or changed areas?",
				changed[n-1], c.File, h.size)
		}
		h.changed = extent.RoundOut(changed, SectorSize, h.size)
	}
	h.description = describe(c, h)
	return h, nil
}

func describe(c *Config, h *Handle) string {
	s := "VMware disk " + c.File
	if c.Snapshot != "" {
		s += " at " + c.Snapshot
	}
	switch {
	case c.ChangeID != "":
		s += fmt.Sprintf(", blocks changed since changeId %s (%d areas, %d bytes)", c.ChangeID, len(h.changed), h.changed.Bytes())
	case c.ChangedAreasFile != "":
		s += fmt.Sprintf(", changed areas from %s (%d areas, %d bytes)", c.ChangedAreasFile, len(h.changed), h.changed.Bytes())
	default:
		s += ", full"
	}
	return s
}

// Close closes the disk.
func (h *Handle) Close() error { return h.disk.Close() }

// Size returns the disk size in bytes.
func (h *Handle) Size() uint64 { return h.size }

// Description returns the export description.
func (h *Handle) Description() string { return h.description }

// PRead fills buf from offset with the snapshot's data: reads always return
// the true content, whatever the extents say.
func (h *Handle) PRead(buf []byte, offset uint64) error {
	n, err := h.disk.ReadAt(buf, int64(offset))
	if n == len(buf) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(buf), offset, err)
}

// Extents returns the block-status map of [offset, offset+count), clipped
// to the disk, following the extents contract (docs/design.md):
//
//	full:        allocated → data; unallocated → hole+zero
//	incremental: changed and allocated → data; changed and unallocated →
//	             hole+zero; unchanged → hole (not zero)
func (h *Handle) Extents(count uint32, offset uint64) (extent.Map, error) {
	if offset >= h.size {
		return nil, nil
	}
	length := min(uint64(count), h.size-offset)
	if !h.incremental {
		alloc, err := h.disk.Allocated(offset, length)
		if err != nil {
			return nil, err
		}
		return extent.Build(alloc, offset, length, extent.Data, extent.Hole|extent.Zero), nil
	}
	changed := h.changed.Clip(offset, length)
	if len(changed) == 0 {
		return extent.Map{{Offset: offset, Length: length, Type: extent.Hole}}, nil
	}
	first, last := changed[0].Offset, changed[len(changed)-1].End()
	alloc, err := h.disk.Allocated(first, last-first)
	if err != nil {
		return nil, err
	}
	var m extent.Map
	pos := offset
	for _, c := range changed {
		m = m.Append(pos, c.Offset-pos, extent.Hole)
		for _, e := range extent.Build(alloc, c.Offset, c.Length, extent.Data, extent.Hole|extent.Zero) {
			m = m.Append(e.Offset, e.Length, e.Type)
		}
		pos = c.End()
	}
	return m.Append(pos, offset+length-pos, extent.Hole), nil
}
