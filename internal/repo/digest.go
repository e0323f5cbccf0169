package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"

	"github.com/sendense/capture/internal/diskdigest"
	"github.com/sendense/capture/internal/qemu"
)

// A full image's record carries one whole-disk digest (docs/repository.md,
// "Disk digest"): blocks_sha256, the disk digest of package diskdigest
// (manifest version 2; what backups write), or sha256, the SHA-256 of the
// whole disk (version 1, and disks of version 1 manifests a prune
// rewrote). Verify, prune and restore compute the one recorded.

// checkDigests validates the disk's whole-disk digests in a manifest of
// the given version.
func (d *DiskImage) checkDigests(version int) error {
	switch {
	case d.BlocksSHA256 != "" && version < 2:
		return fmt.Errorf("blocks_sha256 needs manifest version 2, not %d", version)
	case d.BlocksSHA256 != "" && d.SHA256 != "":
		return errors.New("two whole-disk digests (sha256 and blocks_sha256): a disk records one")
	case d.BlocksSHA256 != "" && !validSHA256(d.BlocksSHA256):
		return fmt.Errorf("blocks_sha256 %q is not a SHA-256", d.BlocksSHA256)
	case d.SHA256 != "" && !validSHA256(d.SHA256):
		return fmt.Errorf("sha256 %q is not a SHA-256", d.SHA256)
	case d.Level == LevelFull && d.SHA256 == "" && d.BlocksSHA256 == "":
		return errors.New("a full image needs its whole-disk digest (blocks_sha256, or sha256: the SHA-256 of the whole disk)")
	}
	return nil
}

// wholeDigest returns a hasher for the whole-disk digest d records, and
// the digest recorded; nil and "" when it records none.
func (d *DiskImage) wholeDigest(fn *diskdigest.Hash) (diskHasher, string) {
	switch {
	case d.BlocksSHA256 != "":
		return newBlocksHasher(d.Capacity, fn), d.BlocksSHA256
	case d.SHA256 != "":
		return &sha256Hasher{h: sha256.New()}, d.SHA256
	}
	return nil, ""
}

// diskHasher computes a whole-disk digest from the segments of the disk,
// given in order (data nil: zeroes; sum: the segment's SHA-256 when the
// reader computed it).
type diskHasher interface {
	feed(seg segment, data []byte, sum string)
	// sum returns the digest ("" if the segments did not cover the disk).
	sum() string
	// blocks says whether the segments read must be cut at the digest's
	// block boundaries (digestSegments does).
	blocks() bool
}

// sha256Hasher is the SHA-256 of the whole disk, hashed in order.
type sha256Hasher struct{ h hash.Hash }

func (s *sha256Hasher) feed(seg segment, data []byte, _ string) {
	if data != nil {
		s.h.Write(data)
	} else {
		hashZeroes(s.h, seg.n)
	}
}

func (s *sha256Hasher) sum() string  { return hex.EncodeToString(s.h.Sum(nil)) }
func (s *sha256Hasher) blocks() bool { return false }

// blocksHasher is the disk digest: the segments that are whole blocks
// were hashed by the readers in parallel (segment.block), zero blocks
// cost nothing, and only the rest is hashed here.
type blocksHasher struct{ s *diskdigest.Stream }

func newBlocksHasher(capacity uint64, fn *diskdigest.Hash) *blocksHasher {
	return &blocksHasher{fn.NewStream(capacity)}
}

func (b *blocksHasher) feed(seg segment, data []byte, sum string) {
	var raw diskdigest.Sum
	switch {
	case data == nil:
		b.s.Zero(seg.n)
	case seg.block && hex.DecodedLen(len(sum)) == len(raw) && b.s.AtBlockStart():
		hex.Decode(raw[:], []byte(sum))
		b.s.AddBlock(raw)
	default:
		b.s.Write(data)
	}
}

func (b *blocksHasher) sum() string {
	s, err := b.s.Hex()
	if err != nil {
		return ""
	}
	return s
}

func (b *blocksHasher) blocks() bool { return true }

// digestSegments covers [0, capacity) for a whole-disk digest computed by
// h (nil: none): the data clusters of the map are read, cut at chunk
// boundaries and, for the disk digest, at block boundaries, a read
// segment that is a whole block being hashed by the reader.
func digestSegments(entries []qemu.MapEntry, capacity uint64, chunks []Chunk, h diskHasher) []segment {
	segs := wholeSegments(entries, capacity, chunkCuts(chunks))
	if h != nil && h.blocks() {
		segs = splitBlocks(segs, capacity)
	}
	return annotate(segs, chunks)
}

// splitBlocks cuts the read segments at block boundaries and marks those
// that are a whole block.
func splitBlocks(segs []segment, capacity uint64) []segment {
	out := make([]segment, 0, len(segs))
	for _, sg := range segs {
		if !sg.read {
			out = append(out, sg)
			continue
		}
		for off, end := sg.off, sg.end(); off < end; {
			i := off / diskdigest.BlockSize
			next := min(end, (i+1)*diskdigest.BlockSize)
			part := sg
			part.off, part.n = off, next-off
			part.block = off%diskdigest.BlockSize == 0 && part.n == diskdigest.BlockLen(capacity, i)
			out = append(out, part)
			off = next
		}
	}
	return out
}
