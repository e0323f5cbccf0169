package copier

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/time/rate"

	"github.com/sendense/capture/internal/diskdigest"
	"github.com/sendense/capture/internal/extent"
)

// Defaults, chosen by measurement (bench/copy.sh, docs/copy.md).
const (
	// DefaultConnections caps the automatic number of connections: one per
	// two CPUs (the NBD servers usually run on the same machine and need
	// CPU too), from 1 to 4. On the 2-CPU build machine one connection
	// with 64 requests in flight beat 2 and 4 connections and nbdcopy's
	// 4 × 64.
	DefaultConnections = 4
	DefaultRequests    = 64
	DefaultRequestSize = 256 << 10
	// MaxRequestSize is the largest NBD read or write request (32 MiB).
	MaxRequestSize = 32 << 20
	// maxZeroRequest bounds one write-zeroes request: not every server
	// accepts 4 GiB or more.
	maxZeroRequest = 1 << 30
	// extentsWindow is how much block status one query asks for.
	extentsWindow = 1 << 30
)

// hasherCPUs: with at least this many CPUs (GOMAXPROCS) data is
// hashed on GOMAXPROCS hasher goroutines while it is written; with
// fewer, the event loop that read it hashes it after starting the
// write. Handing every request to a hasher and back costs goroutine
// and thread wake-ups: on the 2-CPU build machine a full backup of
// 4 GiB of data spent 1.5 s (20%) more of the agent's CPU that way,
// and the NBD servers on the same machine need the other CPU anyway.
var hasherCPUs = 4

// Options control a copy. The zero value copies with the defaults.
type Options struct {
	// Connections is the number of connections to each side (0: one per
	// two CPUs, at most DefaultConnections). More than one is used only
	// when both sides allow multi-conn.
	Connections int
	// Requests is the number of requests in flight per connection.
	Requests int
	// RequestSize is the largest read or write request in bytes.
	RequestSize int

	// Incremental skips hole-only extents (type 1): the destination's
	// backing image already has them.
	Incremental bool
	// DestinationIsZero writes nothing for zero extents and all-zero data
	// (full copies only: an incremental must write its zeroes).
	DestinationIsZero bool
	// AllowLargerDestination accepts a destination larger than the source;
	// the bytes past the source's end are left alone.
	AllowLargerDestination bool

	// Rate limits data read from the source, in bytes per second (0: none).
	Rate int64
	// Limiter, when set, is the token bucket (bytes) the copy shares with
	// other copies (every disk of a job, every job of the agent): it
	// replaces Rate. Reads larger than its burst are charged in full, a
	// burst at a time.
	Limiter *rate.Limiter

	// Checksum computes the SHA-256 of the destination's logical content
	// (the source's size): while copying for a full copy, else by reading
	// the destination back after the final flush.
	Checksum bool
	// Digest computes the disk digest of the destination's logical
	// content (package diskdigest, docs/repository.md): like Checksum,
	// while copying for a full copy, else by reading back; but in
	// parallel, and zero ranges cost nothing.
	Digest bool
	// HashChunks records every chunk written (Result.Chunks) with the
	// SHA-256 of data chunks, computed while copying. With Digest, data
	// chunks are cut at the digest's block boundaries.
	HashChunks bool
	// DigestHash is the function of the chunk digests and of the disk
	// digest: nil is SHA-256; an encrypted repository's is an HMAC
	// (diskdigest.Keyed).
	DigestHash *diskdigest.Hash

	// Skip lists ranges already copied (by an interrupted earlier run) to
	// leave alone. They count as skipped and as completed.
	Skip extent.List

	// Progress, if set, is called every ProgressInterval (default 200 ms)
	// from another goroutine, and once at the end.
	Progress         func(Progress)
	ProgressInterval time.Duration
}

// Check validates the options, naming the flag to fix.
func (o *Options) Check() error {
	switch {
	case o.Connections < 0:
		return fmt.Errorf("--connections must be at least 1, not %d", o.Connections)
	case o.Requests < 0:
		return fmt.Errorf("--requests must be at least 1, not %d", o.Requests)
	case o.RequestSize < 0 || o.RequestSize > MaxRequestSize:
		return fmt.Errorf("--request-size must be between 512 and 32M, not %d", o.RequestSize)
	case o.RequestSize != 0 && (o.RequestSize < 512 || o.RequestSize&(o.RequestSize-1) != 0):
		return fmt.Errorf("--request-size must be a power of two of at least 512, not %d", o.RequestSize)
	case o.Rate < 0:
		return fmt.Errorf("--rate must not be negative")
	case o.DestinationIsZero && o.Incremental:
		return errors.New("--destination-is-zero cannot be used with --incremental: an incremental must write zeroes over blocks that became zero")
	}
	return nil
}

// AutoConnections is the number of connections used when
// Options.Connections is 0.
func AutoConnections() int {
	return min(DefaultConnections, max(1, runtime.NumCPU()/2))
}

// withDefaults fills in zero fields.
func (o Options) withDefaults() Options {
	if o.Connections == 0 {
		o.Connections = AutoConnections()
	}
	if o.Requests == 0 {
		o.Requests = DefaultRequests
	}
	if o.RequestSize == 0 {
		o.RequestSize = DefaultRequestSize
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 200 * time.Millisecond
	}
	return o
}
