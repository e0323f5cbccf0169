package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
)

func TestVerify(t *testing.T) {
	r, b := testRepository(t)
	code, out, errOut := sendense(t, "verify", "--repo", r.Dir)
	if code != 0 || !strings.Contains(out, "verified 4 images: no problems") {
		t.Fatalf("exit %d:\n%s\n%s", code, out, errOut)
	}
	code, out, _ = sendense(t, "verify", "--repo", r.Dir, "web", "--backup", b.Points[1].ID, "--json")
	lines := jsonLines(t, out)
	if code != 0 || len(lines) != 5 || lines[4]["message_type"] != "summary" || lines[4]["ok"] != true {
		t.Fatalf("verify --json: exit %d\n%s", code, out)
	}
	if code, _, errOut := sendense(t, "verify", "--repo", r.Dir, "nosuchvm"); code != exitError || !strings.Contains(errOut, "nosuchvm") {
		t.Fatalf("unknown VM: exit %d: %s", code, errOut)
	}
	if code, _, errOut := sendense(t, "verify", "--repo", r.Dir, "web", "--backup", "20000101T000000Z"); code != exitError || !strings.Contains(errOut, "not found") {
		t.Fatalf("unknown backup: exit %d: %s", code, errOut)
	}

	// Overwrite data in the incremental's image: exit 3, the problem names
	// the file, the offset, the expected and actual SHA-256.
	img := filepath.Join(r.Dir, "web", repo.ImageName(b.Points[1].ID, 2000))
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 65536 512", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	code, out, _ = sendense(t, "verify", "--repo", r.Dir, "--json")
	if code != exitVerify {
		t.Fatalf("exit %d, want %d:\n%s", code, exitVerify, out)
	}
	var found bool
	for _, l := range jsonLines(t, out) {
		if l["message_type"] == "problem" && l["kind"] == repo.ProblemChunkSHA256 {
			found = l["file"] == img && l["offset"] == 65536.0 && len(l["expected"].(string)) == 64 && len(l["actual"].(string)) == 64
		}
	}
	if !found {
		t.Fatalf("no chunk-sha256 problem for %s at 65536:\n%s", img, out)
	}
	code, out, errOut = sendense(t, "verify", "--repo", r.Dir, "-q")
	if code != exitVerify || !strings.Contains(out, "FAIL") || strings.Contains(out, "ok    ") || !strings.Contains(errOut, "1 problem") {
		t.Fatalf("verify -q: exit %d\n%s\n%s", code, out, errOut)
	}
}

func TestVerifyMissingFiles(t *testing.T) {
	r, b := testRepository(t)
	os.Remove(filepath.Join(r.Dir, "web", repo.ImageName(b.Points[0].ID, 2001)))
	code, out, _ := sendense(t, "verify", "--repo", r.Dir, "vm-1", "--backup", b.Points[1].ID)
	if code != exitVerify || !strings.Contains(out, repo.ProblemMissingImage) || !strings.Contains(out, repo.ProblemMissingBacking) {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	os.WriteFile(filepath.Join(r.Dir, "web", b.Points[0].ID+".json"), []byte("[]"), 0o600)
	code, out, _ = sendense(t, "verify", "--repo", r.Dir)
	if code != exitVerify || !strings.Contains(out, repo.ProblemManifest) {
		t.Fatalf("corrupt manifest: exit %d:\n%s", code, out)
	}
	// qemu tools are what the command needs; Info works on what is left.
	if _, err := qemu.Info(context.Background(), filepath.Join(r.Dir, "web", repo.ImageName(b.Points[1].ID, 2001))); err != nil {
		t.Fatal(err)
	}
}
