package copier

import (
	"io"

	"github.com/sendense/capture/internal/extent"
)

// Source is one connection to the image being copied.
type Source interface {
	Size() uint64
	// ReadAt fills p from offset off.
	ReadAt(p []byte, off uint64) error
	Close() error
}

// Destination is one connection to the image being written.
type Destination interface {
	Size() uint64
	// WriteAt writes p at offset off.
	WriteAt(p []byte, off uint64) error
	// Flush commits completed writes to stable storage.
	Flush() error
	Close() error
}

// Optional abilities, detected with type assertions (nbdcopy's rw_ops).

// Extenter reports block status (NBD base:allocation).
type Extenter interface {
	// CanExtents reports whether Extents works on this connection.
	CanExtents() bool
	// Extents describes a prefix of [off, off+length): extents in order,
	// the first one containing off. It may describe less than asked, and
	// its last extent may reach past off+length.
	Extents(off, length uint64) (extent.Map, error)
}

// Zeroer writes zeroes efficiently.
type Zeroer interface {
	// CanZero reports whether Zero works on this connection.
	CanZero() bool
	// Zero makes [off, off+length) read as zeroes. It may deallocate the
	// range but must never expose older data underneath (in a qcow2 overlay
	// the clusters must read as zero, not as the backing file).
	Zero(off, length uint64) error
}

// Concurrent is implemented by destinations whose WriteAt and Zero may
// run on several goroutines at once (for requests that do not overlap)
// and spend CPU (an image writer that encrypts): the engine runs each
// request on a goroutine of its own rather than on its event loop, which
// meanwhile reads and hashes.
type Concurrent interface {
	Concurrent() bool
}

// ReadOnlier reports a destination that refuses writes.
type ReadOnlier interface {
	ReadOnly() bool
}

// MultiConn is implemented by backends that can open further connections
// to the same image.
type MultiConn interface {
	// CanMultiConn reports whether several connections see one consistent
	// image (NBD multi-conn).
	CanMultiConn() bool
	// Reopen opens another connection of the same concrete type.
	Reopen() (io.Closer, error)
}

// Buffer is the memory of one request. Backends doing asynchronous I/O
// allocate it where their I/O layer can keep using it (C memory for
// libnbd).
type Buffer interface {
	Bytes() []byte
	Free()
}

// BufferAllocator allocates request buffers for a backend.
type BufferAllocator interface {
	NewBuffer(size int) (Buffer, error)
}

// Completion reports a finished asynchronous request.
type Completion struct {
	Tag uint64
	Err error
}

// Async is implemented by connections that keep many requests in flight
// (nbdcopy's asynch_* ops and polling fd). The engine drives one Async
// connection from one goroutine: it starts requests, waits on PollFD with
// poll(2), passes the result to Notify and collects Completed requests. A
// request's buffer stays untouched by the engine until it completes.
// Backends without Async are driven synchronously through an adapter.
type Async interface {
	StartRead(buf Buffer, n int, off uint64, tag uint64) error
	StartWrite(buf Buffer, n int, off uint64, tag uint64) error
	StartZero(off, length uint64, tag uint64) error
	// Completed appends the requests that have finished to dst.
	Completed(dst []Completion) []Completion
	// PollFD returns the descriptor and poll(2) events to wait for, or
	// fd -1 when there is nothing to wait for.
	PollFD() (fd int, events int16)
	// Notify passes poll(2)'s revents for PollFD's descriptor.
	Notify(revents int16) error
}
