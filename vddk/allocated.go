package vddk

/*
#include "vixdisklib.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/sendense/capture/internal/extent"
)

const (
	chunkSectors = 128                       // VIXDISKLIB_MIN_CHUNK_SIZE: 64 KiB
	chunkBytes   = chunkSectors * SectorSize // 65536
	maxChunks    = 512 * 1024                // VIXDISKLIB_MAX_CHUNK_NUMBER per call
)

// Allocated asks QueryAllocatedBlocks at chunkSize 128 sectors, in calls
// of at most 512×1024 chunks that never go past the last whole chunk (VDDK
// rejects ranges beyond the capacity); the final partial chunk is reported
// allocated, as VMware's own sample does. If this VDDK lacks the call or
// answers VIX_E_NOT_SUPPORTED, every block is data.
func (d *disk) Allocated(off, length uint64) (extent.List, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.c == nil {
		return nil, errClosed
	}
	end := off + length
	if end < off || end > d.size {
		end = d.size
	}
	if off >= end {
		return nil, nil
	}
	if !d.canQuery.Load() {
		return extent.List{{Offset: off, Length: end - off}}, nil
	}

	whole := d.sectors / chunkSectors * chunkSectors // sectors in whole chunks
	s := off / chunkBytes * chunkSectors
	e := min((end+chunkBytes-1)/chunkBytes*chunkSectors, whole)
	var out []extent.Extent
	for s < e {
		n := min(e-s, uint64(maxChunks)*chunkSectors)
		var err error
		out, err = d.queryBlocks(s, n, out)
		if errors.Is(err, ErrNotSupported) {
			debugf("%s: %v: reporting every block as data", d.path, err)
			d.canQuery.Store(false)
			return extent.List{{Offset: off, Length: end - off}}, nil
		}
		if err != nil {
			return nil, err
		}
		s += n
	}
	if tail := whole * SectorSize; end > tail {
		out = append(out, extent.Extent{Offset: tail, Length: d.size - tail})
	}
	return extent.Normalize(out).Clip(off, end-off), nil
}

// queryBlocks appends the allocated blocks of sectors [start, start+num)
// to out, in bytes; d.mu held shared (or d not yet shared).
func (d *disk) queryBlocks(start, num uint64, out []extent.Extent) ([]extent.Extent, error) {
	l := d.lib
	var list *C.VixDiskLibBlockList
	_, err := l.call(fnQueryAllocatedBlocks, 0, func() string {
		return fmt.Sprintf("start=%d num=%d chunk=%d", start, num, chunkSectors)
	}, func() C.struct_vdk_ret {
		return C.vdk_disk_QueryAllocatedBlocks(d.c, C.uint64_t(start), C.uint64_t(num), chunkSectors, &list)
	})
	if err != nil {
		return out, err
	}
	if list == nil {
		return out, errors.New("vddk: VixDiskLib_QueryAllocatedBlocks returned no list")
	}
	n := int(list.numBlocks)
	if n > 0 {
		blocks := unsafe.Slice((*C.VixDiskLibBlock)(unsafe.Add(unsafe.Pointer(list), C.VDK_BLOCKS_OFFSET)), n)
		for _, b := range blocks {
			out = append(out, extent.Extent{
				Offset: uint64(b.offset) * SectorSize,
				Length: uint64(b.length) * SectorSize,
			})
		}
	}
	l.call(fnFreeBlockList, 0, noArgs, func() C.struct_vdk_ret { return C.vdk_FreeBlockList(l.c, list) })
	return out, nil
}
