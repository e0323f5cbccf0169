package nbd

/*
#include <poll.h>
#include <stdlib.h>
#include "wrappers.h"
*/
import "C"

import (
	"time"
)

// Completion is a finished asynchronous command.
type Completion struct {
	Tag uint64 // the tag given when the command was started
	Err error  // nil on success, else an *Error from the server or libnbd
}

// Poll events as in poll(2), for PollEvents and Notify.
const (
	PollIn  int16 = C.POLLIN
	PollOut int16 = C.POLLOUT
	PollErr int16 = C.POLLERR
	PollHup int16 = C.POLLHUP
)

// start runs call, which starts one command on c, and records the
// command's cookie under the caller's tag; op names it in errors.
func (h *Handle) start(op string, tag uint64, call func(c *C.struct_nbd_handle, e *C.sd_error) C.int64_t) error {
	c, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	h.amu.Lock()
	defer h.amu.Unlock()
	var e C.sd_error
	cookie := call(c, &e)
	if cookie == -1 {
		return newError(op, &e)
	}
	h.tags[int64(cookie)] = tag
	return nil
}

// AioPread starts reading count bytes at offset into buf. The command's
// completion is reported by Completions under tag.
func (h *Handle) AioPread(buf *Buffer, count int, offset uint64, tag uint64) error {
	if err := buf.check("nbd_aio_pread", count); err != nil {
		return err
	}
	return h.start("nbd_aio_pread", tag, func(c *C.struct_nbd_handle, e *C.sd_error) C.int64_t {
		return C.sd_aio_pread(c, buf.ptr, C.size_t(count), C.uint64_t(offset), 0, e)
	})
}

// AioPwrite starts writing the first count bytes of buf at offset.
func (h *Handle) AioPwrite(buf *Buffer, count int, offset uint64, flags CmdFlag, tag uint64) error {
	if err := buf.check("nbd_aio_pwrite", count); err != nil {
		return err
	}
	return h.start("nbd_aio_pwrite", tag, func(c *C.struct_nbd_handle, e *C.sd_error) C.int64_t {
		return C.sd_aio_pwrite(c, buf.ptr, C.size_t(count), C.uint64_t(offset), C.uint32_t(flags), e)
	})
}

// AioZero starts writing zeroes over [offset, offset+count) (see Zero).
func (h *Handle) AioZero(count, offset uint64, flags CmdFlag, tag uint64) error {
	return h.start("nbd_aio_zero", tag, func(c *C.struct_nbd_handle, e *C.sd_error) C.int64_t {
		return C.sd_aio_zero(c, C.uint64_t(count), C.uint64_t(offset), C.uint32_t(flags), e)
	})
}

// AioTrim starts discarding [offset, offset+count).
func (h *Handle) AioTrim(count, offset uint64, flags CmdFlag, tag uint64) error {
	return h.start("nbd_aio_trim", tag, func(c *C.struct_nbd_handle, e *C.sd_error) C.int64_t {
		return C.sd_aio_trim(c, C.uint64_t(count), C.uint64_t(offset), C.uint32_t(flags), e)
	})
}

// AioFlush starts a flush.
func (h *Handle) AioFlush(flags CmdFlag, tag uint64) error {
	return h.start("nbd_aio_flush", tag, func(c *C.struct_nbd_handle, e *C.sd_error) C.int64_t {
		return C.sd_aio_flush(c, C.uint32_t(flags), e)
	})
}

// Completions retires the commands that have finished and appends them to
// dst. Progress on the socket comes from Notify, Poll or synchronous calls.
func (h *Handle) Completions(dst []Completion) []Completion {
	c, err := h.lock()
	if err != nil {
		return dst
	}
	defer h.unlock()
	h.amu.Lock()
	defer h.amu.Unlock()
	if len(h.tags) == 0 {
		return dst
	}
	if h.done == nil {
		h.done = make([]C.sd_done, 16)
	}
	for {
		n := int(C.sd_aio_drain(c, &h.done[0], C.int(len(h.done))))
		for i := 0; i < n; i++ {
			d := &h.done[i]
			cookie := int64(d.cookie)
			tag, ok := h.tags[cookie]
			if !ok {
				continue // not ours: nothing to report
			}
			delete(h.tags, cookie)
			var cerr error
			if d.err.errnum != 0 {
				cerr = newError("nbd_aio_command_completed", &d.err)
			}
			dst = append(dst, Completion{Tag: tag, Err: cerr})
		}
		if n < len(h.done) {
			return dst
		}
	}
}

// Pending returns how many Aio* commands have not been reported by
// Completions yet.
func (h *Handle) Pending() int {
	h.amu.Lock()
	defer h.amu.Unlock()
	return len(h.tags)
}

// InFlight returns how many commands still await the server's reply
// (nbd_aio_in_flight).
func (h *Handle) InFlight() int {
	c, err := h.lock()
	if err != nil {
		return 0
	}
	defer h.unlock()
	return int(C.sd_aio_in_flight(c))
}

// FD returns the connection's socket (nbd_aio_get_fd), for socket options
// such as buffer sizes. It stays owned by the handle.
func (h *Handle) FD() (int, error) {
	c, err := h.lock()
	if err != nil {
		return -1, err
	}
	defer h.unlock()
	var fd C.int
	C.sd_aio_events(c, &fd)
	if fd < 0 {
		return -1, &Error{Op: "nbd_aio_get_fd", Msg: "nbd_aio_get_fd: not connected"}
	}
	return int(fd), nil
}

// PollEvents returns the socket and the poll(2) events libnbd waits for
// now (PollIn, PollOut), for callers that poll several handles at once; fd
// is -1 when there is nothing to wait for.
func (h *Handle) PollEvents() (fd int, events int16) {
	c, err := h.lock()
	if err != nil {
		return -1, 0
	}
	defer h.unlock()
	var cfd C.int
	ev := C.sd_aio_events(c, &cfd)
	return int(cfd), int16(ev)
}

// Notify tells libnbd what poll(2) reported for its socket, which moves
// the state machine: requests are sent and replies received.
func (h *Handle) Notify(revents int16) error {
	if revents == 0 {
		return nil
	}
	c, err := h.lock()
	if err != nil {
		return err
	}
	defer h.unlock()
	var e C.sd_error
	if C.sd_aio_notify(c, C.short(revents), &e) == -1 {
		return newError("nbd_aio_notify", &e)
	}
	return nil
}

// Poll waits up to timeout (negative: forever) for this handle's socket
// and moves the state machine (nbd_poll). It reports whether anything
// happened before the timeout.
func (h *Handle) Poll(timeout time.Duration) (bool, error) {
	c, err := h.lock()
	if err != nil {
		return false, err
	}
	defer h.unlock()
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	var e C.sd_error
	r := C.sd_poll(c, C.int(ms), &e)
	if r == -1 {
		return false, newError("nbd_poll", &e)
	}
	return r == 1, nil
}
