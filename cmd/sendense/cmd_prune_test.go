package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
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

// TestPruneRetention: the --keep-* flags (restic's rules, reasons with
// --dry-run) and [retention] of the configuration without flags.
func TestPruneRetention(t *testing.T) {
	r, b := testRepository(t) // two backups
	full := repotest.Disk{Key: 2000, Capacity: 2 * tMiB, Full: true, Writes: []repotest.Write{{Off: 0, Len: 8 * tKiB}}}
	for range 3 {
		b.Backup(full) // full backups: any of them can go
	}
	ids := []string{}
	for _, p := range b.Points {
		ids = append(ids, p.ID)
	}
	// Five points in one year: --keep-last 1 keeps the newest, --keep-yearly
	// 2 the newest of the year and, its count not used up, the oldest.
	code, out, errOut := sendense(t, "prune", "--repo", r.Dir, "--keep-last", "1", "--keep-yearly", "2", "--dry-run")
	year := ids[4][:4]
	for _, want := range []string{
		"policy: keep 1 last and 2 yearly",
		"would remove 3 backups (" + strings.Join(ids[1:4], ", ") + ")",
		"keep " + ids[4] + ": last, yearly " + year,
		"keep " + ids[0] + ": yearly " + year + " (oldest point)",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("dry run: exit %d, %q missing:\n%s%s", code, want, out, errOut)
		}
	}
	if code, _, errOut := sendense(t, "prune", "--repo", r.Dir, "--keep", "2", "--keep-daily", "3"); code != exitUsage || !strings.Contains(errOut, "do not go together") {
		t.Errorf("--keep with --keep-daily: exit %d %s", code, errOut)
	}
	if code, _, errOut := sendense(t, "prune", "--repo", r.Dir, "--keep-within", "3w"); code != exitUsage || !strings.Contains(errOut, "unknown unit") {
		t.Errorf("--keep-within 3w: exit %d %s", code, errOut)
	}

	// [retention] applies without flags: keep_last = 2 drops ids[0..2];
	// ids[1] and ids[2] are incrementals of the first two backups: the
	// newest two are fulls, so dropping the older ones merges nothing.
	conf := filepath.Join(t.TempDir(), "sendense.toml")
	os.WriteFile(conf, []byte("[retention]\nkeep_last = 2\n"), 0o600)
	code, out, errOut = sendense(t, "--config", conf, "prune", "--repo", r.Dir, "--json")
	if code != 0 {
		t.Fatalf("prune with [retention]: exit %d: %s", code, errOut)
	}
	lines := jsonLines(t, out)
	if len(lines) != 2 || len(lines[0]["dropped"].([]any)) != 3 || len(lines[0]["kept"].([]any)) != 2 || lines[0]["reasons"] == nil {
		t.Fatalf("prune --json:\n%s", out)
	}
	listed := func(out, id string) bool {
		return regexp.MustCompile(`(?m)\s` + regexp.QuoteMeta(id) + `\s`).MatchString(out)
	}
	if code, out, _ := sendense(t, "list", "--repo", r.Dir); code != 0 || listed(out, ids[2]) || !listed(out, ids[3]) || !listed(out, ids[4]) {
		t.Fatalf("after prune (%s, %s kept):\n%s", ids[3], ids[4], out)
	}
	b.CheckRestore(ids[3])
	b.CheckRestore(ids[4])
}
