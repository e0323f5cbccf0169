package vddk

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The fake VDDK (tests/fakevddk), built by TestMain, loaded and
// initialised once for the whole test binary (InitEx is once per process).
var (
	repoTop    string
	fakeLibdir string
	testLib    *Library
	testLogs   logCapture
)

func TestMain(m *testing.M) {
	top, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	repoTop = top
	fakeLibdir = filepath.Join(top, "build", "fakevddk")
	build := exec.Command("make", "-s", "-C", top, "build/fakevddk/lib64/libvixDiskLib.so.8")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building the fake VDDK: %v\n", err)
		os.Exit(1)
	}
	// Start without any FAKEVDDK_* setting from the caller's environment.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "FAKEVDDK_") && os.Getenv("VDDK_TEST_CHILD") == "" {
			os.Unsetenv(k)
		}
	}
	SetLogger(testLogs.log)
	testLib, err = Load(fakeLibdir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := testLib.Init(""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	testLib.Exit()
	os.Exit(code)
}

// logCapture records what SetLogger's function receives.
type logCapture struct {
	mu    sync.Mutex
	lines []string
}

func (c *logCapture) log(level, msg string) {
	c.mu.Lock()
	c.lines = append(c.lines, level+": "+msg)
	c.mu.Unlock()
}

func (c *logCapture) reset() {
	c.mu.Lock()
	c.lines = nil
	c.mu.Unlock()
}

func (c *logCapture) text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

// callLog points FAKEVDDK_LOG at a fresh file for this test and returns a
// function reading its lines.
func callLog(t *testing.T) func() []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fakevddk.log")
	t.Setenv("FAKEVDDK_LOG", path)
	return func() []string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("reading FAKEVDDK_LOG: %v", err)
		}
		return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	}
}

// grepLines returns the lines starting with prefix.
func grepLines(lines []string, prefix string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

// writeFile creates a file of size bytes holding data at the given
// offsets (a sparse file elsewhere) and returns its path.
func writeFile(t testing.TB, dir, name string, size int64, data map[int64][]byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, b := range data {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// openLocal connects in local mode and opens path.
func openLocal(t testing.TB, path string) (*Connection, Disk) {
	t.Helper()
	c, err := testLib.Connect(ConnectParams{})
	if err != nil {
		t.Fatalf("Connect (local): %v", err)
	}
	t.Cleanup(func() { c.Close() })
	d, err := c.Open(path, 0)
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	t.Cleanup(func() { d.Close() })
	return c, d
}

// fileImage returns the bytes the disk must show: the file padded with
// zeroes to whole sectors.
func fileImage(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if r := len(b) % SectorSize; r != 0 {
		b = append(b, bytes.Repeat([]byte{0}, SectorSize-r)...)
	}
	return b
}

// buildVariant compiles the fake's sources into DIR/lib64/libvixDiskLib.so.8
// exporting only the VixDiskLib functions not in hide (a linker version
// script), so tests can see a VDDK without some functions.
func buildVariant(t *testing.T, hide ...string) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is not installed")
	}
	var keep []string
next:
	for _, f := range fnNames { // every function of stubs.h
		for _, h := range hide {
			if f == "VixDiskLib_"+h {
				continue next
			}
		}
		keep = append(keep, f+";")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "exports.map")
	if err := os.WriteFile(script, []byte("{ global: "+strings.Join(keep, " ")+" local: *; };\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "lib64"), 0o755); err != nil {
		t.Fatal(err)
	}
	srcs, _ := filepath.Glob(filepath.Join(repoTop, "tests", "fakevddk", "*.c"))
	args := append([]string{"-O2", "-fPIC", "-shared", "-Wl,-soname,libvixDiskLib.so.8",
		"-Wl,--version-script=" + script, "-o", filepath.Join(dir, "lib64", "libvixDiskLib.so.8")},
		srcs...)
	args = append(args, "-lpthread")
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return dir
}

// runChild reruns this test binary for the test named name with env added,
// and returns its combined output and exit error.
func runChild(t *testing.T, name string, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), append(env, "VDDK_TEST_CHILD=1")...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func isChild() bool { return os.Getenv("VDDK_TEST_CHILD") != "" }
