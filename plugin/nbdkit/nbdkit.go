package nbdkit

/*
#cgo CFLAGS: -Wall
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-all
#define NBDKIT_API_VERSION 2
#include <stdlib.h>
#include <nbdkit-plugin.h>

// nbdkit_error and nbdkit_debug are variadic: cgo cannot call them.
static void sendense_error (const char *msg) { nbdkit_error ("%s", msg); }
static void sendense_debug (const char *msg) { nbdkit_debug ("%s", msg); }
*/
import "C"

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"
)

// Block-status types accepted by Extents.Add.
const (
	ExtentHole = C.NBDKIT_EXTENT_HOLE
	ExtentZero = C.NBDKIT_EXTENT_ZERO
)

// Request flags passed to the Connection methods.
const (
	FlagReqOne   = C.NBDKIT_FLAG_REQ_ONE
	FlagFUA      = C.NBDKIT_FLAG_FUA
	FlagMayTrim  = C.NBDKIT_FLAG_MAY_TRIM
	FlagFastZero = C.NBDKIT_FLAG_FAST_ZERO
)

// Error reports msg through nbdkit_error.
func Error(msg string) {
	cs := C.CString(msg)
	C.sendense_error(cs)
	C.free(unsafe.Pointer(cs))
}

// Debug reports a message through nbdkit_debug (shown with nbdkit -v).
func Debug(format string, a ...any) {
	cs := C.CString(fmt.Sprintf(format, a...))
	C.sendense_debug(cs)
	C.free(unsafe.Pointer(cs))
}

// SetError sets the errno nbdkit sends to the client for a failed request.
func SetError(errno syscall.Errno) { C.nbdkit_set_error(C.int(errno)) }

// ReadPassword interprets a password parameter as nbdkit does: the value
// itself, "-" to prompt, "-FD" to read from a file descriptor or "+FILE" to
// read from a file.
func ReadPassword(value string) (string, error) {
	cv := C.CString(value)
	defer C.free(unsafe.Pointer(cv))
	var out *C.char
	if C.nbdkit_read_password(cv, &out) == -1 {
		return "", errors.New("could not read the password")
	}
	defer C.free(unsafe.Pointer(out))
	return C.GoString(out), nil
}

// Extents is the list a Connection's Extents method fills.
type Extents struct{ p *C.struct_nbdkit_extents }

// Add appends [offset, offset+length) with the given type (0, ExtentHole,
// ExtentHole|ExtentZero) to the reply.
func (e Extents) Add(offset, length uint64, typ uint32) error {
	if C.nbdkit_add_extent(e.p, C.uint64_t(offset), C.uint64_t(length), C.uint32_t(typ)) == -1 {
		return fmt.Errorf("nbdkit_add_extent %d+%d: failed", offset, length)
	}
	return nil
}

// internString copies s into memory nbdkit frees at the end of the
// connection (nbdkit_strdup_intern), for callbacks returning strings.
func internString(s string) *C.char {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return C.nbdkit_strdup_intern(cs)
}
