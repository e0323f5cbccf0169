package copier

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"

	"golang.org/x/sys/unix"
)

// syncConn drives a backend without Async: every request runs to the end
// when it is started and is reported by the next Completed.
type syncConn struct {
	src  Source
	dst  Destination
	zero Zeroer
	done []Completion
}

func newSyncConn(src Source, dst Destination) *syncConn {
	c := &syncConn{src: src, dst: dst}
	if z, ok := dst.(Zeroer); ok && z.CanZero() {
		c.zero = z
	}
	return c
}

var errNoSide = errors.New("copier: connection used in the wrong direction")

func (c *syncConn) StartRead(buf Buffer, n int, off uint64, tag uint64) error {
	if c.src == nil {
		return errNoSide
	}
	c.done = append(c.done, Completion{tag, c.src.ReadAt(buf.Bytes()[:n], off)})
	return nil
}

func (c *syncConn) StartWrite(buf Buffer, n int, off uint64, tag uint64) error {
	if c.dst == nil {
		return errNoSide
	}
	c.done = append(c.done, Completion{tag, c.dst.WriteAt(buf.Bytes()[:n], off)})
	return nil
}

func (c *syncConn) StartZero(off, length uint64, tag uint64) error {
	if c.zero == nil {
		return errors.New("copier: destination cannot write zeroes")
	}
	c.done = append(c.done, Completion{tag, c.zero.Zero(off, length)})
	return nil
}

func (c *syncConn) Completed(dst []Completion) []Completion {
	dst = append(dst, c.done...)
	c.done = c.done[:0]
	return dst
}

func (c *syncConn) PollFD() (int, int16)       { return -1, 0 }
func (c *syncConn) Notify(revents int16) error { return nil }

// goConn drives a Concurrent destination: each request runs on a
// goroutine of its own, which reports its completion through an eventfd
// that the event loop polls.
type goConn struct {
	dst      Destination
	zero     Zeroer
	inflight int // the event loop's count

	mu   sync.Mutex
	fd   int // the eventfd; -1 once closed
	done []Completion
}

func newGoConn(dst Destination) (*goConn, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	c := &goConn{dst: dst, fd: fd}
	if z, ok := dst.(Zeroer); ok && z.CanZero() {
		c.zero = z
	}
	return c, nil
}

func (c *goConn) StartRead(Buffer, int, uint64, uint64) error { return errNoSide }

func (c *goConn) StartWrite(buf Buffer, n int, off uint64, tag uint64) error {
	p := buf.Bytes()[:n]
	c.inflight++
	go c.finish(tag, func() error { return c.dst.WriteAt(p, off) })
	return nil
}

func (c *goConn) StartZero(off, length uint64, tag uint64) error {
	if c.zero == nil {
		return errors.New("copier: destination cannot write zeroes")
	}
	c.inflight++
	go c.finish(tag, func() error { return c.zero.Zero(off, length) })
	return nil
}

// finish runs a request and reports it.
func (c *goConn) finish(tag uint64, req func() error) {
	err := req()
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = append(c.done, Completion{tag, err})
	if c.fd >= 0 {
		unix.Write(c.fd, one[:]) // an eventfd: never blocks
	}
}

func (c *goConn) Completed(dst []Completion) []Completion {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight -= len(c.done)
	dst = append(dst, c.done...)
	c.done = c.done[:0]
	return dst
}

func (c *goConn) PollFD() (int, int16) {
	if c.inflight == 0 {
		return -1, 0
	}
	return c.fd, unix.POLLIN
}

func (c *goConn) Notify(revents int16) error {
	var b [8]byte
	unix.Read(c.fd, b[:])
	return nil
}

// close releases the eventfd once the event loop is done with the
// connection; requests still running (a worker that did not drain) then
// only record their completion.
func (c *goConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// goBuffer is a Buffer in Go memory, for backends without their own.
type goBuffer []byte

func (b goBuffer) Bytes() []byte { return b }
func (b goBuffer) Free()         {}

// zeroChecker is implemented by buffers with a faster zero test.
type zeroChecker interface {
	IsZero(n int) bool
}

// isZero reports whether the first n bytes of buf are zero.
func isZero(buf Buffer, n int) bool {
	if z, ok := buf.(zeroChecker); ok {
		return z.IsZero(n)
	}
	p := buf.Bytes()[:n]
	for len(p) > 0 {
		k := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:k], zeroBlock[:k]) {
			return false
		}
		p = p[k:]
	}
	return true
}
