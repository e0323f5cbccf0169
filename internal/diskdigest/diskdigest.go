// Package diskdigest computes the disk digest of manifest version 2
// (docs/repository.md, "Disk digest"): the disk is cut into blocks of
// BlockSize bytes (the last one shorter when the size is not a multiple),
// each block is hashed with SHA-256, and the digest is the SHA-256 of the
// concatenated 32-byte block digests, in block order, as lower-case hex.
//
// Unlike one SHA-256 over the whole disk, blocks hash in parallel and in
// any order, and a zero block costs nothing: its digest is known (ZeroSum).
// The copier and the repository's readers hash the blocks; a Folder
// combines their digests in order.
//
// In an encrypted repository every SHA-256 of this package (the blocks',
// the chunks' and the fold) is an HMAC-SHA-256 under the repository's
// digest key instead (Keyed), so that a digest does not confirm guessed
// content: a *Hash says which, and nil is plain SHA-256.
package diskdigest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
)

// BlockSize is the size of a block: the copier's default request size,
// so that a data chunk of a backup usually is one block and its SHA-256
// serves as the chunk's and the block's.
const BlockSize = 256 << 10

// Sum is a SHA-256.
type Sum = [sha256.Size]byte

// Hash is the digest function of the blocks, chunks and fold: SHA-256
// (Plain, and a nil *Hash), or HMAC-SHA-256 under a key (Keyed).
type Hash struct {
	key     []byte
	zero    Sum    // digest of a whole zero block
	zeroRun []byte // the digests of 1024 zero blocks, written at once
}

// Plain is SHA-256.
var Plain = newHash(nil)

// Keyed is HMAC-SHA-256 under key (an encrypted repository's digest key).
func Keyed(key []byte) *Hash { return newHash(bytes.Clone(key)) }

func newHash(key []byte) *Hash {
	h := &Hash{key: key}
	h.zero = h.sum(make([]byte, BlockSize))
	h.zeroRun = bytes.Repeat(h.zero[:], 1024)
	return h
}

func (h *Hash) orPlain() *Hash {
	if h == nil {
		return Plain
	}
	return h
}

// IsKeyed says whether h is an HMAC.
func (h *Hash) IsKeyed() bool { return h != nil && h.key != nil }

// New returns a new hash.Hash of h's function.
func (h *Hash) New() hash.Hash {
	if h = h.orPlain(); h.key != nil {
		return hmac.New(sha256.New, h.key)
	}
	return sha256.New()
}

// Sum is the digest of p.
func (h *Hash) Sum(p []byte) Sum { return h.orPlain().sum(p) }

func (h *Hash) sum(p []byte) Sum {
	if h.key == nil {
		return sha256.Sum256(p)
	}
	m := hmac.New(sha256.New, h.key)
	m.Write(p)
	var s Sum
	m.Sum(s[:0])
	return s
}

// ZeroSum is the digest of n zero bytes, n at most BlockSize; the
// digest of a whole zero block is computed once.
func (h *Hash) ZeroSum(n uint64) Sum {
	h = h.orPlain()
	if n == BlockSize {
		return h.zero
	}
	if n > BlockSize {
		panic(fmt.Sprintf("diskdigest: ZeroSum(%d) is more than a block", n))
	}
	return h.Sum(make([]byte, n))
}

// ZeroSum is Plain.ZeroSum.
func ZeroSum(n uint64) Sum { return Plain.ZeroSum(n) }

// Blocks is the number of blocks of a disk of size bytes.
func Blocks(size uint64) uint64 { return (size + BlockSize - 1) / BlockSize }

// BlockLen is the length of block i of a disk of size bytes.
func BlockLen(size, i uint64) uint64 { return min(BlockSize, size-i*BlockSize) }

// Folder combines the digests of a disk's blocks, given in block order,
// into the disk digest.
type Folder struct {
	size uint64
	next uint64 // index of the next block
	fn   *Hash
	h    hash.Hash
}

// NewFolder returns a plain Folder for a disk of size bytes.
func NewFolder(size uint64) *Folder { return Plain.NewFolder(size) }

// NewFolder returns a Folder of h for a disk of size bytes.
func (h *Hash) NewFolder(size uint64) *Folder {
	h = h.orPlain()
	return &Folder{size: size, fn: h, h: h.New()}
}

// Next is the index of the block Add expects.
func (f *Folder) Next() uint64 { return f.next }

// Add adds the digest of the next block.
func (f *Folder) Add(s Sum) {
	f.h.Write(s[:])
	f.next++
}

