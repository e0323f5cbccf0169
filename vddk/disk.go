package vddk

/*
#include <stdlib.h>
#include "vixdisklib.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/sendense/capture/internal/extent"
)

// SectorSize is VDDK's sector, the unit of every offset and length it
// takes.
const SectorSize = 512

// Disk is an open virtual disk. Its methods may be called from several
// goroutines: calls reach VDDK one at a time per Disk (VDDK handles are not
// thread-safe), while different Disks work in parallel. With
// VixDiskLib_ReadAsync and WriteAsync, a request occupies the Disk only
// while VDDK accepts it, so many requests of one Disk are in flight at
// once.
type Disk interface {
	// Size is the capacity in bytes (VDDK's capacity × 512).
	Size() uint64
	// ReadAt reads len(p) bytes at off, any alignment, with io.ReaderAt's
	// semantics at the end of the disk (n < len(p) and io.EOF).
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes len(p) bytes at off, any alignment (a partial sector
	// is read, patched and written back, with no other write of the Disk
	// in flight meanwhile); writing past the end is an error and writes
	// nothing. A read-only Disk refuses (ErrReadOnly).
	WriteAt(p []byte, off int64) (int, error)
	// Flush waits for the requests in flight and calls VixDiskLib_Flush,
	// so that every write completed before it is on stable storage. On a
	// read-only Disk it does nothing.
	Flush() error
	// ReadOnly tells whether the disk was opened read-only.
	ReadOnly() bool
	// Allocated returns the allocated byte ranges inside [off, off+length)
	// (clipped to Size), in normal form. Allocation is known per 64 KiB
	// chunk; the final partial chunk of a disk whose size is not a multiple
	// of 64 KiB is always reported allocated (VDDK cannot query it). Without
	// QueryAllocatedBlocks the whole range is reported allocated.
	Allocated(off, length uint64) (extent.List, error)
	// CanQueryAllocated tells whether Allocated asks VDDK (true) or reports
	// everything as allocated (false).
	CanQueryAllocated() bool
	// TransportMode is VixDiskLib_GetTransportMode ("file", "nbd",
	// "nbdssl", "hotadd", "san").
	TransportMode() string
	// Close closes the disk; closing twice is harmless.
	Close() error
}

type disk struct {
	lib      *Library
	conn     *Connection
	path     string
	readOnly bool

	// mu is held shared by every method using c and exclusively by Close,
	// so c outlives every call on it. It never waits for a VDDK call:
	// those are serialised in C, by c's pthread mutex (handle.c).
	mu         sync.RWMutex
	c          *C.struct_vdk_disk // nil once closed
	sectors    uint64
	size       uint64
	mode       string
	canQuery   atomic.Bool
	async      atomic.Bool // reads use ReadAsync (until it answers VIX_E_NOT_SUPPORTED)
	asyncWrite atomic.Bool // writes use WriteAsync (likewise)
	usedAsync  atomic.Bool // an asynchronous request was made: Close calls Wait first

	// rmw is held shared by writes of whole sectors and exclusively by a
	// write with a partial sector while it reads, patches and writes it
	// back, so that no write of the same sector is lost meanwhile.
	rmw sync.RWMutex
}

// Open calls VixDiskLib_Open(path, flags), then GetInfo for the size,
// GetTransportMode, and probes QueryAllocatedBlocks (as
// nbdkit-vddk-plugin does) to settle CanQueryAllocated. On a read-only
// connection OpenReadOnly is always added.
func (c *Connection) Open(path string, flags OpenFlags) (Disk, error) {
	if c.readOnly {
		flags |= OpenReadOnly
	}
	l := c.lib
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosedConn
	}
	var h C.VixDiskLibHandle
	openCloseMu.Lock()
	_, err := l.call(fnOpen, 0, func() string {
		return fmt.Sprintf("path=%q flags=0x%x %s", path, uint32(flags), flags)
	}, func() C.struct_vdk_ret {
		return C.vdk_Open(l.c, c.c, cpath, C.uint32_t(flags), &h)
	})
	openCloseMu.Unlock()
	if err != nil {
		return nil, err
	}

	d := &disk{lib: l, conn: c, path: path, readOnly: flags&OpenReadOnly != 0, c: C.vdk_disk_new(l.c, h)}
	if d.c == nil {
		openCloseMu.Lock()
		l.call(fnClose, 0, noArgs, func() C.struct_vdk_ret { return C.vdk_Close(l.c, h) })
		openCloseMu.Unlock()
		return nil, errors.New("vddk: out of memory")
	}
	if err := d.getInfo(); err != nil {
		d.closeHandle()
		return nil, err
	}
	r, err := l.call(fnGetTransportMode, 0, noArgs, func() C.struct_vdk_ret {
		return C.vdk_disk_GetTransportMode(d.c)
	})
	if err == nil && r.str != nil {
		d.mode = C.GoString(r.str)
	}
	d.canQuery.Store(d.probeQuery())
	d.async.Store(true)
	d.asyncWrite.Store(true)
	debugf("opened %s (%s): %d bytes, transport %q, allocation query %v",
		path, flags, d.size, d.mode, d.canQuery.Load())
	c.disks[d] = struct{}{}
	return d, nil
}

func (d *disk) getInfo() error {
	l := d.lib
	var info *C.VixDiskLibInfo
	_, err := l.call(fnGetInfo, 0, noArgs, func() C.struct_vdk_ret {
		return C.vdk_disk_GetInfo(d.c, &info)
	})
	if err != nil {
		return err
	}
	d.sectors = uint64(info.capacity)
	d.size = d.sectors * SectorSize
	l.call(fnFreeInfo, 0, noArgs, func() C.struct_vdk_ret { return C.vdk_FreeInfo(l.c, info) })
	return nil
}

// probeQuery tries one chunk, as nbdkit-vddk-plugin does, because some
// VDDKs have QueryAllocatedBlocks but cannot answer it.
func (d *disk) probeQuery() bool {
	if !d.lib.has(fnQueryAllocatedBlocks) || !d.lib.has(fnFreeBlockList) {
		return false
	}
	if d.sectors < chunkSectors {
		return true // no whole chunk: Allocated never needs to ask
	}
	if _, err := d.queryBlocks(0, chunkSectors, nil); err != nil {
		debugf("%s: QueryAllocatedBlocks does not work here, every block will be reported as data: %v", d.path, err)
		return false
	}
	return true
}

func (d *disk) Size() uint64 { return d.size }

func (d *disk) TransportMode() string { return d.mode }

func (d *disk) CanQueryAllocated() bool { return d.canQuery.Load() }

func (d *disk) ReadOnly() bool { return d.readOnly }

func (d *disk) Close() error {
	d.mu.Lock()
	if d.c == nil {
		d.mu.Unlock()
		return nil
	}
	err := d.closeHandle()
	d.mu.Unlock()
	d.conn.forget(d)
	return err
}

// closeHandle calls VixDiskLib_Wait if asynchronous requests were made
// (none is in flight: every ReadAt and WriteAt waits for its own, but VDDK
// wants the handle idle), then VixDiskLib_Close, and frees c; d.mu held
// exclusively (or d not yet shared).
func (d *disk) closeHandle() error {
	l := d.lib
	c := d.c
	d.c = nil
	var werr error
	if d.usedAsync.Load() {
		_, werr = l.call(fnWait, 0, noArgs, func() C.struct_vdk_ret { return C.vdk_disk_Wait(c) })
	}
	openCloseMu.Lock()
	_, err := l.call(fnClose, 0, noArgs, func() C.struct_vdk_ret { return C.vdk_disk_Close(c) })
	openCloseMu.Unlock()
	C.vdk_disk_free(c)
	return errors.Join(werr, err)
}

var _ Disk = (*disk)(nil)

// errNegativeOffset is ReadAt's and WriteAt's answer to off < 0.
var errNegativeOffset = errors.New("vddk: negative offset")
