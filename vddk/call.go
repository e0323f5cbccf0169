package vddk

/*
#include <stdlib.h>
#include "vixdisklib.h"
*/
import "C"

import (
	"fmt"
	"sort"
	"strings"
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
	fnCreate               = fnID(C.VDK_FN_Create)
	fnOpen                 = fnID(C.VDK_FN_Open)
	fnClose                = fnID(C.VDK_FN_Close)
	fnGetInfo              = fnID(C.VDK_FN_GetInfo)
	fnFreeInfo             = fnID(C.VDK_FN_FreeInfo)
	fnGetTransportMode     = fnID(C.VDK_FN_GetTransportMode)
	fnRead                 = fnID(C.VDK_FN_Read)
	fnWrite                = fnID(C.VDK_FN_Write)
	fnReadAsync            = fnID(C.VDK_FN_ReadAsync)
	fnWriteAsync           = fnID(C.VDK_FN_WriteAsync)
	fnWait                 = fnID(C.VDK_FN_Wait)
	fnFlush                = fnID(C.VDK_FN_Flush)
	fnQueryAllocatedBlocks = fnID(C.VDK_FN_QueryAllocatedBlocks)
	fnFreeBlockList        = fnID(C.VDK_FN_FreeBlockList)
	numFns                 = int(C.VDK_FN_COUNT)
)

// datapath tells the calls that move disk data: traced only at
// TraceAll, as nbdkit-vddk-plugin's -D vddk.datapath.
func (id fnID) datapath() bool {
	switch id {
	case fnRead, fnWrite, fnReadAsync, fnWriteAsync:
		return true
	}
	return false
}

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
	Bytes  uint64        // bytes read or written (the data path calls)
	Time   time.Duration // total time spent in the function (asynchronous calls: until completion)
}

// Mean is the mean time of one call.
func (s CallStats) Mean() time.Duration {
	if s.Calls == 0 {
		return 0
	}
	return s.Time / time.Duration(s.Calls)
}

// Stats returns the totals of every function called at least once, the
// most time first (nbdkit's -D vddk.stats=1 idea).
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
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time > out[j].Time })
	return out
}

// FormatStats renders stats as a table, one line per function: calls,
// errors, bytes, total and mean microseconds.
func FormatStats(stats []CallStats) []string {
	lines := []string{fmt.Sprintf("%-34s %10s %7s %15s %15s %10s", "function", "calls", "errors", "bytes", "total µs", "mean µs")}
	for _, s := range stats {
		lines = append(lines, fmt.Sprintf("%-34s %10d %7d %15d %15d %10d", s.Name, s.Calls, s.Errors, s.Bytes,
			s.Time.Microseconds(), s.Mean().Microseconds()))
	}
	return lines
}

// call makes one vendor call: do performs it through its trampoline. The
// wrapper times and counts it, traces it (args is only evaluated when
// tracing; it must never include secrets) and converts a failure into
// *Error with VDDK's text. Nothing here allocates on success unless
// tracing, so the data path stays allocation-free.
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
			text = strings.TrimRight(C.GoString(r.text), "\n")
			C.free(unsafe.Pointer(r.text))
			r.text = nil
		}
		err = &Error{Op: fnNames[id], Code: code, Text: text}
	} else {
		c.bytes.Add(bytes)
	}
	if lvl := trace.Load(); lvl == TraceAll || (lvl == TraceControl && !id.datapath()) {
		res := "ok"
		if err != nil {
			res = err.Error()
		}
		debugf("call %s(%s) = %s in %v", fnNames[id], args(), res, elapsed)
	}
	return r, err
}

func noArgs() string { return "" }
