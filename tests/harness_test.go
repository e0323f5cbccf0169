// Package tests holds the integration tests that need the built plugin,
// the fake VDDK and real peers (nbdkit, nbdinfo, nbdcopy, qemu-img). Run
// them with `make test` (which builds first) or `go test ./tests/` after
// `make`.
package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

var (
	topDir   = func() string { _, f, _, _ := runtime.Caller(0); return filepath.Dir(filepath.Dir(f)) }()
	buildDir = filepath.Join(topDir, "build")
	plugin   = filepath.Join(buildDir, "nbdkit-sendense-plugin.so")
	fakeVDDK = filepath.Join(buildDir, "fakevddk")
	sendense = filepath.Join(buildDir, "sendense")
)

func TestMain(m *testing.M) {
	for _, f := range []string{plugin, filepath.Join(buildDir, "sendense-plugin-go.so"), filepath.Join(fakeVDDK, "lib64/libvixDiskLib.so.8"), sendense} {
		if _, err := os.Stat(f); err != nil {
			fmt.Fprintf(os.Stderr, "tests: %s is missing: run make first (make test builds and runs everything)\n", f)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// mapEntry is one line of nbdinfo --map --json.
type mapEntry struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
	Type   uint32 `json:"type"`
}

func (e mapEntry) String() string { return fmt.Sprintf("%d+%d:%d", e.Offset, e.Length, e.Type) }

// nbdkitRun runs `nbdkit -U - PLUGIN args... --run script` with extra
// environment and returns stdout; it fails the test on error.
func nbdkitRun(t testing.TB, env []string, script string, args ...string) string {
	t.Helper()
	out, err := nbdkitTry(env, script, args...)
	if err != nil {
		t.Fatalf("nbdkit %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// nbdkitTry is nbdkitRun returning the error (with stderr) instead.
func nbdkitTry(env []string, script string, args ...string) (string, error) {
	a := append([]string{"-U", "-", plugin, "libdir=" + fakeVDDK}, args...)
	a = append(a, "--run", script)
	cmd := exec.Command("timeout", append([]string{"120", "nbdkit"}, a...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%v after %v: %s", err, time.Since(start).Round(time.Millisecond), stderr.String())
	}
	return stdout.String(), nil
}

// nbdMap returns the plugin's map for args.
func nbdMap(t testing.TB, env []string, args ...string) []mapEntry {
	t.Helper()
	out := nbdkitRun(t, env, `nbdinfo --map --json "$uri"`, args...)
	var m []mapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("nbdinfo --map --json: %v: %q", err, out)
	}
	return m
}

// mergeMap merges adjacent entries of the same type.
func mergeMap(in []mapEntry) []mapEntry {
	var out []mapEntry
	for _, e := range in {
		if e.Length == 0 {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Type == e.Type && out[n-1].Offset+out[n-1].Length == e.Offset {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, e)
	}
	return out
}

func equalMaps(a, b []mapEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// run runs a command and fails the test with its output on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
