package vddk

/*
#include "vixdisklib.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// WriteAt writes whole sectors straight from p: each write is one
// VixDiskLib_WriteAsync, submitted under the handle's C mutex and waited
// for without it, so concurrent writes of one Disk are in flight together
// (VixDiskLib_Write under the mutex once WriteAsync answers
// VIX_E_NOT_SUPPORTED). A partial head or tail sector is read, patched and
// written back while no other write of the Disk is in flight. p is lent
// to C only until the write has completed.
func (d *disk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errNegativeOffset
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.c == nil {
		return 0, errClosed
	}
	if d.readOnly {
		return 0, ErrReadOnly
	}
	if len(p) == 0 {
		return 0, nil
	}
	pos := uint64(off)
	if pos > d.size || uint64(len(p)) > d.size-pos {
		return 0, fmt.Errorf("vddk: write of %d bytes at %d goes past the end of %s (%d bytes): %w",
			len(p), pos, d.path, d.size, ErrOutOfRange)
	}
	if pos%SectorSize == 0 && len(p)%SectorSize == 0 {
		d.rmw.RLock()
		err := d.write(pos/SectorSize, uint64(len(p)/SectorSize), unsafe.Pointer(&p[0]))
		d.rmw.RUnlock()
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}

	d.rmw.Lock()
	defer d.rmw.Unlock()
	buf, done := p, 0
	if skip := int(pos % SectorSize); skip != 0 { // partial head
		k := min(len(buf), SectorSize-skip)
		if err := d.patch(pos/SectorSize, skip, buf[:k]); err != nil {
			return 0, err
		}
		buf, pos, done = buf[k:], pos+uint64(k), done+k
	}
	if m := len(buf) / SectorSize * SectorSize; m > 0 { // whole middle
		if err := d.write(pos/SectorSize, uint64(m/SectorSize), unsafe.Pointer(&buf[0])); err != nil {
			return done, err
		}
		buf, pos, done = buf[m:], pos+uint64(m), done+m
	}
	if len(buf) > 0 { // partial tail
		if err := d.patch(pos/SectorSize, 0, buf); err != nil {
			return done, err
		}
		done += len(buf)
	}
	return done, nil
}

// patch writes b at byte skip of sector s: read, patch, write back; d.mu
// held shared and d.rmw exclusively.
func (d *disk) patch(s uint64, skip int, b []byte) error {
	sector := make([]byte, SectorSize)
	if err := d.read(s, 1, unsafe.Pointer(&sector[0]), 0, 0); err != nil {
		return err
	}
	copy(sector[skip:], b)
	return d.write(s, 1, unsafe.Pointer(&sector[0]))
}

// write writes num sectors at start from buf; d.mu held shared.
func (d *disk) write(start, num uint64, buf unsafe.Pointer) error {
	c := d.c
	return d.transfer(&d.asyncWrite, fnWriteAsync, fnWrite, start, num, num*SectorSize, func() C.struct_vdk_ret {
		return C.vdk_disk_WriteAsync(c, C.uint64_t(start), C.uint64_t(num), buf)
	}, func() C.struct_vdk_ret {
		return C.vdk_disk_Write(c, C.uint64_t(start), C.uint64_t(num), buf)
	})
}

// Flush calls VixDiskLib_Wait then VixDiskLib_Flush with no request
// submitted in between (the statistics count both as Flush).
func (d *disk) Flush() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.c == nil {
		return errClosed
	}
	if d.readOnly {
		return nil
	}
	_, err := d.lib.call(fnFlush, 0, noArgs, func() C.struct_vdk_ret { return C.vdk_disk_Flush(d.c) })
	return err
}
