package nbdkit

/*
#define NBDKIT_API_VERSION 2
#include <stdint.h>
#include <nbdkit-plugin.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime/cgo"
	"runtime/debug"
	"syscall"
	"unsafe"
)

// The C front passes connection handles as uintptr_t: they are
// runtime/cgo.Handle values (never 0), so C retains no Go pointer.

// errnoer is an error that knows its errno (vddk.Error does).
type errnoer interface{ Errno() syscall.Errno }

// fail reports err to nbdkit and returns -1. The errno sent to the client
// is that of an error in err's chain with an Errno method, else a
// syscall.Errno in the chain, else EIO.
func fail(op string, err error) C.int {
	Error(err.Error())
	errno := syscall.EIO
	var e syscall.Errno
	var en errnoer
	if errors.As(err, &en) {
		errno = en.Errno()
	} else if errors.As(err, &e) {
		errno = e
	}
	SetError(errno)
	Debug("%s: %v", op, err)
	return -1
}

// failPanic reports a recovered panic as an error of the current request:
// the server keeps running.
func failPanic(op string, r any) C.int {
	Debug("panic in %s: %v\n%s", op, r, debug.Stack())
	return fail(op, fmt.Errorf("internal error in %s: %v", op, r))
}

// guard is deferred by callbacks returning a C int status.
func guard(op string, ret *C.int) {
	if r := recover(); r != nil {
		*ret = failPanic(op, r)
	}
}

func status(op string, err error) C.int {
	if err != nil {
		return fail(op, err)
	}
	return 0
}

func boolResult(op string, ok bool, err error) C.int {
	switch {
	case err != nil:
		return fail(op, err)
	case ok:
		return 1
	}
	return 0
}

func conn(h C.uintptr_t) Connection {
	return cgo.Handle(h).Value().(Connection)
}

//export sendense_go_config
func sendense_go_config(key, value *C.char) (ret C.int) {
	defer guard("config", &ret)
	return status("config", thePlugin.Config(C.GoString(key), C.GoString(value)))
}

//export sendense_go_config_complete
func sendense_go_config_complete() (ret C.int) {
	defer guard("config_complete", &ret)
	return status("config_complete", thePlugin.ConfigComplete())
}

//export sendense_go_after_fork
func sendense_go_after_fork() (ret C.int) {
	defer guard("after_fork", &ret)
	return status("after_fork", thePlugin.AfterFork())
}

//export sendense_go_debug
func sendense_go_debug(name *C.char, value C.int) {
	var ret C.int
	defer guard("debug", &ret)
	thePlugin.Debug(C.GoString(name), int(value))
}

//export sendense_go_unload
func sendense_go_unload() {
	var ret C.int
	defer guard("unload", &ret)
	thePlugin.Unload()
}

//export sendense_go_open
func sendense_go_open(readonly C.int) (h C.uintptr_t) {
	defer func() {
		if r := recover(); r != nil {
			failPanic("open", r)
			h = 0
		}
	}()
	c, err := thePlugin.Open(readonly != 0)
	if err != nil {
		fail("open", err)
		return 0
	}
	return C.uintptr_t(cgo.NewHandle(c))
}

//export sendense_go_close
func sendense_go_close(h C.uintptr_t) {
	var ret C.int
	defer guard("close", &ret)
	ch := cgo.Handle(h)
	defer ch.Delete()
	ch.Value().(Connection).Close()
}

//export sendense_go_get_size
func sendense_go_get_size(h C.uintptr_t) (ret C.int64_t) {
	defer func() {
		if r := recover(); r != nil {
			ret = C.int64_t(failPanic("get_size", r))
		}
	}()
	size, err := conn(h).GetSize()
	if err != nil {
		return C.int64_t(fail("get_size", err))
	}
	return C.int64_t(size)
}

//export sendense_go_block_size
func sendense_go_block_size(h C.uintptr_t, minimum, preferred, maximum *C.uint32_t) (ret C.int) {
	defer guard("block_size", &ret)
	mn, pf, mx, err := conn(h).BlockSize()
	if err != nil {
		return fail("block_size", err)
	}
	*minimum, *preferred, *maximum = C.uint32_t(mn), C.uint32_t(pf), C.uint32_t(mx)
	return 0
}

//export sendense_go_pread
func sendense_go_pread(h C.uintptr_t, buf unsafe.Pointer, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) (ret C.int) {
	defer guard("pread", &ret)
	// buf is nbdkit's C memory: the plugin reads straight into it.
	b := unsafe.Slice((*byte)(buf), int(count))
	return status("pread", conn(h).PRead(b, uint64(offset), uint32(flags)))
}

//export sendense_go_can_write
func sendense_go_can_write(h C.uintptr_t) (ret C.int) {
	defer guard("can_write", &ret)
	ok, err := conn(h).CanWrite()
	return boolResult("can_write", ok, err)
}

//export sendense_go_pwrite
func sendense_go_pwrite(h C.uintptr_t, buf unsafe.Pointer, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) (ret C.int) {
	defer guard("pwrite", &ret)
	// buf is nbdkit's C memory: the plugin writes straight from it.
	b := unsafe.Slice((*byte)(buf), int(count))
	return status("pwrite", conn(h).PWrite(b, uint64(offset), uint32(flags)))
}

//export sendense_go_can_flush
func sendense_go_can_flush(h C.uintptr_t) (ret C.int) {
	defer guard("can_flush", &ret)
	ok, err := conn(h).CanFlush()
	return boolResult("can_flush", ok, err)
}

//export sendense_go_flush
func sendense_go_flush(h C.uintptr_t, flags C.uint32_t) (ret C.int) {
	defer guard("flush", &ret)
	return status("flush", conn(h).Flush(uint32(flags)))
}

//export sendense_go_zero
func sendense_go_zero(h C.uintptr_t, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) (ret C.int) {
	defer guard("zero", &ret)
	return status("zero", conn(h).Zero(uint32(count), uint64(offset), uint32(flags)))
}

//export sendense_go_can_extents
func sendense_go_can_extents(h C.uintptr_t) (ret C.int) {
	defer guard("can_extents", &ret)
	ok, err := conn(h).CanExtents()
	return boolResult("can_extents", ok, err)
}

//export sendense_go_extents
func sendense_go_extents(h C.uintptr_t, count C.uint32_t, offset C.uint64_t, flags C.uint32_t, e *C.struct_nbdkit_extents) (ret C.int) {
	defer guard("extents", &ret)
	return status("extents", conn(h).Extents(uint32(count), uint64(offset), uint32(flags), Extents{e}))
}

//export sendense_go_can_multi_conn
func sendense_go_can_multi_conn(h C.uintptr_t) (ret C.int) {
	defer guard("can_multi_conn", &ret)
	ok, err := conn(h).CanMultiConn()
	return boolResult("can_multi_conn", ok, err)
}

//export sendense_go_export_description
func sendense_go_export_description(h C.uintptr_t) (ret *C.char) {
	defer func() {
		if r := recover(); r != nil {
			failPanic("export_description", r)
			ret = nil
		}
	}()
	s, err := conn(h).ExportDescription()
	if err != nil || s == "" {
		return nil
	}
	return internString(s)
}
