package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
)

// TestConfigPrecedence (problem 3): flag > environment > file, and the
// file is found without --config.
func TestConfigPrecedence(t *testing.T) {
	repotest.Require(t)
	repos := map[string]string{}
	for _, name := range []string{"file", "env", "flag"} {
		r, err := repo.Init(filepath.Join(t.TempDir(), name))
		if err != nil {
			t.Fatal(err)
		}
		b := repotest.New(t, r, repo.VMRef{Moref: "vm-1", Name: "vm-of-" + name}, 1)
		b.Backup(repotest.Disk{Key: 2000, Capacity: 64 * tKiB, Writes: []repotest.Write{{Off: 0, Len: 4 * tKiB}}})
		repos[name] = r.Dir
	}
	conf := filepath.Join(t.TempDir(), "sendense.toml")
	os.WriteFile(conf, []byte("[repository]\npath = \""+repos["file"]+"\"\n"), 0o600)
	t.Setenv("SENDENSE_CONFIG", "")
	t.Setenv("SENDENSE_REPOSITORY", "")

	lists := func(args ...string) string {
		t.Helper()
		code, out, errOut := sendense(t, args...)
		if code != 0 {
			t.Fatalf("sendense %v: exit %d: %s", args, code, errOut)
		}
		for name := range repos {
			if strings.Contains(out, "vm-of-"+name) {
				return name
			}
		}
		t.Fatalf("sendense %v listed:\n%s", args, out)
		return ""
	}
	if got := lists("--config", conf, "list"); got != "file" {
		t.Errorf("file only: %s", got)
	}
	t.Setenv("SENDENSE_REPOSITORY", repos["env"])
	if got := lists("--config", conf, "list"); got != "env" {
		t.Errorf("SENDENSE_REPOSITORY=… sendense --config f list listed the %s repository, want the environment's", got)
	}
	if got := lists("--config", conf, "list", "--repo", repos["flag"]); got != "flag" {
		t.Errorf("--repo: %s", got)
	}

	// No --config: $XDG_CONFIG_HOME/sendense/sendense.toml (after
	// /etc/sendense/sendense.toml, which this machine must not have).
	if _, err := os.Stat("/etc/sendense/sendense.toml"); err == nil {
		t.Skip("/etc/sendense/sendense.toml exists here")
	}
	t.Setenv("SENDENSE_REPOSITORY", "")
	xdg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", xdg)
	os.MkdirAll(filepath.Join(xdg, "sendense"), 0o700)
	os.Rename(conf, filepath.Join(xdg, "sendense", "sendense.toml"))
	if got := lists("list"); got != "file" {
		t.Errorf("the default configuration file was not read: %s", got)
	}
	if code, _, errOut := sendense(t, "--config", "none", "list"); code != exitUsage || !strings.Contains(errOut, "no repository given") {
		t.Errorf("--config none: exit %d: %s", code, errOut)
	}
}
