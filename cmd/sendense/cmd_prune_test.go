package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/repo/repotest"
)

func TestPrune(t *testing.T) {
	r, b := testRepository(t)
	b.Backup(
		repotest.Disk{Key: 2000, Capacity: 2 * tMiB, Writes: []repotest.Write{{Off: 512 * tKiB, Len: 8 * tKiB}}},
		repotest.Disk{Key: 2001, Capacity: 1 * tMiB, Writes: []repotest.Write{{Off: 0, Len: 4 * tKiB}}},
	)
	ids := []string{b.Points[0].ID, b.Points[1].ID, b.Points[2].ID}

	code, out, errOut := sendense(t, "prune", "--repo", r.Dir, "--keep", "1", "--dry-run")
	if code != 0 || !strings.Contains(out, "would remove 2 backups") || !strings.Contains(out, "would merge disk 2000 into backup "+ids[2]) {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, _ := sendense(t, "list", "--repo", r.Dir); code != 0 || !strings.Contains(out, ids[0]) {
		t.Fatalf("the dry run removed backups:\n%s", out)
	}

	code, out, errOut = sendense(t, "prune", "--repo", r.Dir, "--keep", "1", "--json", "web")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := jsonLines(t, out)
	if len(lines) != 2 || lines[0]["message_type"] != "prune" || len(lines[0]["dropped"].([]any)) != 2 || lines[1]["dropped"] != 2.0 {
		t.Fatalf("prune --json:\n%s", out)
	}
	if code, out, _ := sendense(t, "verify", "--repo", r.Dir); code != 0 || !strings.Contains(out, "verified 2 images") {
		t.Fatalf("verify after prune: exit %d\n%s", code, out)
	}
	to := t.TempDir()
	if code, _, errOut := sendense(t, "restore", "--repo", r.Dir, "web", "--to", to); code != 0 {
		t.Fatalf("restore after prune: exit %d: %s", code, errOut)
	}
	for _, key := range []string{"2000", "2001"} {
		got, _ := os.ReadFile(filepath.Join(to, "web-disk"+key+".raw"))
		k := int32(2000)
		if key == "2001" {
			k = 2001
		}
		if !bytes.Equal(got, b.Content(ids[2], k)) {
			t.Fatalf("disk %s differs after prune", key)
		}
	}
	if code, out, _ := sendense(t, "prune", "--repo", r.Dir, "--keep", "1"); code != 0 || !strings.Contains(out, "nothing to remove") {
		t.Fatalf("second prune: exit %d\n%s", code, out)
	}
}
