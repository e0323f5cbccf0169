package vddk

import (
	"errors"
	"fmt"
	"syscall"
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
	CodeDiskFull            uint64 = 8     // VIX_E_DISK_FULL
	CodeCancelled           uint64 = 10    // VIX_E_CANCELLED
	CodeFileReadOnly        uint64 = 11    // VIX_E_FILE_READ_ONLY
	CodeFileAlreadyExists   uint64 = 12    // VIX_E_FILE_ALREADY_EXISTS
	CodeFileAccessError     uint64 = 13    // VIX_E_FILE_ACCESS_ERROR
	CodeFileTooBig          uint64 = 21    // VIX_E_FILE_TOO_BIG
	CodeAuthenticationFail  uint64 = 35    // VIX_E_AUTHENTICATION_FAIL
	CodeInvalidHandle       uint64 = 1000  // VIX_E_INVALID_HANDLE
	CodeHostUserPermissions uint64 = 3014  // VIX_E_HOST_USER_PERMISSIONS (bad login)
	CodeDiskOutOfRange      uint64 = 16007 // VIX_E_DISK_OUTOFRANGE
	CodeDiskNotSupported    uint64 = 16013 // VIX_E_DISK_NOTSUPPORTED
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

// Errno is the errno an NBD client gets for e (nbdkit turns it into the
// protocol's error): ENOSPC for a full disk, EPERM for refused access or
// login, EINVAL for bad arguments and ranges, ENOTSUP for what this VDDK
// or disk cannot do, ENOMEM, ENOENT for a missing file, and EIO for
// everything else (I/O, network and unknown failures).
func (e *Error) Errno() syscall.Errno {
	switch e.VixCode() {
	case CodeDiskFull, CodeFileTooBig:
		return syscall.ENOSPC
	case CodeFileReadOnly, CodeFileAccessError, CodeHostUserPermissions, CodeAuthenticationFail, CodeSSLSecurity:
		return syscall.EPERM
	case CodeInvalidArg, CodeDiskOutOfRange, CodeInvalidHandle:
		return syscall.EINVAL
	case CodeNotSupported, CodeDiskNotSupported:
		return syscall.ENOTSUP
	case CodeOutOfMemory:
		return syscall.ENOMEM
	case CodeFileNotFound:
		return syscall.ENOENT
	}
	return syscall.EIO
}

// ErrNotSupported: the loaded VDDK lacks the optional function a feature
// needs, or answered VIX_E_NOT_SUPPORTED.
var ErrNotSupported = errors.New("vddk: not supported by this VDDK library")

// Sentinels for errors.Is.
var (
	ErrInvalidArg    = &Error{Code: CodeInvalidArg, Text: "One of the parameters was invalid"}
	ErrFileNotFound  = &Error{Code: CodeFileNotFound, Text: "A file was not found"}
	ErrInvalidHandle = &Error{Code: CodeInvalidHandle, Text: "The handle is not a valid VIX object"}
	ErrLogin         = &Error{Code: CodeHostUserPermissions, Text: "Insufficient permissions in the host operating system"}
	ErrOutOfRange    = &Error{Code: CodeDiskOutOfRange, Text: "The requested sectors are out of range"}
	ErrCannotConnect = &Error{Code: CodeCannotConnect, Text: "Cannot connect to host"}
	ErrSSLSecurity   = &Error{Code: CodeSSLSecurity, Text: "SSL security error"}
	ErrDiskFull      = &Error{Code: CodeDiskFull, Text: "The disk is full"}
	ErrAlreadyExists = &Error{Code: CodeFileAlreadyExists, Text: "The file already exists"}
	errClosed        = errors.New("vddk: use of a closed disk")
	// ErrReadOnly is WriteAt's answer on a disk opened read-only.
	ErrReadOnly       = fmt.Errorf("vddk: the disk is open read-only: %w", syscall.EPERM)
	errClosedConn     = errors.New("vddk: use of a closed connection")
	errNotInitialized = errors.New("vddk: Library.Init has not been called")
)
