package copier

import (
	"bytes"
	"errors"
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
