package repo_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
)

// flipByte flips one byte of the disk content at off, in the image file
// itself (bit rot).
func flipByte(t *testing.T, image string, off uint64) {
	t.Helper()
	m, err := qemu.Map(context.Background(), image, qemu.MapOptions{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m {
		if e.Start <= off && off < e.End() {
			if e.Offset == nil || !e.Data {
				t.Fatalf("offset %d of %s is not a data cluster: %+v", off, image, e)
			}
			f, err := os.OpenFile(image, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			host := int64(*e.Offset + off - e.Start)
			b := make([]byte, 1)
			f.ReadAt(b, host)
			b[0] ^= 0x40
			if _, err := f.WriteAt(b, host); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("offset %d not in the map of %s", off, image)
}

// qemuIO runs qemu-io commands on an image (through its chain).
func qemuIO(t *testing.T, image string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command("qemu-io", append(args, image)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %v: %v: %s", cmds, err, out)
	}
}

func editManifest(t *testing.T, path string, edit func(m *repo.Manifest)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m repo.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	b, _ = json.MarshalIndent(&m, "", "  ")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyDetects damages a copy of the chain in one way per case and
// checks what verify reports.
func TestVerifyDetects(t *testing.T) {
	type env struct {
		r   *repo.Repo
		dir string   // VM directory
		ids []string // the four backups
	}
	img := func(e env, i int, key int32) string { return filepath.Join(e.dir, repo.ImageName(e.ids[i], key)) }
	man := func(e env, i int) string { return filepath.Join(e.dir, e.ids[i]+".json") }
	cases := []struct {
		name   string
		damage func(t *testing.T, e env)
		backup int // -1: verify everything
		want   []string
		// restore: the backup whose restore must now fail (-1: none)
		restoreFails int
		restoreErr   string
	}{
		{"flipped byte in a data chunk of an incremental", func(t *testing.T, e env) {
			flipByte(t, img(e, 1, keyA), 64*kib+100)
		}, -1, []string{repo.ProblemChunkSHA256 + "@65536"}, -1, ""},
		{"flipped byte in a full", func(t *testing.T, e env) {
			flipByte(t, img(e, 0, keyA), 3*mib+10)
		}, 0, []string{repo.ProblemChunkSHA256 + "@3145728", repo.ProblemDiskSHA256}, -1, ""},
		{"unexpected allocated cluster", func(t *testing.T, e env) {
			qemuIO(t, img(e, 2, keyA), "write -P 0x55 2621440 4096")
		}, 2, []string{repo.ProblemAllocation + "@2621440"}, -1, ""},
		{"zero chunk that no longer hides the backing file", func(t *testing.T, e env) {
			// The manifest says zeroes were written where the image holds
			// nothing: the backing file's data shows through.
			editManifest(t, man(e, 2), func(m *repo.Manifest) {
				d := m.Disk(keyA)
				d.Chunks = append([]repo.Chunk{{Offset: 256 * kib, Length: 64 * kib, Kind: repo.KindZero}}, d.Chunks...)
			})
		}, 2, []string{repo.ProblemBackingVisible + "@262144"}, -1, ""},
		{"zero chunk overwritten with data", func(t *testing.T, e env) {
			qemuIO(t, img(e, 1, keyA), "write -P 0x55 131072 65536")
		}, 1, []string{repo.ProblemNotZero + "@131072"}, -1, ""},
		{"data chunk not allocated", func(t *testing.T, e env) {
			editManifest(t, man(e, 3), func(m *repo.Manifest) {
				d := m.Disk(keyA)
				d.Chunks = append(d.Chunks, repo.Chunk{Offset: 3 * mib, Length: 512, Kind: repo.KindData, SHA256: strings.Repeat("a", 64)})
			})
		}, 3, []string{repo.ProblemNotData + "@3145728"}, -1, ""},
		{"missing image", func(t *testing.T, e env) {
			os.Remove(img(e, 3, keyA))
		}, 3, []string{repo.ProblemMissingImage}, 3, "is missing"},
		{"missing backing", func(t *testing.T, e env) {
			os.Remove(img(e, 1, keyB))
		}, 3 - 1, []string{repo.ProblemMissingImage, repo.ProblemMissingBacking}, 2, "backing file"},
		{"corrupt manifest", func(t *testing.T, e env) {
			os.WriteFile(man(e, 3), []byte(`{"format":"sendense-manifest","version":1,"id":`), 0o600)
		}, -1, []string{repo.ProblemManifest}, 3, "corrupt"},
		{"missing manifest of a backing image", func(t *testing.T, e env) {
			os.Remove(man(e, 1))
		}, 2, []string{repo.ProblemManifest}, 2, "manifest"},
		{"backing file changed", func(t *testing.T, e env) {
			if err := qemu.Rebase(context.Background(), img(e, 2, keyB), repo.ImageName(e.ids[0], keyB), true); err != nil {
				t.Fatal(err)
			}
		}, 2, []string{repo.ProblemBacking}, -1, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r, b := chain(t)
			e := env{r: r, dir: filepath.Join(r.Dir, "web_01"), ids: ids(b)}
			c.damage(t, e)
			opts := repo.VerifyOptions{VM: "vm-42"}
			if c.backup >= 0 {
				opts.Backup = e.ids[c.backup]
			}
			res, err := r.Verify(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			if res.OK() {
				t.Fatal("verify passed")
			}
			var got []string
			for _, p := range res.Problems {
				got = append(got, p.Kind)
			}
			for _, im := range res.Images {
				for _, p := range im.Problems {
					if p.Offset != nil {
						got = append(got, fmt.Sprintf("%s@%d", p.Kind, *p.Offset))
					} else {
						got = append(got, p.Kind)
					}
					if p.File == "" || p.Message == "" {
						t.Errorf("problem without file or message: %+v", p)
					}
					if p.Kind == repo.ProblemChunkSHA256 && (len(p.Expected) != 64 || len(p.Actual) != 64) {
						t.Errorf("hash problem without expected/actual: %+v", p)
					}
				}
			}
			t.Logf("problems: %v", got)
			for _, w := range c.want {
				found := false
				for _, g := range got {
					if g == w || (!strings.Contains(w, "@") && strings.HasPrefix(g, w)) {
						found = true
					}
				}
				if !found {
					t.Errorf("want problem %s, got %v", w, got)
				}
			}
			if c.restoreFails >= 0 {
				_, err := r.Restore(context.Background(), repo.RestoreOptions{VM: "vm-42", Backup: e.ids[c.restoreFails], To: t.TempDir()})
				if err == nil || !strings.Contains(err.Error(), c.restoreErr) {
					t.Fatalf("restore of %s: got %v, want an error with %q", e.ids[c.restoreFails], err, c.restoreErr)
				}
			}
		})
	}
}

func TestCorruptManifestIsAnError(t *testing.T) {
	r, b := chain(t)
	ctx := context.Background()
	path := filepath.Join(r.Dir, "web_01", b.Points[3].ID+".json")
	os.WriteFile(path, []byte("garbage"), 0o600)
	var me *repo.ManifestError
	if _, err := r.Latest("vm-42"); !errors.As(err, &me) || me.Path != path {
		t.Fatalf("latest with a corrupt manifest: %v", err)
	}
	ls, err := r.List(ctx, "")
	if err != nil || len(ls.Points) != 3 || len(ls.Errors) != 1 || !strings.Contains(ls.Errors[0].Error(), path) {
		t.Fatalf("list: %v %v", ls, err)
	}
	if _, err := r.Prune(ctx, repo.PruneOptions{Keep: 1}); err == nil || !strings.Contains(err.Error(), "nothing was changed") || !strings.Contains(err.Error(), path) {
		t.Fatalf("prune with a corrupt manifest: %v", err)
	}
	// A restore without --backup does not silently take an older point.
	if _, err := r.Restore(ctx, repo.RestoreOptions{VM: "vm-42", To: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "--backup") {
		t.Fatalf("restore of the latest with a corrupt newest manifest: %v", err)
	}
	// A backup goes on: its parent is the newest valid point, its id is
	// later than the corrupt one's, and the corrupt one stays.
	p, err := r.Begin(vmWeb)
	if err != nil {
		t.Fatalf("a backup after a corrupt manifest: %v", err)
	}
	if p.Parent() == nil || p.Parent().ID != b.Points[2].ID || repo.CompareIDs(p.ID, b.Points[3].ID) <= 0 {
		t.Fatalf("pending backup %s, parent %v", p.ID, p.Parent())
	}
	p.Abort()
	if !exists(path) {
		t.Fatal("the corrupt manifest was removed")
	}
	// Earlier points are still restorable.
	for _, id := range ids(b)[:3] {
		b.CheckRestore(id)
	}
}
