package repo_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/diskdigest"
	"github.com/sendense/capture/internal/repo"
)

// toV1 rewrites a manifest as version 1 wrote it: the full disks carry
// the SHA-256 of the whole disk instead of the disk digest.
func toV1(t *testing.T, path string, content map[int32][]byte) {
	t.Helper()
	editManifest(t, path, func(m *repo.Manifest) {
		m.Version = 1
		for i := range m.Disks {
			d := &m.Disks[i]
			if d.Level == repo.LevelFull {
				sum := sha256.Sum256(content[d.Key])
				d.SHA256, d.BlocksSHA256 = hex.EncodeToString(sum[:]), ""
			}
		}
	})
}

// Backups record the disk digest of their fulls (manifest version 2);
// version 1 manifests, with the SHA-256 of the whole disk, still verify,
// restore and prune; a damaged full is found with either digest.
func TestDiskDigestVersions(t *testing.T) {
	ctx := context.Background()
	r, b := chain(t)
	dir := filepath.Join(r.Dir, "web_01")
	all := ids(b)
	m := mustManifest(t, r, all[0])
	if m.Version != 2 || m.Disk(keyA).BlocksSHA256 == "" || m.Disk(keyA).SHA256 != "" {
		t.Fatalf("manifest version %d, disk %+v", m.Version, m.Disk(keyA))
	}
	out, err := r.Restore(ctx, repo.RestoreOptions{VM: "web 01", Backup: all[0], To: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range out {
		raw, err := os.ReadFile(o.Path)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := diskdigest.OfBytes(raw), m.Disk(o.Disk).BlocksSHA256; got != want {
			t.Fatalf("disk %d restored has digest %s, the manifest says %s", o.Disk, got, want)
		}
	}

	for i, p := range b.Points {
		toV1(t, filepath.Join(dir, p.ID+".json"), b.Points[i].Content)
	}
	verifyOK(t, r, "", "")
	b.CheckRestore(all[3])

	// Prune merges into backup 3 (disk A from 1-3; B was full in 4): the
	// merged disk gets the disk digest, so the manifest becomes version 2.
	if _, err := r.Prune(ctx, repo.PruneOptions{Keep: 2}); err != nil {
		t.Fatal(err)
	}
	m = mustManifest(t, r, all[2])
	if a := m.Disk(keyA); m.Version != 2 || a.BlocksSHA256 == "" || a.SHA256 != "" {
		t.Fatalf("merged manifest version %d, disk A %+v", m.Version, a)
	}
	verifyOK(t, r, "", "")
	b.CheckRestore(all[2])

	// Damage is found with either digest.
	for _, v1 := range []bool{false, true} {
		r, b := chain(t)
		dir := filepath.Join(r.Dir, "web_01")
		if v1 {
			toV1(t, filepath.Join(dir, b.Points[0].ID+".json"), b.Points[0].Content)
		}
		flipByte(t, filepath.Join(dir, repo.ImageName(b.Points[0].ID, keyB)), 1*mib+100)
		res, err := r.Verify(ctx, repo.VerifyOptions{VM: "web 01", Backup: b.Points[0].ID})
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, im := range res.Images {
			for _, p := range im.Problems {
				kinds = append(kinds, p.Kind)
			}
		}
		if got := strings.Join(kinds, " "); got != repo.ProblemChunkSHA256+" "+repo.ProblemDiskSHA256 {
			t.Fatalf("v1 %v: problems %s", v1, got)
		}
	}
}

// A manifest names one whole-disk digest its version knows.
func TestDiskDigestValidation(t *testing.T) {
	sum := strings.Repeat("a", 64)
	for _, c := range []struct {
		version      int
		sha, blocks  string
		level, wants string
	}{
		{1, "", sum, repo.LevelFull, "needs manifest version 2"},
		{2, sum, sum, repo.LevelFull, "two whole-disk digests"},
		{2, "", "", repo.LevelFull, "whole-disk digest"},
		{2, "", "ABC", repo.LevelFull, "not a SHA-256"},
		{1, "", "", repo.LevelFull, "SHA-256 of the whole disk"},
		{3, "", sum, repo.LevelFull, "newer than this sendense"},
		{2, sum, "", repo.LevelFull, ""},
		{1, sum, "", repo.LevelFull, ""},
		{2, "", sum, repo.LevelIncremental, ""},
	} {
		m := repo.Manifest{Format: repo.ManifestFormat, Version: c.version, ID: "20240501T120000Z", VM: repo.VMRef{Moref: "vm-1"},
			Status: repo.StatusComplete, Disks: []repo.DiskImage{{Key: 2000, Capacity: mib, Level: c.level,
				Image: "20240501T120000Z-disk2000.qcow2", SHA256: c.sha, BlocksSHA256: c.blocks}}}
		if c.level == repo.LevelIncremental {
			m.Parent, m.Disks[0].Backing = "20240401T120000Z", "20240401T120000Z-disk2000.qcow2"
		}
		err := m.Validate()
		if c.wants == "" && err != nil || c.wants != "" && (err == nil || !strings.Contains(err.Error(), c.wants)) {
			t.Errorf("version %d sha256 %q blocks_sha256 %q %s: %v, want %q", c.version, c.sha, c.blocks, c.level, err, c.wants)
		}
	}
}
