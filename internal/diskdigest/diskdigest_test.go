package diskdigest

import (
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// referenceScript is the reference implementation printed in
// docs/repository.md ("Disk digest").
const referenceScript = `
import hashlib, sys
outer = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while block := f.read(262144):
        outer.update(hashlib.sha256(block).digest())
print(outer.hexdigest())
`

// content is a disk of size bytes with data and zero runs of random
// lengths (some whole blocks, some not).
func content(rng *rand.Rand, size int) []byte {
	p := make([]byte, size)
	for off := 0; off < size; {
		n := min(size-off, 1+rng.IntN(3*BlockSize))
		if rng.IntN(2) == 0 {
			for i := off; i < off+n; i++ {
				p[i] = byte(rng.Uint32())
			}
		}
		off += n
	}
	return p
}

// The Stream, fed in pieces of any size (zero pieces as Zero, some whole
// blocks as AddBlock), agrees with OfBytes and with the reference script.
func TestDigestMatchesReference(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for _, size := range []int{1, 4096, BlockSize, BlockSize + 512, 5*BlockSize - 1, 7 * BlockSize} {
		p := content(rng, size)
		file := filepath.Join(t.TempDir(), "disk.raw")
		if err := os.WriteFile(file, p, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("python3", "-c", referenceScript, file).Output()
		if err != nil {
			t.Fatal(err)
		}
		want := strings.TrimSpace(string(out))
		if got := OfBytes(p); got != want {
			t.Fatalf("size %d: OfBytes %s, reference %s", size, got, want)
		}
		for trial := 0; trial < 20; trial++ {
			s := NewStream(uint64(size))
			for pos := 0; pos < size; {
				n := min(size-pos, 1+rng.IntN(2*BlockSize))
				switch piece := p[pos : pos+n]; {
				case s.AtBlockStart() && n >= BlockSize && rng.IntN(2) == 0:
					n = min(BlockSize, n)
					s.AddBlock(sha256.Sum256(p[pos : pos+n]))
				case allZero(piece):
					s.Zero(uint64(n))
				default:
					s.Write(piece)
				}
				pos += n
			}
			got, err := s.Hex()
			if err != nil || got != want {
				t.Fatalf("size %d trial %d: stream %s, %v; reference %s", size, trial, got, err, want)
			}
		}
	}
}

// A stream or folder that did not get the whole disk has no digest.
func TestDigestIncomplete(t *testing.T) {
	s := NewStream(3 * BlockSize)
	s.Zero(2 * BlockSize)
	if d, err := s.Hex(); err == nil {
		t.Fatalf("digest %s of an incomplete stream", d)
	}
	f := NewFolder(BlockSize + 1)
	f.AddZero(1)
	if d, err := f.Hex(); err == nil {
		t.Fatalf("digest %s of an incomplete folder", d)
	}
	f.AddZero(1)
	if _, err := f.Hex(); err != nil {
		t.Fatal(err)
	}
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// AddZero of a long run, ending with a short block, is the digests of its
// zero blocks one by one.
func TestAddZeroRun(t *testing.T) {
	size := uint64(3000*BlockSize + 4096)
	one, run := NewFolder(size), NewFolder(size)
	for i := uint64(0); i < Blocks(size); i++ {
		one.Add(ZeroSum(BlockLen(size, i)))
	}
	run.AddZero(1)
	run.AddZero(Blocks(size) - 1)
	a, err1 := one.Hex()
	b, err2 := run.Hex()
	if err1 != nil || err2 != nil || a != b {
		t.Fatalf("one by one %s (%v), as runs %s (%v)", a, err1, b, err2)
	}
}
