package copier

import (
	"errors"
	"fmt"
	"io"

	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/nbd"
)

// NBD is one connection to an NBD server, usable as Source and
// Destination, with every optional ability: block status, write-zeroes,
// multi-conn and asynchronous requests in C buffers.
type NBD struct {
	h      *nbd.Handle
	reopen func() (*nbd.Handle, error)
	size   uint64

	readOnly, canFlush, canZero, canMulti, canExtents bool

	done []nbd.Completion
}

// OpenNBD connects to an NBD URI (nbd://, nbd+unix:///?socket=…).
func OpenNBD(uri string) (*NBD, error) {
	dial := func() (*nbd.Handle, error) { return nbd.Dial(uri) }
	h, err := dial()
	if err != nil {
		return nil, err
	}
	n, err := NewNBD(h, dial)
	if err != nil {
		h.Close()
		return nil, err
	}
	return n, nil
}

// NewNBD wraps a connected handle. reopen, if not nil, opens another
// connection to the same export (for multi-conn). The NBD owns h.
func NewNBD(h *nbd.Handle, reopen func() (*nbd.Handle, error)) (*NBD, error) {
	n := &NBD{h: h, reopen: reopen}
	// The engine never looks at the buffer of a failed read: spare libnbd
	// clearing every read buffer first.
	if err := h.SetPreadInitialize(false); err != nil {
		return nil, err
	}
	var err error
	if n.size, err = h.Size(); err != nil {
		return nil, err
	}

	flags := []struct {
		dst *bool
		get func() (bool, error)
	}{
		{&n.readOnly, h.IsReadOnly},
		{&n.canFlush, h.CanFlush},
		{&n.canZero, h.CanZero},
		{&n.canMulti, h.CanMultiConn},
		{&n.canExtents, h.CanBlockStatus},
	}
	for _, f := range flags {
		if *f.dst, err = f.get(); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// Handle returns the underlying libnbd handle.
func (n *NBD) Handle() *nbd.Handle { return n.h }

func (n *NBD) Size() uint64       { return n.size }
func (n *NBD) ReadOnly() bool     { return n.readOnly }
func (n *NBD) CanZero() bool      { return n.canZero && !n.readOnly }
func (n *NBD) CanExtents() bool   { return n.canExtents }
func (n *NBD) CanMultiConn() bool { return n.canMulti && n.reopen != nil }

func (n *NBD) ReadAt(p []byte, off uint64) error  { return n.h.Pread(p, off, 0) }
func (n *NBD) WriteAt(p []byte, off uint64) error { return n.h.Pwrite(p, off, 0) }

// Zero writes zeroes without NO_HOLE: the server may deallocate, and a
// qcow2 overlay records zero clusters (never exposing its backing file).
func (n *NBD) Zero(off, length uint64) error { return n.h.Zero(length, off, 0) }

// Flush flushes when the server supports it (otherwise it has nothing to
// flush).
func (n *NBD) Flush() error {
	if !n.canFlush {
		return nil
	}
	return n.h.Flush(0)
}

// maxBlockStatus keeps block status queries below 4 GiB, which not every
// server accepts.
const maxBlockStatus = 1 << 31

func (n *NBD) Extents(off, length uint64) (extent.Map, error) {
	l, err := n.h.BlockStatus(min(length, maxBlockStatus), off, 0)
	if err != nil {
		return nil, err
	}
	return extent.Map(l), nil
}

func (n *NBD) Reopen() (io.Closer, error) {
	if n.reopen == nil {
		return nil, errors.New("nbd: this connection cannot be reopened")
	}
	h, err := n.reopen()
	if err != nil {
		return nil, err
	}
	c, err := NewNBD(h, n.reopen)
	if err != nil {
		h.Close()
		return nil, err
	}
	if c.size != n.size {
		c.Close()
		return nil, fmt.Errorf("nbd: a new connection reports size %d, not %d", c.size, n.size)
	}
	return c, nil
}

func (n *NBD) Close() error { return n.h.Close() }

// NewBuffer allocates a request buffer in C memory.
func (n *NBD) NewBuffer(size int) (Buffer, error) { return nbd.NewBuffer(size) }

func cbuf(b Buffer) (*nbd.Buffer, error) {
	c, ok := b.(*nbd.Buffer)
	if !ok {
		return nil, errors.New("nbd: the request buffer is not in C memory")
	}
	return c, nil
}

func (n *NBD) StartRead(buf Buffer, count int, off uint64, tag uint64) error {
	b, err := cbuf(buf)
	if err != nil {
		return err
	}
	return n.h.AioPread(b, count, off, tag)
}

func (n *NBD) StartWrite(buf Buffer, count int, off uint64, tag uint64) error {
	b, err := cbuf(buf)
	if err != nil {
		return err
	}
	return n.h.AioPwrite(b, count, off, 0, tag)
}

func (n *NBD) StartZero(off, length uint64, tag uint64) error {
	return n.h.AioZero(length, off, 0, tag)
}

func (n *NBD) Completed(dst []Completion) []Completion {
	n.done = n.h.Completions(n.done[:0])
	for _, c := range n.done {
		dst = append(dst, Completion{Tag: c.Tag, Err: c.Err})
	}
	return dst
}

func (n *NBD) PollFD() (int, int16)       { return n.h.PollEvents() }
func (n *NBD) Notify(revents int16) error { return n.h.Notify(revents) }
