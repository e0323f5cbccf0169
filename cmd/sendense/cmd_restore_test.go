package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/repo"
)

func TestRestore(t *testing.T) {
	r, b := testRepository(t)
	to := filepath.Join(t.TempDir(), "out")
	code, out, errOut := sendense(t, "restore", "--repo", r.Dir, "web", "--backup", b.Points[0].ID, "--to", to)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, key := range []int32{2000, 2001} {
		got, err := os.ReadFile(filepath.Join(to, "web-disk"+map[int32]string{2000: "2000", 2001: "2001"}[key]+".raw"))
		if err != nil || !bytes.Equal(got, b.Content(b.Points[0].ID, key)) {
			t.Fatalf("disk %d: restored content differs (%v)", key, err)
		}
	}
	if !strings.Contains(out, "restored disk 2000") {
		t.Fatalf("output: %s", out)
	}

	// Existing outputs are refused, unless --force.
	code, _, errOut = sendense(t, "restore", "--repo", r.Dir, "web", "--to", to)
	if code != exitError || !strings.Contains(errOut, "--force") {
		t.Fatalf("over existing files: exit %d: %s", code, errOut)
	}
	code, out, errOut = sendense(t, "restore", "--repo", r.Dir, "web", "--to", to, "--force", "--disk", "2000", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := jsonLines(t, out)
	if len(lines) != 2 || lines[0]["message_type"] != "restored" || lines[0]["disk"] != 2000.0 || lines[1]["message_type"] != "summary" {
		t.Fatalf("restore --json:\n%s", out)
	}
	if got, _ := os.ReadFile(filepath.Join(to, "web-disk2000.raw")); !bytes.Equal(got, b.Content(b.Points[1].ID, 2000)) {
		t.Fatal("the latest backup's disk 2000 differs")
	}

	// A missing backing file is an error naming it; nothing is written.
	missing := filepath.Join(r.Dir, "web", repo.ImageName(b.Points[0].ID, 2001))
	os.Remove(missing)
	to2 := t.TempDir()
	code, _, errOut = sendense(t, "restore", "--repo", r.Dir, "web", "--to", to2)
	if code != exitError || !strings.Contains(errOut, missing) {
		t.Fatalf("missing backing: exit %d: %s", code, errOut)
	}
	if entries, _ := os.ReadDir(to2); len(entries) != 0 {
		t.Fatalf("files written: %v", entries)
	}
	// The other backup of that disk's chain is unaffected for disk 2000.
	code, _, errOut = sendense(t, "restore", "--repo", r.Dir, "web", "--to", to2, "--disk", "2000")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestRunRestoreWithoutCobra(t *testing.T) {
	r, b := testRepository(t)
	var stdout, stderr bytes.Buffer
	opts := restoreOptions{repo: repoDirFlag{dir: r.Dir}, To: t.TempDir(), Format: "qcow2"}
	if err := runRestore(context.Background(), opts, globalOptions{Quiet: true}, &stdout, &stderr, []string{"vm-1"}); err != nil {
		t.Fatal(err)
	}
	if stdout.Len() != 0 {
		t.Fatalf("--quiet printed %q", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(opts.To, "web-disk2001.qcow2")); err != nil {
		t.Fatal(err)
	}
	_ = b
}
