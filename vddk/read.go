package vddk

/*
#include "vixdisklib.h"
*/
import "C"

import (
	"errors"
	"io"
	"strconv"
	"sync/atomic"
	"unsafe"
)

// ReadAt reads whole sectors: an aligned request goes straight into p (no
// copy, no allocation); an unaligned head or tail sector goes through a
// one-sector bounce buffer in C. Each part is one VixDiskLib_ReadAsync,
// submitted under the handle's C mutex and waited for without it, so
// concurrent ReadAt calls on one Disk are in flight together; without
// ReadAsync and Wait, or once ReadAsync answers VIX_E_NOT_SUPPORTED, each
// part is one VixDiskLib_Read under that mutex. p is lent to C only until
// the read has completed.
func (d *disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errNegativeOffset
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.c == nil {
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
		k := min(len(buf), int(SectorSize-skip))
		if err := d.read(pos/SectorSize, 1, unsafe.Pointer(&buf[0]), uint32(skip), uint32(k)); err != nil {
			return 0, err
		}
		buf, pos, done = buf[k:], pos+uint64(k), done+k
	}
	if m := len(buf) / SectorSize * SectorSize; m > 0 { // aligned middle
		if err := d.read(pos/SectorSize, uint64(m/SectorSize), unsafe.Pointer(&buf[0]), 0, 0); err != nil {
			return done, err
		}
		buf, pos, done = buf[m:], pos+uint64(m), done+m
	}
	if len(buf) > 0 { // unaligned tail
		if err := d.read(pos/SectorSize, 1, unsafe.Pointer(&buf[0]), 0, uint32(len(buf))); err != nil {
			return done, err
		}
		done += len(buf)
	}
	return done, eof
}

// read reads num sectors at start into buf, or with n > 0 bytes
// [skip, skip+n) of sector start (num 1); d.mu held shared.
func (d *disk) read(start, num uint64, buf unsafe.Pointer, skip, n uint32) error {
	c := d.c
	bytes := num * SectorSize
	if n > 0 {
		bytes = uint64(n)
	}
	return d.transfer(&d.async, fnReadAsync, fnRead, start, num, bytes, func() C.struct_vdk_ret {
		return C.vdk_disk_ReadAsync(c, C.uint64_t(start), C.uint64_t(num), buf, C.uint32_t(skip), C.uint32_t(n))
	}, func() C.struct_vdk_ret {
		return C.vdk_disk_Read(c, C.uint64_t(start), C.uint64_t(num), buf, C.uint32_t(skip), C.uint32_t(n))
	})
}

// transfer makes one data call of num sectors at start: the asynchronous
// one (asyncFn, doAsync) while *async holds, else the synchronous one;
// the first VIX_E_NOT_SUPPORTED of the asynchronous call clears *async
// for good and falls back. bytes is what the statistics count.
func (d *disk) transfer(async *atomic.Bool, asyncFn, syncFn fnID, start, num, bytes uint64,
	doAsync, doSync func() C.struct_vdk_ret) error {
	args := func() string {
		return "start=" + strconv.FormatUint(start, 10) + " num=" + strconv.FormatUint(num, 10)
	}
	if async.Load() {
		if !d.usedAsync.Load() {
			d.usedAsync.Store(true)
		}
		_, err := d.lib.call(asyncFn, bytes, args, doAsync)
		if !errors.Is(err, ErrNotSupported) {
			return err
		}
		if async.CompareAndSwap(true, false) {
			debugf("%s: %v: using %s", d.path, err, fnNames[syncFn])
		}
	}
	_, err := d.lib.call(syncFn, bytes, args, doSync)
	return err
}
