// Package repotest builds small real repositories for tests: backups are
// written the way the backup command writes them (Begin, qcow2 images
// created with qemu-img, data and zeroes written through qemu-nbd,
// Commit), and the content every backup should restore to is remembered.
package repotest

import (
	"bytes"
	"context"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sendense/capture/internal/nbd"
	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
)

// ChunkMax is the largest chunk recorded (the copier's request size).
const ChunkMax = 256 << 10

// Require skips the test when qemu-img or qemu-nbd is missing.
func Require(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-nbd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian package qemu-utils)", tool)
		}
	}
}

// Write is one write of a backup into a disk's image.
type Write struct {
	Off, Len uint64
	Zero     bool // write zeroes (else random data)
}

// Disk is one disk of a backup.
type Disk struct {
	Key      int32
	Capacity uint64
	// Full makes this disk's image standalone even when an earlier backup
	// has the disk; Writes then describe the whole content (the rest is
	// zero).
	Full   bool
	Writes []Write
}

// Point is one backup built and what it restores to.
type Point struct {
	ID      string
	Content map[int32][]byte // disk key → content
}

// Builder makes backups of one VM.
type Builder struct {
	T      testing.TB
	Repo   *repo.Repo
	VM     repo.VMRef
	Points []Point

	rng     *rand.Rand
	content map[int32][]byte
}

// New returns a Builder for vm in r with a deterministic random source.
func New(t testing.TB, r *repo.Repo, vm repo.VMRef, seed uint64) *Builder {
	return &Builder{T: t, Repo: r, VM: vm, rng: rand.New(rand.NewPCG(seed, 1)), content: map[int32][]byte{}}
}

// Backup writes one backup of the disks and returns its manifest. The
// images are created and written with the repository's tools, so the
// builder works on a remote repository too.
func (b *Builder) Backup(disks ...Disk) *repo.Manifest {
	t := b.T
	t.Helper()
	ctx := context.Background()
	p, err := b.Repo.Begin(b.VM)
	if err != nil {
		t.Fatal(err)
	}
	parent := p.Parent()
	m := &repo.Manifest{
		VM:       b.VM,
		Snapshot: repo.SnapshotRef{Moref: "snapshot-" + p.ID, Name: "sendense-" + p.ID},
		Started:  time.Now().UTC(),
	}
	next := map[int32][]byte{}
	for _, spec := range disks {
		d := repo.DiskImage{
			Key: spec.Key, UUID: "6000C29" + p.ID, Label: "Hard disk", File: "[ds] vm/vm.vmdk",
			Capacity: spec.Capacity, ChangeID: "52 aa/" + p.ID, Image: p.RelImage(spec.Key),
		}
		var old []byte
		if pd := parentDisk(parent, spec.Key); pd != nil && !spec.Full && pd.Capacity == spec.Capacity {
			d.Level, d.Backing, d.BaseChangeID = repo.LevelIncremental, pd.Image, pd.ChangeID
			old = b.content[spec.Key]
		} else {
			d.Level, d.Reason = repo.LevelFull, "first backup of this disk"
		}
		content := make([]byte, spec.Capacity)
		copy(content, old)
		if d.Backing != "" {
			if err := p.CheckBase(ctx, spec.Key); err != nil { // pins the chain (Backing)
				p.Abort()
				t.Fatal(err)
			}
		}
		if err := b.Repo.Qemu().CreateImage(ctx, p.ImagePath(spec.Key), spec.Capacity, d.Backing); err != nil {
			p.Abort()
			t.Fatal(err)
		}
		d.Chunks, d.BytesCopied, d.BytesZeroed = b.write(p.ImagePath(spec.Key), p.Backing(spec.Key), spec.Writes, content)
		if d.Level == repo.LevelFull {
			d.BlocksSHA256 = b.Repo.DigestHash().OfBytes(content)
		}
		next[spec.Key] = content
		m.Disks = append(m.Disks, d)
	}
	m.Finished = time.Now().UTC()
	if err := p.Commit(m); err != nil {
		p.Abort()
		t.Fatal(err)
	}
	b.content = next
	b.Points = append(b.Points, Point{ID: p.ID, Content: next})
	return m
}

