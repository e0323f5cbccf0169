package nbd

/*
#cgo pkg-config: libnbd
#include <stdlib.h>
#include "wrappers.h"
*/
import "C"

import (
	"sync"
	"unsafe"
)

// ContextBaseAllocation is the metadata context BlockStatus reports.
const ContextBaseAllocation = "base:allocation"

// Block-status flags of base:allocation (LIBNBD_STATE_*).
const (
	StateHole uint32 = C.LIBNBD_STATE_HOLE
	StateZero uint32 = C.LIBNBD_STATE_ZERO
)

// CmdFlag is a command flag (LIBNBD_CMD_FLAG_*).
type CmdFlag uint32

const (
	CmdFlagFUA      CmdFlag = C.LIBNBD_CMD_FLAG_FUA       // write through to stable storage
	CmdFlagNoHole   CmdFlag = C.LIBNBD_CMD_FLAG_NO_HOLE   // Zero: allocate, do not punch a hole
	CmdFlagDF       CmdFlag = C.LIBNBD_CMD_FLAG_DF        // Pread: do not fragment the reply
	CmdFlagReqOne   CmdFlag = C.LIBNBD_CMD_FLAG_REQ_ONE   // BlockStatus: one extent only
	CmdFlagFastZero CmdFlag = C.LIBNBD_CMD_FLAG_FAST_ZERO // Zero: fail unless faster than writing
)

// BlockSizeKind selects a block size constraint for BlockSize.
type BlockSizeKind int

const (
	BlockSizeMinimum   BlockSizeKind = C.LIBNBD_SIZE_MINIMUM
	BlockSizePreferred BlockSizeKind = C.LIBNBD_SIZE_PREFERRED
	BlockSizeMaximum   BlockSizeKind = C.LIBNBD_SIZE_MAXIMUM
)

// Handle is one libnbd handle, i.e. one connection to an NBD server.
type Handle struct {
	mu sync.RWMutex // read-held by every call, write-held by Close
	h  *C.struct_nbd_handle

	amu  sync.Mutex       // serialises aio submission and retirement
	tags map[int64]uint64 // cookie → caller's tag of commands in flight
	done []C.sd_done      // scratch for Completions
}

