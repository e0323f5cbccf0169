package copier

import (
	"sync/atomic"

	"github.com/sendense/capture/internal/extent"
)

// Stats counts what a copy did. BytesWritten + BytesZeroed + BytesSkipped
// is the size of the source.
type Stats struct {
	BytesRead    uint64  `json:"bytes_read"`    // data read from the source
	BytesWritten uint64  `json:"bytes_written"` // data written to the destination
	BytesZeroed  uint64  `json:"bytes_zeroed"`  // zeroes written (zero extents and all-zero data)
	BytesSkipped uint64  `json:"bytes_skipped"` // left alone: hole-only (incremental), zeroes on a zero destination, Skip
	Seconds      float64 `json:"seconds"`
	MiBps        float64 `json:"mib_per_sec"` // BytesRead per second, in MiB
}

// Progress is passed to Options.Progress.
type Progress struct {
	Done  uint64 // bytes of the source dealt with so far
	Total uint64 // source size
	Stats
}

// ChunkKind says how a chunk was written.
type ChunkKind string

const (
	ChunkData ChunkKind = "data" // written with data
	ChunkZero ChunkKind = "zero" // written as zeroes
)

// Chunk is one request written to the destination (Options.HashChunks).
type Chunk struct {
	Offset uint64    `json:"offset"`
	Length uint64    `json:"length"`
	Kind   ChunkKind `json:"kind"`
	SHA256 string    `json:"sha256,omitempty"` // hex, data chunks only
}

// Result is what Copy returns, also when it fails.
type Result struct {
	Stats
	Connections int `json:"connections"`
	Requests    int `json:"requests"`
	RequestSize int `json:"request_size"`
	// SHA256 is the hex SHA-256 of the destination's first Size bytes
	// (Options.Checksum).
	SHA256 string `json:"sha256,omitempty"`
	// Digest is the disk digest of the destination's first Size bytes
	// (Options.Digest).
	Digest string `json:"digest,omitempty"`
	// Chunks are sorted by offset (Options.HashChunks).
	Chunks []Chunk `json:"chunks,omitempty"`
	// Completed lists the ranges the destination has acknowledged (and
	// Options.Skip). After a failed copy they are not known to be flushed:
	// pass them as Skip to resume only once the destination is flushed.
	Completed extent.List `json:"completed,omitempty"`
	// Timing says where the time went.
	Timing Timing `json:"timing"`
}

// Timing splits a copy's wall time into its phases, in seconds: Connect
// (opening connections), Transfer (until the last request completed),
// then Flush and HashWait (the hashing still running after the flush),
// and ReadBack (reading the destination back for its digest: incrementals
// and resumed copies). HashCPU is the time spent hashing on all
// goroutines, mostly overlapping Transfer.
type Timing struct {
	Connect  float64 `json:"connect"`
	Transfer float64 `json:"transfer"`
	Flush    float64 `json:"flush"`
	HashWait float64 `json:"hash_wait"`
	HashCPU  float64 `json:"hash_cpu"`
	ReadBack float64 `json:"read_back,omitempty"`
}

// Add adds o's figures to t (the attempts of a resumed copy).
func (t *Timing) Add(o Timing) {
	t.Connect += o.Connect
	t.Transfer += o.Transfer
	t.Flush += o.Flush
	t.HashWait += o.HashWait
	t.HashCPU += o.HashCPU
	t.ReadBack += o.ReadBack
}

// counters are the live statistics, updated by the workers.
type counters struct {
	read, written, zeroed, skipped atomic.Uint64
	hashNanos                      atomic.Int64 // time spent hashing
}

func (c *counters) snapshot(seconds float64) Stats {
	s := Stats{
		BytesRead:    c.read.Load(),
		BytesWritten: c.written.Load(),
		BytesZeroed:  c.zeroed.Load(),
		BytesSkipped: c.skipped.Load(),
		Seconds:      seconds,
	}
	if seconds > 0 {
		s.MiBps = float64(s.BytesRead) / (1 << 20) / seconds
	}
	return s
}

func (c *counters) done() uint64 {
	return c.written.Load() + c.zeroed.Load() + c.skipped.Load()
}
