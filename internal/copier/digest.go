package copier

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/sendense/capture/internal/diskdigest"
)

const blockSize = diskdigest.BlockSize

// blockDigest computes the disk digest (Options.Digest, package
// diskdigest) while copying. The hashers give the SHA-256 of whole blocks
// in any order: a request of the default size is one block, hashed once
// for its chunk and its block. The parts of blocks a request does not
// cover whole (at extent boundaries) are copied into a block buffer until
// the block is complete, then hashed; zero ranges cost nothing. Digests
// are folded in block order as soon as they are contiguous, so what waits
// is 32 bytes per block, one entry per zero run, and the partial blocks
// of the requests in flight. Request buffers are never held.
type blockDigest struct {
	mu      sync.Mutex
	size    uint64
	fn      *diskdigest.Hash
	fold    *diskdigest.Folder
	ready   map[uint64]readyBlocks // by block index: not folded yet
	partial map[uint64]*partialBlock
	aborted bool
	nanos   *atomic.Int64 // time spent hashing is added here
}

// readyBlocks is the digest of one block, or a run of zero blocks.
type readyBlocks struct {
	sum   diskdigest.Sum
	zeros uint64 // > 0: this many zero blocks
}

// partialBlock is a block whose content arrives in parts.
type partialBlock struct {
	buf  *[]byte // BlockSize bytes, zero where nothing arrived
	have uint64  // bytes arrived
	data bool    // some of them are data (else the block is zero)
}

var blockPool = sync.Pool{New: func() any { b := make([]byte, blockSize); return &b }}

func newBlockDigest(size uint64, fn *diskdigest.Hash, nanos *atomic.Int64) *blockDigest {
	return &blockDigest{
		size:    size,
		fn:      fn,
		fold:    fn.NewFolder(size),
		ready:   map[uint64]readyBlocks{},
		partial: map[uint64]*partialBlock{},
		nanos:   nanos,
	}
}

// blockLen is the length of block i.
func (d *blockDigest) blockLen(i uint64) uint64 { return diskdigest.BlockLen(d.size, i) }

// isBlock says whether [off, off+n) is exactly one block.
func (d *blockDigest) isBlock(off, n uint64) bool {
	return off%blockSize == 0 && n == d.blockLen(off/blockSize)
}

// forPieces calls fn for the parts of [off, off+n) cut at block
// boundaries.
func forPieces(off, n uint64, fn func(off, n uint64)) {
	for end := off + n; off < end; {
		k := min(end, (off/blockSize+1)*blockSize) - off
		fn(off, k)
		off += k
	}
}

// block records the digest of block i.
func (d *blockDigest) block(i uint64, sum diskdigest.Sum) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aborted {
		return
	}
	d.ready[i] = readyBlocks{sum: sum}
	d.foldLocked()
}

// zero records that [off, off+n) is zero.
func (d *blockDigest) zero(off, n uint64) {
	if n == 0 {
		return
	}
	var done []uint64
	d.mu.Lock()
	if d.aborted {
		d.mu.Unlock()
		return
	}
	for end := off + n; off < end; {
		i := off / blockSize
		if off%blockSize == 0 && end-off >= d.blockLen(i) {
			// A run of whole zero blocks, maybe up to the short last one.
			run := (end - off) / blockSize
			if rest := (end - off) % blockSize; rest > 0 && end == d.size && d.size%blockSize == rest {
				run++
			}
			d.ready[i] = readyBlocks{zeros: run}
			off = min(end, off+run*blockSize)
			continue
		}
		k := min(end, (i+1)*blockSize) - off
		if d.coverLocked(off, k, nil) {
			done = append(done, i)
		}
		off += k
	}
	d.foldLocked()
	d.mu.Unlock()
	for _, i := range done {
		d.finishPartial(i)
	}
}

// part records p, the content at off, a part of one block (not a whole
// block).
func (d *blockDigest) part(off uint64, p []byte) {
	d.mu.Lock()
	if d.aborted {
		d.mu.Unlock()
		return
	}
	complete := d.coverLocked(off, uint64(len(p)), p)
	d.mu.Unlock()
	if complete {
		d.finishPartial(off / blockSize)
	}
}

// coverLocked adds [off, off+n) (data p, or zeroes when p is nil) to its
// partial block and reports whether the block is complete.
func (d *blockDigest) coverLocked(off, n uint64, p []byte) bool {
	i := off / blockSize
	pb := d.partial[i]
	if pb == nil {
		buf := blockPool.Get().(*[]byte)
		clear(*buf)
		pb = &partialBlock{buf: buf}
		d.partial[i] = pb
	}
	if p != nil {
		copy((*pb.buf)[off%blockSize:], p)
		pb.data = true
	}
	pb.have += n
	return pb.have >= d.blockLen(i)
}

// finishPartial hashes the complete partial block i.
func (d *blockDigest) finishPartial(i uint64) {
	d.mu.Lock()
	pb := d.partial[i]
	delete(d.partial, i)
	d.mu.Unlock()
	if pb == nil { // aborted meanwhile
		return
	}
	n := d.blockLen(i)
	var sum diskdigest.Sum
	if pb.data {
		t := time.Now()
		sum = d.fn.Sum((*pb.buf)[:n])
		d.nanos.Add(int64(time.Since(t)))
	} else {
		sum = d.fn.ZeroSum(n)
	}
	blockPool.Put(pb.buf)
	d.block(i, sum)
}

// foldLocked folds the digests that continue the folded ones.
func (d *blockDigest) foldLocked() {
	for {
		r, ok := d.ready[d.fold.Next()]
		if !ok {
			return
		}
		delete(d.ready, d.fold.Next())
		if r.zeros > 0 {
			d.fold.AddZero(r.zeros)
		} else {
			d.fold.Add(r.sum)
		}
	}
}

// finish returns the disk digest, or an error if part of the disk was
// never hashed (a bug).
func (d *blockDigest) finish() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fold.Hex()
}

// abort drops what is held: the copy failed.
func (d *blockDigest) abort() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aborted {
		return
	}
	d.aborted = true
	for _, pb := range d.partial {
		blockPool.Put(pb.buf)
	}
	d.partial, d.ready = nil, nil
}
