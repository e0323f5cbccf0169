package vddk

/*
#include "vixdisklib.h"
*/
import "C"

import (
	"fmt"
	"log/slog"
	"sync/atomic"
)

// Log levels passed to the function given to SetLogger.
const (
	LevelDebug = "debug" // VDDK's log function; this package's call trace
	LevelWarn  = "warn"  // VDDK's warning function
	LevelError = "error" // VDDK's panic function
)

type logFunc func(level, msg string)

var (
	logger atomic.Pointer[logFunc]
	trace  atomic.Int32
)

// SetLogger sets where VDDK's log, warning and panic messages (the
// printf-style callbacks given to InitEx, formatted in C) and this
// package's own messages go. fn may be called from any thread, also
// VDDK's own, and concurrently. nil restores the default: log/slog at
// Debug, Warn and Error.
func SetLogger(fn func(level, msg string)) {
	if fn == nil {
		logger.Store(nil)
		return
	}
	f := logFunc(fn)
	logger.Store(&f)
}

// Trace levels of SetTrace.
const (
	TraceOff     = 0 // the default
	TraceControl = 1 // every call but Read, Write and their Async forms
	TraceAll     = 2 // every call
)

// SetTrace sets which VixDiskLib calls get a debug message (function,
// arguments without secrets, result, duration).
func SetTrace(level int) { trace.Store(int32(level)) }

func logMsg(level, msg string) {
	if p := logger.Load(); p != nil {
		(*p)(level, msg)
		return
	}
	switch level {
	case LevelWarn:
		slog.Warn(msg, "component", "vddk")
	case LevelError:
		slog.Error(msg, "component", "vddk")
	default:
		slog.Debug(msg, "component", "vddk")
	}
}

func debugf(format string, args ...any) { logMsg(LevelDebug, fmt.Sprintf(format, args...)) }

//export sendenseVddkLog
func sendenseVddkLog(level C.int, msg *C.char) {
	vddkLog(int(level), C.GoString(msg))
}

// vddkLog handles a message from VDDK's log (0), warning (1) or panic (2)
// function.
func vddkLog(level int, msg string) {
	l := LevelDebug
	switch level {
	case 1:
		l = LevelWarn
	case 2:
		l = LevelError
	}
	logMsg(l, "VDDK: "+msg)
}
