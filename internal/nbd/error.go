package nbd

/*
#include "wrappers.h"
*/
import "C"

import (
	"errors"
	"strings"
	"syscall"
)

// Error is a failed libnbd call.
type Error struct {
	Op    string        // the libnbd function, e.g. "nbd_pread"
	Msg   string        // libnbd's message (nbd_get_error)
	Errno syscall.Errno // nbd_get_errno; 0 when libnbd had none

	// Disconnected: the call was on a connected handle that had lost
	// its connection by the time it failed (libnbd's state is closed
	// or dead). errors.Is(err, ErrDisconnected) tests it.
	Disconnected bool
}

func (e *Error) Error() string {
	msg := e.Msg
	if msg == "" {
		msg = "failed"
		if e.Errno != 0 {
			msg = e.Errno.Error()
		}
	}
	if strings.HasPrefix(msg, e.Op+":") {
		return msg
	}
	return e.Op + ": " + msg
}

// Unwrap returns the errno, so errors.Is(err, syscall.ECONNREFUSED) works.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// Is makes errors.Is(err, ErrDisconnected) true for a call that failed
// on a handle whose connection was lost.
func (e *Error) Is(target error) bool {
	return target == ErrDisconnected && e.Disconnected
}

// ErrClosed is returned by calls on a closed Handle.
var ErrClosed = errors.New("nbd: handle is closed")

// ErrDisconnected matches (errors.Is) an *Error from a command, poll or
// notify on a handle whose connection to the server was lost: the
// server went away, the socket broke, or a command was issued after that
// happened. Errors the server returned on a live connection, and failed
// connection attempts, do not match.
var ErrDisconnected = errors.New("nbd: connection to the server lost")

// newError converts a captured C error.
func newError(op string, e *C.sd_error) error {
	return &Error{Op: op, Msg: C.GoString(&e.msg[0]), Errno: syscall.Errno(e.errnum), Disconnected: e.disconnected != 0}
}
