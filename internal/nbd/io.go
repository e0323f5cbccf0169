package nbd

/*
#include <stdlib.h>
#include "wrappers.h"
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/sendense/capture/internal/extent"
)

// bytesPtr returns a pointer to p's first byte, or nil for an empty slice.
func bytesPtr(p []byte) unsafe.Pointer {
	if len(p) == 0 {
		return nil
	}
	return unsafe.Pointer(&p[0])
}

// Pread reads len(p) bytes at offset. p may be Go memory: libnbd does not
// keep it after the call.
func (h *Handle) Pread(p []byte, offset uint64, flags CmdFlag) error {
	c, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if C.sd_pread(c, bytesPtr(p), C.size_t(len(p)), C.uint64_t(offset), C.uint32_t(flags), &e) == -1 {
		return newError("nbd_pread", &e)
	}
	return nil
}

// Pwrite writes p at offset.
func (h *Handle) Pwrite(p []byte, offset uint64, flags CmdFlag) error {
	c, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if C.sd_pwrite(c, bytesPtr(p), C.size_t(len(p)), C.uint64_t(offset), C.uint32_t(flags), &e) == -1 {
		return newError("nbd_pwrite", &e)
	}
	return nil
}

// Zero writes zeroes over [offset, offset+count). Without CmdFlagNoHole the
// server may deallocate the range, but it must read back as zeroes.
func (h *Handle) Zero(count, offset uint64, flags CmdFlag) error {
	c, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if C.sd_zero(c, C.uint64_t(count), C.uint64_t(offset), C.uint32_t(flags), &e) == -1 {
		return newError("nbd_zero", &e)
	}
	return nil
}

// Trim discards [offset, offset+count); the contents become unspecified.
func (h *Handle) Trim(count, offset uint64, flags CmdFlag) error {
	c, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if C.sd_trim(c, C.uint64_t(count), C.uint64_t(offset), C.uint32_t(flags), &e) == -1 {
		return newError("nbd_trim", &e)
	}
	return nil
}

// Flush asks the server to commit completed writes to stable storage.
func (h *Handle) Flush(flags CmdFlag) error {
	c, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if C.sd_flush(c, C.uint32_t(flags), &e) == -1 {
		return newError("nbd_flush", &e)
	}
	return nil
}

// BlockStatus returns the base:allocation extents the server reports from
// offset on. count is a hint (at most 4 GiB − 1): the server may describe
// less, and its last extent may reach past offset+count. Types are
// combinations of StateHole and StateZero (extent.Hole, extent.Zero).
func (h *Handle) BlockStatus(count, offset uint64, flags CmdFlag) ([]extent.Typed, error) {
	c, err := h.lock()
	if err != nil {
		return nil, err
	}
	defer h.unlock()
	var e C.sd_error
	// The extents struct is C memory: libnbd's callback keeps a pointer to
	// it for the duration of the call.
	out := (*C.sd_extents)(C.calloc(1, C.size_t(unsafe.Sizeof(C.sd_extents{}))))
	if out == nil {
		return nil, &Error{Op: "nbd_block_status", Msg: "out of memory"}
	}
	defer func() {
		C.sd_extents_free(out)
		C.free(unsafe.Pointer(out))
	}()
	if C.sd_block_status(c, C.uint64_t(count), C.uint64_t(offset), C.uint32_t(flags), out, &e) == -1 {
		return nil, newError("nbd_block_status", &e)
	}
	if out.seen == 0 {
		return nil, &Error{Op: "nbd_block_status", Msg: "nbd_block_status: server sent no base:allocation extents"}
	}
	entries := unsafe.Slice((*uint32)(unsafe.Pointer(out.entries)), int(out.n))
	res := make([]extent.Typed, 0, len(entries)/2)
	off := uint64(out.offset)
	for i := 0; i+1 < len(entries); i += 2 {
		n := uint64(entries[i])
		if n == 0 {
			return nil, &Error{Op: "nbd_block_status", Msg: fmt.Sprintf("nbd_block_status: server sent a zero-length extent at offset %d", off)}
		}
		res = append(res, extent.Typed{Offset: off, Length: n, Type: entries[i+1]})
		off += n
	}
	if len(res) == 0 {
		return nil, &Error{Op: "nbd_block_status", Msg: fmt.Sprintf("nbd_block_status: server sent no extents at offset %d", offset)}
	}
	return res, nil
}