func parentDisk(m *repo.Manifest, key int32) *repo.DiskImage {
	if m == nil {
		return nil
	}
	return m.Disk(key)
}

// write applies the writes to the image through qemu-nbd and to content,
// and returns the chunks as the copier records them.
func (b *Builder) write(image string, backing []string, writes []Write, content []byte) (chunks []repo.Chunk, copied, zeroed uint64) {
	t := b.T
	t.Helper()
	writes = slices.Clone(writes)
	slices.SortFunc(writes, func(x, y Write) int { return int(int64(x.Off) - int64(y.Off)) })
	srv, err := b.Repo.Qemu().ServeNBD(context.Background(), image, qemu.ServeOptions{Backing: backing})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h, err := nbd.Dial(srv.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, w := range writes {
		if w.Zero {
			if err := h.Zero(w.Len, w.Off, 0); err != nil {
				t.Fatal(err)
			}
			clear(content[w.Off : w.Off+w.Len])
			chunks = append(chunks, repo.Chunk{Offset: w.Off, Length: w.Len, Kind: repo.KindZero})
			zeroed += w.Len
			continue
		}
		for off := w.Off; off < w.Off+w.Len; {
			n := min(w.Off+w.Len-off, ChunkMax)
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(b.rng.Uint32()) | 1 // never all zero
			}
			if err := h.Pwrite(data, off, 0); err != nil {
				t.Fatal(err)
			}
			copy(content[off:], data)
			sum := b.Repo.DigestHash().Sum(data) // the repository's chunk digest
			chunks = append(chunks, repo.Chunk{Offset: off, Length: n, Kind: repo.KindData, SHA256: hex.EncodeToString(sum[:])})
			copied += n
			off += n
		}
	}
	if err := h.Flush(0); err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	return chunks, copied, zeroed
}

// CheckRestore restores backup id of the builder's VM as raw into a new
// directory and compares every disk with what it should hold.
func (b *Builder) CheckRestore(id string) {
	t := b.T
	t.Helper()
	var want map[int32][]byte
	for _, p := range b.Points {
		if p.ID == id {
			want = p.Content
		}
	}
	if want == nil {
		t.Fatalf("backup %s was not built by this builder", id)
	}
	dir := t.TempDir()
	out, err := b.Repo.Restore(context.Background(), repo.RestoreOptions{VM: b.VM.Moref, Backup: id, To: dir})
	if err != nil {
		t.Fatalf("restore %s: %v", id, err)
	}
	if len(out) != len(want) {
		t.Fatalf("restore %s: %d disks, want %d", id, len(out), len(want))
	}
	for _, rd := range out {
		got, err := os.ReadFile(rd.Path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[rd.Disk]) {
			t.Fatalf("restore %s disk %d: %s differs from what was backed up (first difference at %d)", id, rd.Disk, filepath.Base(rd.Path), firstDiff(got, want[rd.Disk]))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Content returns what disk key of backup id should hold.
func (b *Builder) Content(id string, key int32) []byte {
	for _, p := range b.Points {
		if p.ID == id {
			return p.Content[key]
		}
	}
	return nil
}

// Clone returns a Builder that continues b's backups in r, a copy of b's
// repository.
func (b *Builder) Clone(t testing.TB, r *repo.Repo) *Builder {
	c := *b
	c.T, c.Repo = t, r
	c.Points = slices.Clone(b.Points)
	c.rng = rand.New(rand.NewPCG(uint64(len(b.Points)), 2))
	return &c
}

// CopyDir copies directory src to dst (a new directory) keeping sparse
// files sparse.
func CopyDir(t testing.TB, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v: %s", src, dst, err, out)
	}
}
