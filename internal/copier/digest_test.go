package copier

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/sendense/capture/internal/diskdigest"
	"github.com/sendense/capture/internal/extent"
)

const B = diskdigest.BlockSize

// The disk digest computed while copying equals the digest of the
// source's bytes, whatever the extents' alignment, the request size, the
// connections and the order requests finish in; data chunks are cut at
// block boundaries and each carries the SHA-256 of its bytes.
func TestCopyDigest(t *testing.T) {
	for _, hashers := range []bool{false, true} {
		t.Run(fmt.Sprintf("hashers=%v", hashers), func(t *testing.T) {
			withHashers(t, hashers)
			testCopyDigest(t)
		})
	}
}

// withHashers makes data hashed on hasher goroutines (or on the event
// loops) whatever the number of CPUs, for the test.
func withHashers(t *testing.T, on bool) {
	old := hasherCPUs
	hasherCPUs = 1 << 30
	if on {
		hasherCPUs = 1
	}
	t.Cleanup(func() { hasherCPUs = old })
}

func testCopyDigest(t *testing.T) {
	// Extents at unaligned offsets: data, hole-only, zero, all-zero data,
	// hole+zero across blocks, and a short last block.
	layouts := map[string][]int{
		"aligned":   {2 * B, 0, -1, 3 * B, 3, 0, B, 0, -1, 2 * B, 0, 0},
		"unaligned": {B + 4*K, 0, -1, 20 * K, 2, 0, 3*B + 512, 3, 0, 100 * K, 1, -1, 60 * K, 0, 0, B - 512, 0, -1, 7 * K, 3, 0},
		"short end": {3 * B, 3, 0, 64 * K, 0, -1, 5 * K, 0, -1},
		"zero only": {5*B + 3*K, 3, 0},
	}
	for name, parts := range layouts {
		for _, reqSize := range []int{16 * K, 256 * K, 1 << 20} {
			for _, destZero := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%d/%v", name, reqSize, destZero), func(t *testing.T) {
					src := image(21, parts...)
					want := diskdigest.OfBytes(src.data)
					dst := newMemDest(len(src.data), 0)
					if !destZero {
						for i := range dst.data {
							dst.data[i] = 0xee
						}
					}
					ms := &multiAsync{s: src, d: dst, opened: new(int)}
					res, err := Copy(context.Background(), ms.source(), ms.dest(new(int)),
						Options{Connections: 2, Requests: 3, RequestSize: reqSize, DestinationIsZero: destZero, Digest: true, HashChunks: true})
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(dst.data, src.data) || res.Digest != want {
						t.Fatalf("digest %s, want %s (content equal: %v)", res.Digest, want, bytes.Equal(dst.data, src.data))
					}
					if res.SHA256 != "" {
						t.Fatal("a SHA-256 of the image without Checksum")
					}
					for _, c := range res.Chunks {
						if c.Kind != ChunkData {
							continue
						}
						if end := c.Offset + c.Length; c.Offset/B != (end-1)/B {
							t.Fatalf("data chunk %d+%d crosses a block boundary", c.Offset, c.Length)
						}
						if c.SHA256 != sum(src.data[c.Offset:c.Offset+c.Length]) {
							t.Fatalf("data chunk %d+%d: wrong SHA-256", c.Offset, c.Length)
						}
					}
				})
			}
		}
	}
}

// An incremental, or a copy resuming after skipped ranges, reads the
// destination back for its digest.
func TestCopyDigestReadBack(t *testing.T) {
	src := image(22, B+5*K, 1, 9, 40*K, 0, -1, 2*B, 3, 0, B, 1, 9)
	dst := newMemDest(len(src.data), 9) // the unchanged parts are there
	res, err := Copy(context.Background(), src, dst, Options{Incremental: true, RequestSize: 64 * K, Digest: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := diskdigest.OfBytes(dst.data); res.Digest != want || res.Timing.ReadBack == 0 {
		t.Fatalf("digest %s, want %s; read back in %vs", res.Digest, want, res.Timing.ReadBack)
	}

	src = image(23, 3*B+K, 0, -1)
	dst = newMemDest(len(src.data), 0)
	copy(dst.data[:B], src.data)
	res, err = Copy(context.Background(), src, dst, Options{RequestSize: 64 * K, Skip: extent.List{ex(0, B)}, Digest: true, Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != diskdigest.OfBytes(src.data) || res.SHA256 != sum(src.data) {
		t.Fatalf("digest %s, sha256 %s after a resumed copy", res.Digest, res.SHA256)
	}
}