// AddZero adds n zero blocks (the last block of the disk may be short).
func (f *Folder) AddZero(n uint64) {
	total := Blocks(f.size)
	if f.size%BlockSize != 0 && f.next+n == total { // ends with the short block
		defer func() {
			s := f.fn.ZeroSum(f.size % BlockSize)
			f.h.Write(s[:])
			f.next++
		}()
		n--
	}
	for n > 0 {
		k := min(n, uint64(len(f.fn.zeroRun)/len(f.fn.zero)))
		f.h.Write(f.fn.zeroRun[:k*uint64(len(f.fn.zero))])
		f.next += k
		n -= k
	}
}

// Hex returns the disk digest, or an error if not every block was added.
func (f *Folder) Hex() (string, error) {
	if total := Blocks(f.size); f.next != total {
		return "", fmt.Errorf("disk digest: %d of %d blocks hashed", f.next, total)
	}
	return hex.EncodeToString(f.h.Sum(nil)), nil
}

// Stream computes the disk digest of content given in order: bytes
// (Write), zeroes (Zero) and whole blocks hashed elsewhere (AddBlock).
type Stream struct {
	f   *Folder
	pos uint64 // bytes given
	blk hash.Hash
	in  uint64 // bytes of the current block written to blk
	// zeroRun counts zero bytes at the start of the current block not yet
	// written to blk (written only if the block turns out not all zero).
	zeroRun uint64
}

// NewStream returns a plain Stream for a disk of size bytes.
func NewStream(size uint64) *Stream { return Plain.NewStream(size) }

// NewStream returns a Stream of h for a disk of size bytes.
func (h *Hash) NewStream(size uint64) *Stream {
	return &Stream{f: h.NewFolder(size), blk: h.New()}
}

// Pos is the number of bytes given so far.
func (s *Stream) Pos() uint64 { return s.pos }

// AtBlockStart says whether the next byte starts a block.
func (s *Stream) AtBlockStart() bool { return s.pos%BlockSize == 0 }

// room is what is left of the current block.
func (s *Stream) room() uint64 {
	return BlockLen(s.f.size, s.pos/BlockSize) - s.pos%BlockSize
}

// Write adds p, which must not reach past the disk's size.
func (s *Stream) Write(p []byte) {
	for len(p) > 0 {
		k := min(uint64(len(p)), s.room())
		if s.zeroRun > 0 {
			hashZeroes(s.blk, s.zeroRun)
			s.in += s.zeroRun
			s.zeroRun = 0
		}
		s.blk.Write(p[:k])
		s.in += k
		s.advance(k)
		p = p[k:]
	}
}

// Zero adds n zero bytes.
func (s *Stream) Zero(n uint64) {
	for n > 0 {
		if s.AtBlockStart() && s.zeroRun == 0 && s.in == 0 && n >= BlockSize {
			whole := n / BlockSize
			s.f.AddZero(whole)
			s.pos += whole * BlockSize
			n -= whole * BlockSize
			continue
		}
		k := min(n, s.room())
		if s.in == 0 {
			s.zeroRun += k // a block that may be all zero: hash later, if at all
		} else {
			hashZeroes(s.blk, k)
			s.in += k
		}
		s.advance(k)
		n -= k
	}
}

// AddBlock adds the digest of the whole block that starts at Pos.
func (s *Stream) AddBlock(sum Sum) {
	if !s.AtBlockStart() {
		panic("diskdigest: AddBlock in the middle of a block")
	}
	n := s.room()
	s.f.Add(sum)
	s.pos += n
}

// advance moves pos by k bytes of the current block, ending the block
// when it is complete.
func (s *Stream) advance(k uint64) {
	s.pos += k
	if s.pos%BlockSize != 0 && s.pos != s.f.size {
		return
	}
	switch {
	case s.in == 0: // all zero
		s.f.AddZero(1)
	default:
		var sum Sum
		s.blk.Sum(sum[:0])
		s.f.Add(sum)
		s.blk.Reset()
	}
	s.in, s.zeroRun = 0, 0
}

// Hex returns the disk digest, or an error if the content given is not
// the disk's size.
func (s *Stream) Hex() (string, error) {
	if s.pos != s.f.size {
		return "", fmt.Errorf("disk digest: %d of %d bytes hashed", s.pos, s.f.size)
	}
	return s.f.Hex()
}

var zeroes [64 << 10]byte

func hashZeroes(h hash.Hash, n uint64) {
	for n > 0 {
		k := min(n, uint64(len(zeroes)))
		h.Write(zeroes[:k])
		n -= k
	}
}

// OfBytes is the plain disk digest of p, for tests and small images.
func OfBytes(p []byte) string { return Plain.OfBytes(p) }

// OfBytes is the disk digest of p under h.
func (h *Hash) OfBytes(p []byte) string {
	f := h.NewFolder(uint64(len(p)))
	for len(p) > 0 {
		k := min(len(p), BlockSize)
		f.Add(h.Sum(p[:k]))
		p = p[k:]
	}
	s, _ := f.Hex()
	return s
}
