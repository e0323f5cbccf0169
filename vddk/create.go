package vddk

/*
#include <stdlib.h>
#include "vixdisklib.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// DiskType is VixDiskLibDiskType, the kind of disk VixDiskLib_Create
// makes.
type DiskType int

// Disk types (VIXDISKLIB_DISK_*).
const (
	DiskMonolithicSparse DiskType = 1
	DiskMonolithicFlat   DiskType = 2
	DiskSplitSparse      DiskType = 3
	DiskSplitFlat        DiskType = 4
	DiskVMFSFlat         DiskType = 5
	DiskStreamOptimized  DiskType = 6
	DiskVMFSThin         DiskType = 7
	DiskVMFSSparse       DiskType = 8
)

// AdapterType is VixDiskLibAdapterType.
type AdapterType int

// Adapter types (VIXDISKLIB_ADAPTER_*).
const (
	AdapterIDE          AdapterType = 1
	AdapterSCSIBusLogic AdapterType = 2
	AdapterSCSILSILogic AdapterType = 3
)

// Virtual hardware versions (VIXDISKLIB_HWVERSION_*).
const (
	HWVersionWorkstation4 uint16 = 3
	HWVersionWorkstation5 uint16 = 4
	HWVersionWorkstation6 uint16 = 6
	HWVersionESX30        uint16 = HWVersionWorkstation5
	HWVersionESX4x        uint16 = 7
	HWVersionESX50        uint16 = 8
	HWVersionESX51        uint16 = 9
	HWVersionESX55        uint16 = 10
	HWVersionESX60        uint16 = 11
	HWVersionESX65        uint16 = 13
)

// CreateParams describe a disk for Connection.Create.
type CreateParams struct {
	Type      DiskType
	Adapter   AdapterType
	HWVersion uint16
	Size      uint64 // bytes, a multiple of SectorSize
}

// Create calls VixDiskLib_Create(path, params) (no progress callback).
// VDDK creates local (hosted) disks only: on a remote connection it fails.
func (c *Connection) Create(path string, p CreateParams) error {
	if p.Size == 0 || p.Size%SectorSize != 0 {
		return fmt.Errorf("vddk: create %s: size %d is not a positive multiple of %d", path, p.Size, SectorSize)
	}
	l := c.lib
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosedConn
	}
	openCloseMu.Lock()
	defer openCloseMu.Unlock()
	_, err := l.call(fnCreate, 0, func() string {
		return fmt.Sprintf("path=%q type=%d adapter=%d hwVersion=%d capacity=%d", path, p.Type, p.Adapter, p.HWVersion, p.Size/SectorSize)
	}, func() C.struct_vdk_ret {
		return C.vdk_Create(l.c, c.c, cpath, C.int(p.Type), C.int(p.Adapter), C.uint16_t(p.HWVersion), C.uint64_t(p.Size/SectorSize))
	})
	return err
}
