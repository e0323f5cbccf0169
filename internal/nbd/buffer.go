package nbd

/*
#include <stdlib.h>
#include "wrappers.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Buffer is memory in the C heap (page aligned) for asynchronous commands:
// libnbd reads or fills it after the Aio* call has returned, which Go memory
// does not allow. A Buffer must not be freed while a command using it is in
// flight (close the Handle first to abandon such commands).
type Buffer struct {
	ptr  unsafe.Pointer
	size int
}

// NewBuffer allocates size bytes of C memory. The contents are undefined.
func NewBuffer(size int) (*Buffer, error) {
	if size < 0 {
		return nil, fmt.Errorf("nbd: negative buffer size %d", size)
	}
	p := C.sd_buffer_alloc(C.size_t(size))
	if p == nil {
		return nil, fmt.Errorf("nbd: cannot allocate a %d byte buffer", size)
	}
	return &Buffer{ptr: p, size: size}, nil
}

// Bytes returns the buffer as a slice over the C memory; it is valid until
// Free.
func (b *Buffer) Bytes() []byte {
	if b.ptr == nil {
		return nil
	}
	return unsafe.Slice((*byte)(b.ptr), b.size)
}

// Len returns the buffer size in bytes.
func (b *Buffer) Len() int { return b.size }

// IsZero reports whether the first n bytes are all zero.
func (b *Buffer) IsZero(n int) bool {
	if n > b.size {
		n = b.size
	}
	if n <= 0 {
		return true
	}
	return C.sd_is_zero(b.ptr, C.size_t(n)) != 0
}

// Free releases the memory. Calling it again does nothing.
func (b *Buffer) Free() {
	if b.ptr != nil {
		C.free(b.ptr)
		b.ptr = nil
		b.size = 0
	}
}

// check validates an Aio* buffer argument.
func (b *Buffer) check(op string, count int) error {
	if b == nil || b.ptr == nil {
		return &Error{Op: op, Msg: op + ": nil or freed buffer"}
	}
	if count < 0 || count > b.size {
		return &Error{Op: op, Msg: fmt.Sprintf("%s: count %d outside the %d byte buffer", op, count, b.size)}
	}
	return nil
}