// Create makes a new, unconnected handle that will request the
// base:allocation metadata context when it connects.
func Create() (*Handle, error) {
	var e C.sd_error
	p := C.sd_create(&e)
	if p == nil {
		return nil, newError("nbd_create", &e)
	}
	h := &Handle{h: p, tags: make(map[int64]uint64)}
	if err := h.AddMetaContext(ContextBaseAllocation); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// Dial creates a handle and connects it to an NBD URI.
func Dial(uri string) (*Handle, error) {
	h, err := Create()
	if err != nil {
		return nil, err
	}
	if err := h.Connect(uri); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// lock returns the C handle with the read lock held, or ErrClosed.
func (h *Handle) lock() (*C.struct_nbd_handle, error) {
	h.mu.RLock()
	if h.h == nil {
		h.mu.RUnlock()
		return nil, ErrClosed
	}
	return h.h, nil
}

func (h *Handle) unlock() { h.mu.RUnlock() }

// Close closes the connection and frees the handle. Commands still in flight
// are abandoned; their buffers may be freed once Close returns. Calling
// Close again does nothing. Close waits for synchronous calls running in
// other goroutines to return.
func (h *Handle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.h != nil {
		C.nbd_close(h.h)
		h.h = nil
	}
	return nil
}

// Shutdown asks the server to disconnect cleanly after the commands in
// flight (nbd_shutdown). The handle must still be closed.
func (h *Handle) Shutdown() error {
	p, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if C.sd_shutdown(p, 0, &e) == -1 {
		return newError("nbd_shutdown", &e)
	}
	return nil
}

// withString calls f with s as a C string.
func withString(s string, f func(*C.char) C.int) C.int {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return f(cs)
}

// SetName sets the handle's name used in libnbd's debug messages.
func (h *Handle) SetName(name string) error {
	p, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if withString(name, func(s *C.char) C.int { return C.sd_set_handle_name(p, s, &e) }) == -1 {
		return newError("nbd_set_handle_name", &e)
	}
	return nil
}

// SetPreadInitialize chooses whether libnbd clears read buffers before
// each read (the default, a guard against leaking old memory if a server
// misbehaves). Copiers that never look at a failed read's buffer turn it
// off: clearing costs a memset of every byte read.
func (h *Handle) SetPreadInitialize(on bool) error {
	p, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	v := C.int(0)
	if on {
		v = 1
	}
	if C.sd_set_pread_initialize(p, v, &e) == -1 {
		return newError("nbd_set_pread_initialize", &e)
	}
	return nil
}

// AddMetaContext requests a metadata context; only before connecting.
func (h *Handle) AddMetaContext(name string) error {
	p, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if withString(name, func(s *C.char) C.int { return C.sd_add_meta_context(p, s, &e) }) == -1 {
		return newError("nbd_add_meta_context", &e)
	}
	return nil
}

// Connect connects to an NBD URI such as nbd://host:port/export or
// nbd+unix:///export?socket=/path (nbd_connect_uri).
func (h *Handle) Connect(uri string) error {
	p, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if withString(uri, func(s *C.char) C.int { return C.sd_connect_uri(p, s, &e) }) == -1 {
		return newError("nbd_connect_uri", &e)
	}
	return nil
}

// ConnectUnix connects to a server listening on a Unix domain socket,
// default export.
func (h *Handle) ConnectUnix(path string) error {
	p, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if withString(path, func(s *C.char) C.int { return C.sd_connect_unix(p, s, &e) }) == -1 {
		return newError("nbd_connect_unix", &e)
	}
	return nil
}

// ConnectSocket runs the NBD handshake over an already connected socket.
// The handle takes ownership of fd and closes it when it is closed.
func (h *Handle) ConnectSocket(fd int) error {
	p, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if C.sd_connect_socket(p, C.int(fd), &e) == -1 {
		return newError("nbd_connect_socket", &e)
	}
	return nil
}

// Size returns the export size in bytes.
func (h *Handle) Size() (uint64, error) {
	p, err := h.lock()
	if err != nil {
		return 0, err
	}
	defer h.unlock()
	var e C.sd_error
	r := C.sd_get_size(p, &e)
	if r == -1 {
		return 0, newError("nbd_get_size", &e)
	}
	return uint64(r), nil
}

// BlockSize returns one of the server's block size constraints, 0 if it
// advertised none.
func (h *Handle) BlockSize(kind BlockSizeKind) (uint64, error) {
	p, err := h.lock()
	if err != nil {
		return 0, err
	}
	defer h.unlock()
	var e C.sd_error
	r := C.sd_get_block_size(p, C.int(kind), &e)
	if r == -1 {
		return 0, newError("nbd_get_block_size", &e)
	}
	return uint64(r), nil
}

// flag queries one of the export's flags (see sd_flag in wrappers.c).
func (h *Handle) flag(which int, op string) (bool, error) {
	p, err := h.lock()
	if err != nil {
		return false, err
	}
	defer h.unlock()
	var e C.sd_error
	r := C.sd_flag(p, C.int(which), &e)
	if r == -1 {
		return false, newError(op, &e)
	}
	return r != 0, nil
}

// IsReadOnly reports whether the export refuses writes.
func (h *Handle) IsReadOnly() (bool, error) { return h.flag(0, "nbd_is_read_only") }

// CanFlush reports whether the server supports Flush.
func (h *Handle) CanFlush() (bool, error) { return h.flag(1, "nbd_can_flush") }

// CanFUA reports whether the server supports CmdFlagFUA.
func (h *Handle) CanFUA() (bool, error) { return h.flag(2, "nbd_can_fua") }

// CanTrim reports whether the server supports Trim.
func (h *Handle) CanTrim() (bool, error) { return h.flag(3, "nbd_can_trim") }

// CanZero reports whether the server supports Zero.
func (h *Handle) CanZero() (bool, error) { return h.flag(4, "nbd_can_zero") }

// CanFastZero reports whether the server supports CmdFlagFastZero.
func (h *Handle) CanFastZero() (bool, error) { return h.flag(5, "nbd_can_fast_zero") }

// CanMultiConn reports whether several connections to this export see a
// consistent image (a flush on one covers writes completed on all).
func (h *Handle) CanMultiConn() (bool, error) { return h.flag(6, "nbd_can_multi_conn") }

// CanCache reports whether the server supports the cache command.
func (h *Handle) CanCache() (bool, error) { return h.flag(7, "nbd_can_cache") }

// CanBlockStatus reports whether base:allocation was negotiated, i.e.
// whether BlockStatus can work.
func (h *Handle) CanBlockStatus() (bool, error) { return h.flag(8, "nbd_can_meta_context") }
