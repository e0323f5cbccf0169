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

// ErrClosed is returned by calls on a closed Handle.
var ErrClosed = errors.New("nbd: handle is closed")

// newError converts a captured C error.
func newError(op string, e *C.sd_error) error {
	return &Error{Op: op, Msg: C.GoString(&e.msg[0]), Errno: syscall.Errno(e.errnum)}
}
