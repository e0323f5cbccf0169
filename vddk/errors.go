package vddk

import (
	"errors"
	"fmt"
)

// VIX error codes this package and its callers look at. VDDK may set bits
// above the low 16 (VIX_ERROR_CODE); comparisons use the low 16 only.
const (
	CodeOK                  uint64 = 0
	CodeFail                uint64 = 1     // VIX_E_FAIL
	CodeOutOfMemory         uint64 = 2     // VIX_E_OUT_OF_MEMORY
	CodeInvalidArg          uint64 = 3     // VIX_E_INVALID_ARG
	CodeFileNotFound        uint64 = 4     // VIX_E_FILE_NOT_FOUND
	CodeNotSupported        uint64 = 6     // VIX_E_NOT_SUPPORTED
	CodeFileError           uint64 = 7     // VIX_E_FILE_ERROR
	CodeFileAccessError     uint64 = 13    // VIX_E_FILE_ACCESS_ERROR
	CodeInvalidHandle       uint64 = 1000  // VIX_E_INVALID_HANDLE
	CodeHostUserPermissions uint64 = 3014  // VIX_E_HOST_USER_PERMISSIONS (bad login)
	CodeDiskOutOfRange      uint64 = 16007 // VIX_E_DISK_OUTOFRANGE
	CodeCannotConnect       uint64 = 18000 // VIX_E_CANNOT_CONNECT_TO_HOST
	CodeAsync               uint64 = 25000 // VIX_ASYNC (not an error)
	CodeSSLSecurity         uint64 = 30201 // VIX_E_NET_HTTP_SSL_SECURITY
)

// Error is a failed VixDiskLib call: the function, the VixError and VDDK's
// text for it. errors.Is(err, ErrFileNotFound) and friends compare codes.
type Error struct {
	Op   string // e.g. "VixDiskLib_Open"
	Code uint64 // the VixError as returned
	Text string // VixDiskLib_GetErrorText
}

// Error formats e as "VixDiskLib_Open: <VDDK text> (VixError 4)".
func (e *Error) Error() string {
	if e.Op == "" {
		return fmt.Sprintf("%s (VixError %d)", e.Text, e.Code)
	}
	return fmt.Sprintf("%s: %s (VixError %d)", e.Op, e.Text, e.Code)
}

// VixCode returns VIX_ERROR_CODE(e.Code), the low 16 bits.
func (e *Error) VixCode() uint64 { return e.Code & 0xFFFF }

// Is reports whether target is ErrNotSupported and e is
// VIX_E_NOT_SUPPORTED, or target is an *Error with the same VIX_ERROR_CODE
// (and the same Op, when target names one).
func (e *Error) Is(target error) bool {
	if target == ErrNotSupported {
		return e.VixCode() == CodeNotSupported
	}
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.VixCode() == e.VixCode() && (t.Op == "" || t.Op == e.Op)
}

// ErrNotSupported: the loaded VDDK lacks the optional function a feature
// needs, or answered VIX_E_NOT_SUPPORTED.
var ErrNotSupported = errors.New("vddk: not supported by this VDDK library")

// Sentinels for errors.Is.
var (
	ErrInvalidArg     = &Error{Code: CodeInvalidArg, Text: "One of the parameters was invalid"}
	ErrFileNotFound   = &Error{Code: CodeFileNotFound, Text: "A file was not found"}
	ErrInvalidHandle  = &Error{Code: CodeInvalidHandle, Text: "The handle is not a valid VIX object"}
	ErrLogin          = &Error{Code: CodeHostUserPermissions, Text: "Insufficient permissions in the host operating system"}
	ErrOutOfRange     = &Error{Code: CodeDiskOutOfRange, Text: "The requested sectors are out of range"}
	ErrCannotConnect  = &Error{Code: CodeCannotConnect, Text: "Cannot connect to host"}
	ErrSSLSecurity    = &Error{Code: CodeSSLSecurity, Text: "SSL security error"}
	errClosed         = errors.New("vddk: use of a closed disk")
	errClosedConn     = errors.New("vddk: use of a closed connection")
	errNotInitialized = errors.New("vddk: Library.Init has not been called")
)
