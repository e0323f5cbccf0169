package repotest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
)

// TestCopierBackups writes a full and an incremental with the copy engine,
// as the backup command does, and checks that they verify and restore:
// the contract between copier.Result and the manifest.
func TestCopierBackups(t *testing.T) {
	repotest.Require(t)
	ctx := context.Background()
	r, err := repo.Init(filepath.Join(t.TempDir(), "r"))
	if err != nil {
		t.Fatal(err)
	}
	vm := repo.VMRef{Moref: "vm-9", Name: "db"}
	const size = 8 * mib
	src := filepath.Join(t.TempDir(), "disk.raw")
	content := make([]byte, size)
	put := func(off, n int) {
		rand.Read(content[off : off+n])
	}
	put(0, 300*kib)
	put(2*mib+512, 8*kib)
	put(5*mib, 1*mib)
	writeSparse(t, src, content)

	backup := func(incremental bool) string {
		p, err := r.Begin(vm)
		if err != nil {
			t.Fatal(err)
		}
		d := repo.DiskImage{Key: 2000, Capacity: size, ChangeID: "52 aa/" + p.ID, Image: p.RelImage(2000), Level: repo.LevelFull}
		if incremental {
			pd := p.Parent().Disk(2000)
			d.Level, d.Backing, d.BaseChangeID = repo.LevelIncremental, pd.Image, pd.ChangeID
		}
		if err := qemu.CreateImage(ctx, p.ImagePath(2000), size, d.Backing); err != nil {
			t.Fatal(err)
		}
		srcSrv, err := qemu.ServeNBD(ctx, src, qemu.ServeOptions{Format: "raw", ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer srcSrv.Close()
		dstSrv, err := qemu.ServeNBD(ctx, p.ImagePath(2000), qemu.ServeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s, err := copier.OpenNBD(srcSrv.URI())
		if err != nil {
			t.Fatal(err)
		}
		dd, err := copier.OpenNBD(dstSrv.URI())
		if err != nil {
			t.Fatal(err)
		}
		res, err := copier.Copy(ctx, s, dd, copier.Options{HashChunks: true, Digest: !incremental, Incremental: incremental})
		s.Close()
		dd.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := dstSrv.Close(); err != nil {
			t.Fatal(err)
		}
		d.Chunks = chunks(res.Chunks)
		d.BlocksSHA256, d.BytesCopied, d.BytesZeroed, d.Seconds = res.Digest, res.BytesWritten, res.BytesZeroed, res.Seconds
		m := &repo.Manifest{VM: vm, Started: time.Now(), Finished: time.Now(), Disks: []repo.DiskImage{d}}
		if err := p.Commit(m); err != nil {
			p.Abort()
			t.Fatal(err)
		}
		return p.ID
	}
	full := backup(false)
	want1 := bytes.Clone(content)

	// Change some data, clear some, leave the rest.
	put(64*kib, 64*kib)
	clear(content[5*mib : 5*mib+256*kib])
	put(7*mib, 4*kib)
	writeSparse(t, src, content)
	incr := backup(true)

	if res, err := r.Verify(ctx, repo.VerifyOptions{VM: "db"}); err != nil || !res.OK() || len(res.Images) != 2 {
		t.Fatalf("verify: %+v %v", res, err)
	}
	for id, want := range map[string][]byte{full: want1, incr: content} {
		dir := t.TempDir()
		out, err := r.Restore(ctx, repo.RestoreOptions{VM: "db", Backup: id, To: dir})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(out[0].Path); !bytes.Equal(got, want) {
			first := -1
			for i := range want {
				if got[i] != want[i] {
					first = i
					break
				}
			}
			// Say which chunk covers it, to tell a copier fault from a
			// source read fault.
			m, _ := r.Latest("db")
			for _, c := range m.Disk(2000).Chunks {
				if c.Offset <= uint64(first) && uint64(first) < c.End() {
					t.Logf("chunk of the latest backup there: %+v", c)
				}
			}
			t.Fatalf("restore of %s differs at %d", id, first)
		}
	}
}

const (
	kib = 1 << 10
	mib = 1 << 20
)

// chunks is what the backup records from the copy engine's result.
func chunks(in []copier.Chunk) []repo.Chunk {
	out := make([]repo.Chunk, len(in))
	for i, c := range in {
		out[i] = repo.Chunk{Offset: c.Offset, Length: c.Length, Kind: string(c.Kind), SHA256: c.SHA256}
	}
	return out
}

// writeSparse writes content to path leaving its zero 64 KiB blocks as
// holes.
func writeSparse(t *testing.T, path string, content []byte) {
	t.Helper()
	os.Remove(path)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(content))); err != nil {
		t.Fatal(err)
	}
	const blk = 64 * kib
	zero := make([]byte, blk)
	for off := 0; off < len(content); off += blk {
		if b := content[off : off+blk]; !bytes.Equal(b, zero) {
			if _, err := f.WriteAt(b, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Durable before qemu-nbd reports its block status (SEEK_DATA).
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
