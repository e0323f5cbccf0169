package vddk

/*
#include <stdlib.h>
#include "vixdisklib.h"
*/
import "C"

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"
)

// fnID indexes stubs.h.
type fnID int

const (
	fnInitEx               = fnID(C.VDK_FN_InitEx)
	fnExit                 = fnID(C.VDK_FN_Exit)
	fnConnectEx            = fnID(C.VDK_FN_ConnectEx)
	fnDisconnect           = fnID(C.VDK_FN_Disconnect)
	fnOpen                 = fnID(C.VDK_FN_Open)
	fnClose                = fnID(C.VDK_FN_Close)
	fnGetInfo              = fnID(C.VDK_FN_GetInfo)
	fnFreeInfo             = fnID(C.VDK_FN_FreeInfo)
	fnRead                 = fnID(C.VDK_FN_Read)
	fnGetTransportMode     = fnID(C.VDK_FN_GetTransportMode)
	fnReadAsync            = fnID(C.VDK_FN_ReadAsync)
	fnWait                 = fnID(C.VDK_FN_Wait)
	fnQueryAllocatedBlocks = fnID(C.VDK_FN_QueryAllocatedBlocks)
	fnFreeBlockList        = fnID(C.VDK_FN_FreeBlockList)
	numFns                 = int(C.VDK_FN_COUNT)
)

// fnNames[id] is "VixDiskLib_<name>", fnRequired[id] its stubs.h kind.
var (
	fnNames    [numFns]string
	fnRequired [numFns]bool
)

func init() {
	for i := range numFns {
		fnNames[i] = C.GoString(C.vdk_fn_name(C.int(i)))
		fnRequired[i] = C.vdk_fn_required(C.int(i)) != 0
	}
}

type callCounters struct {
	calls, errors, bytes, nanos atomic.Uint64
}

// CallStats are the totals of one VixDiskLib function since Load.
type CallStats struct {
	Name   string        // e.g. "VixDiskLib_Read"
	Calls  uint64        // number of calls
	Errors uint64        // calls that failed
	Bytes  uint64        // bytes read (Read and ReadAsync only)
	Time   time.Duration // total time spent in the function (ReadAsync: until the read completed)
}

// Stats returns the totals of every function called at least once, in
// stubs.h order (nbdkit's -D vddk.stats=1 idea).
func (l *Library) Stats() []CallStats {
	var out []CallStats
	for i := range l.stats {
		c := &l.stats[i]
		if n := c.calls.Load(); n > 0 {
			out = append(out, CallStats{
				Name: fnNames[i], Calls: n, Errors: c.errors.Load(),
				Bytes: c.bytes.Load(), Time: time.Duration(c.nanos.Load()),
			})
		}
	}
	return out
}

// call makes one vendor call: do performs it through its trampoline. The
// wrapper times and counts it, traces it (args is only evaluated when
// tracing; it must never include secrets) and converts a failure into
// *Error with VDDK's text. Nothing here allocates on success unless
// tracing, so the read path stays allocation-free.
func (l *Library) call(id fnID, bytes uint64, args func() string, do func() C.struct_vdk_ret) (C.struct_vdk_ret, error) {
	start := time.Now()
	r := do()
	elapsed := time.Since(start)

	c := &l.stats[id]
	c.calls.Add(1)
	c.nanos.Add(uint64(elapsed))
	var err error
	if code := uint64(r.err); code != CodeOK && code != CodeAsync {
		c.errors.Add(1)
		text := "(VDDK gave no text for this error)"
		if r.text != nil {
			text = C.GoString(r.text)
			C.free(unsafe.Pointer(r.text))
			r.text = nil
		}
		err = &Error{Op: fnNames[id], Code: code, Text: text}
	} else {
		c.bytes.Add(bytes)
	}
	if trace.Load() {
		res := "ok"
		if err != nil {
			res = err.Error()
		}
		debugf("call %s(%s) = %s in %v", fnNames[id], args(), res, elapsed)
	}
	return r, err
}

func noArgs() string { return "" }

// fmtArgs is a helper for call's args.
func fmtArgs(format string, a ...any) func() string {
	return func() string { return fmt.Sprintf(format, a...) }
}
