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
	readOnly    bool
	incremental bool
	unallocated uint32      // extent type of unallocated blocks: hole+zero, or hole with single-link
	changed     extent.List // incremental only: sector-aligned, normal form
	description string
}

func newHandle(c *Config, disk Disk, changed extent.List) (*Handle, error) {
	h := &Handle{disk: disk, size: disk.Size(), readOnly: disk.ReadOnly(), incremental: c.Incremental(),
		unallocated: extent.Hole | extent.Zero}
	if c.SingleLink {
		// The parent links may hold data where this one has none.
		h.unallocated = extent.Hole
	}
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
	if !h.readOnly {
		s += ", writable"
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

// ReadOnly tells whether the export refuses writes.
func (h *Handle) ReadOnly() bool { return h.readOnly }

// PWrite writes buf at offset (the caller keeps it inside the disk); with
// fua the write is durable when PWrite returns.
func (h *Handle) PWrite(buf []byte, offset uint64, fua bool) error {
	if _, err := h.disk.WriteAt(buf, int64(offset)); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(buf), offset, err)
	}
	if fua {
		return h.Flush()
	}
	return nil
}

// Flush makes every write completed so far durable.
func (h *Handle) Flush() error {
	if err := h.disk.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// zeroes is what Zero writes, shared read-only by every connection.
var zeroes = make([]byte, 1<<20)

// Zero makes [offset, offset+count) read as zeroes. VDDK has no call for
// it, so zeroes are written (as nbdkit does for nbdkit-vddk-plugin), but
// only where the disk is allocated: an unallocated block already reads
// as zeroes (unless single-link=true, where a parent link may show
// through). So zeroing a new or thin disk writes nothing and keeps it
// thin.
func (h *Handle) Zero(count uint32, offset uint64, fua bool) error {
	length := min(uint64(count), h.size-min(offset, h.size))
	targets := extent.List{{Offset: offset, Length: length}}
	if h.unallocated&extent.Zero != 0 {
		var err error
		if targets, err = h.disk.Allocated(offset, length); err != nil {
			return fmt.Errorf("zero %d bytes at %d: %w", count, offset, err)
		}
	}
	for _, t := range targets {
		for pos := t.Offset; pos < t.End(); {
			n := min(t.End()-pos, uint64(len(zeroes)))
			if _, err := h.disk.WriteAt(zeroes[:n], int64(pos)); err != nil {
				return fmt.Errorf("zero %d bytes at %d: %w", n, pos, err)
			}
			pos += n
		}
	}
	if fua {
		return h.Flush()
	}
	return nil
}

// Extents returns the block-status map of [offset, offset+count), clipped
// to the disk, following the extents contract (docs/design.md):
//
//	full:        allocated → data; unallocated → hole+zero (hole only
//	             with single-link=true)
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
		return extent.Build(alloc, offset, length, extent.Data, h.unallocated), nil
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
