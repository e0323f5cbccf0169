package vddk

/*
#include "vixdisklib.h"
*/
import "C"

import (
	"io"
	"strconv"
	"unsafe"
)

// ReadAt reads whole sectors with VixDiskLib_Read: an aligned request goes
// straight into p (no copy, no allocation); an unaligned head or tail
// sector goes through a one-sector bounce buffer.
func (d *disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errNegativeOffset
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.h == nil {
		return 0, errClosed
	}
	pos := uint64(off)
	if len(p) == 0 {
		return 0, nil
	}
	if pos >= d.size {
		return 0, io.EOF
	}
	n := len(p)
	var eof error
	if uint64(n) > d.size-pos {
		n = int(d.size - pos)
		eof = io.EOF
	}
	buf := p[:n]
	done := 0

	if skip := pos % SectorSize; skip != 0 { // unaligned head
		if err := d.read(pos/SectorSize, 1, unsafe.Pointer(&d.bounce[0])); err != nil {
			return 0, err
		}
		k := copy(buf, d.bounce[skip:])
		buf, pos, done = buf[k:], pos+uint64(k), done+k
	}
	if m := len(buf) / SectorSize * SectorSize; m > 0 { // aligned middle
		if err := d.read(pos/SectorSize, uint64(m/SectorSize), unsafe.Pointer(&buf[0])); err != nil {
			return done, err
		}
		buf, pos, done = buf[m:], pos+uint64(m), done+m
	}
	if len(buf) > 0 { // unaligned tail
		if err := d.read(pos/SectorSize, 1, unsafe.Pointer(&d.bounce[0])); err != nil {
			return done, err
		}
		done += copy(buf, d.bounce)
	}
	return done, eof
}

// read is VixDiskLib_Read of num sectors at start into buf; d.mu held.
func (d *disk) read(start, num uint64, buf unsafe.Pointer) error {
	l := d.lib
	h := d.h
	_, err := l.call(fnRead, num*SectorSize, func() string {
		return "start=" + strconv.FormatUint(start, 10) + " num=" + strconv.FormatUint(num, 10)
	}, func() C.struct_vdk_ret {
		return C.vdk_Read(l.c, h, C.uint64_t(start), C.uint64_t(num), buf)
	})
	return err
}
