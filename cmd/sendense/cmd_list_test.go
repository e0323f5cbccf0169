package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
)

const (
	tKiB = 1 << 10
	tMiB = 1 << 20
)

// testRepository builds a repository with a full and an incremental
// backup of VM "web" (vm-1): disks 2000 (2 MiB) and 2001 (1 MiB).
func testRepository(t *testing.T) (*repo.Repo, *repotest.Builder) {
	t.Helper()
	repotest.Require(t)
	t.Setenv("SENDENSE_CONFIG", "")
	t.Setenv("SENDENSE_REPOSITORY", "")
	r, err := repo.Init(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	b := repotest.New(t, r, repo.VMRef{Moref: "vm-1", Name: "web"}, 7)
	b.Backup(
		repotest.Disk{Key: 2000, Capacity: 2 * tMiB, Writes: []repotest.Write{{Off: 0, Len: 300 * tKiB}, {Off: 1 * tMiB, Len: 64 * tKiB}}},
		repotest.Disk{Key: 2001, Capacity: 1 * tMiB, Writes: []repotest.Write{{Off: 512 * tKiB, Len: 4 * tKiB}}},
	)
	b.Backup(
		repotest.Disk{Key: 2000, Capacity: 2 * tMiB, Writes: []repotest.Write{{Off: 64 * tKiB, Len: 64 * tKiB}, {Off: 1 * tMiB, Len: 64 * tKiB, Zero: true}}},
		repotest.Disk{Key: 2001, Capacity: 1 * tMiB},
	)
	return r, b
}

// sendense runs the CLI and returns the exit status, stdout and stderr.
func sendense(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	resetRepoCommandFlags(t)
	return code, stdout.String(), stderr.String()
}

// resetRepoCommandFlags puts the flags of the repository commands (and
// the global ones) back to their defaults: the cobra tree is global.
func resetRepoCommandFlags(t *testing.T) {
	t.Helper()
	reset := func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			sv.Replace(nil)
		} else {
			f.Value.Set(f.DefValue)
		}
		f.Changed = false
	}
	rootCmd.PersistentFlags().VisitAll(reset)
	for _, c := range rootCmd.Commands() {
		switch c.Name() {
		case "list", "restore", "verify", "prune":
			c.Flags().VisitAll(reset)
		}
	}
}

// jsonLines decodes --json output, checking that every line is an object
// with a message_type.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON object: %q: %v", l, err)
		}
		if _, ok := m["message_type"].(string); !ok {
			t.Fatalf("no message_type: %q", l)
		}
		lines = append(lines, m)
	}
	return lines
}

func TestList(t *testing.T) {
	r, b := testRepository(t)
	code, out, errOut := sendense(t, "list", "--repo", r.Dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"VM", "BACKUP", "LEVEL", "DISKS", "SIZE", "COPIED", "web", b.Points[0].ID, b.Points[1].ID, "full", "incremental", "3.0 MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}

	// $SENDENSE_REPOSITORY, --json, one VM.
	t.Setenv("SENDENSE_REPOSITORY", r.Dir)
	code, out, errOut = sendense(t, "list", "--json", "vm-1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := jsonLines(t, out)
	if len(lines) != 3 || lines[0]["message_type"] != "backup" || lines[0]["id"] != b.Points[0].ID || lines[2]["message_type"] != "summary" || lines[2]["backups"] != 2.0 {
		t.Fatalf("list --json:\n%s", out)
	}
	if disks := lines[1]["disks"].([]any); len(disks) != 2 || disks[0].(map[string]any)["backing"] == "" {
		t.Fatalf("disks: %v", disks)
	}

	// A corrupt manifest: listed as an error naming the file, exit 1.
	bad := filepath.Join(r.Dir, "web", b.Points[1].ID+".json")
	os.WriteFile(bad, []byte("{"), 0o600)
	code, out, errOut = sendense(t, "list")
	if code != exitError || !strings.Contains(errOut, bad) || !strings.Contains(out, b.Points[0].ID) {
		t.Fatalf("corrupt manifest: exit %d\n%s\n%s", code, out, errOut)
	}
}

func TestRepoCommandErrors(t *testing.T) {
	t.Setenv("SENDENSE_CONFIG", "")
	t.Setenv("SENDENSE_REPOSITORY", "")
	notRepo := t.TempDir()
	os.WriteFile(filepath.Join(notRepo, "x"), nil, 0o600)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"list"}, exitUsage, "no repository given"},
		{[]string{"list", "--repo", filepath.Join(notRepo, "nope")}, exitError, "does not exist"},
		{[]string{"list", "--repo", notRepo}, exitError, "not a sendense repository"},
		{[]string{"verify", "--repo", notRepo}, exitError, "not a sendense repository"},
		{[]string{"list", "--repo", notRepo, "a", "b"}, exitUsage, "accepts at most 1 arg"},
		{[]string{"restore", "--repo", notRepo, "vm"}, exitUsage, "--to"},
		{[]string{"restore", "--repo", notRepo, "vm", "--to", "x", "--format", "vmdk"}, exitUsage, "--format"},
		{[]string{"restore", "--repo", notRepo, "--to", "x"}, exitUsage, "accepts 1 arg"},
		{[]string{"verify", "--repo", notRepo, "--backup", "20240101T000000Z"}, exitUsage, "--backup needs the VM"},
		{[]string{"prune", "--repo", notRepo}, exitUsage, "--keep"},
		{[]string{"prune", "--repo", notRepo, "--keep", "0"}, exitUsage, "--keep"},
	} {
		code, _, errOut := sendense(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("sendense %v: exit %d, stderr %q; want %d and %q", c.args, code, errOut, c.code, c.msg)
		}
	}
}
