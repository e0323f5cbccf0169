package vddk

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	empty := t.TempDir()
	_, err := Find(empty)
	if err == nil {
		t.Fatal("Find in an empty directory succeeded")
	}
	for _, want := range []string{empty,
		filepath.Join(empty, "lib64", "libvixDiskLib.so.9"),
		filepath.Join(empty, "libvixDiskLib.so.9"),
		filepath.Join(empty, "lib64", "libvixDiskLib.so.8"),
		filepath.Join(empty, "lib64", "libvixDiskLib.so.7"),
		filepath.Join(empty, "lib64", "libvixDiskLib.so.6") + ", " + filepath.Join(empty, "libvixDiskLib.so.6")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Find error %q does not name %s", err, want)
		}
	}
	if _, err := Load(empty); err == nil || !strings.Contains(err.Error(), "libvixDiskLib.so.6") {
		t.Errorf("Load of an empty libdir: %v, want the paths tried", err)
	}
	if _, err := Find(""); err == nil || !strings.Contains(err.Error(), "libdir") {
		t.Errorf("Find(\"\") = %v, want an error naming libdir", err)
	}

	// nbdkit-vddk-plugin's order: newest major first, lib64/ before libdir
	// itself.
	for _, tc := range []struct {
		have []string
		want string
	}{
		{[]string{"lib64/libvixDiskLib.so.6", "lib64/libvixDiskLib.so.7"}, "lib64/libvixDiskLib.so.7"},
		{[]string{"lib64/libvixDiskLib.so.6"}, "lib64/libvixDiskLib.so.6"},
		{[]string{"lib64/libvixDiskLib.so.8", "lib64/libvixDiskLib.so.9", "lib64/libvixDiskLib.so.6"}, "lib64/libvixDiskLib.so.9"},
		{[]string{"libvixDiskLib.so.8"}, "libvixDiskLib.so.8"},
		{[]string{"libvixDiskLib.so.8", "lib64/libvixDiskLib.so.8"}, "lib64/libvixDiskLib.so.8"},
		{[]string{"libvixDiskLib.so.9", "lib64/libvixDiskLib.so.8"}, "libvixDiskLib.so.9"},
		{[]string{"lib64/libvixDiskLib.so.9/", "lib64/libvixDiskLib.so.7"}, "lib64/libvixDiskLib.so.7"}, // a directory is skipped
	} {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "lib64"), 0o755)
		for _, f := range tc.have {
			if strings.HasSuffix(f, "/") {
				os.MkdirAll(filepath.Join(dir, f), 0o755)
			} else {
				os.WriteFile(filepath.Join(dir, f), nil, 0o644)
			}
		}
		got, err := Find(dir)
		if want := filepath.Join(dir, tc.want); err != nil || got != want {
			t.Errorf("Find with %v = %q, %v; want %q", tc.have, got, err, want)
		}
	}

	got, err := Find(fakeLibdir)
	if err != nil || got != filepath.Join(fakeLibdir, "lib64", "libvixDiskLib.so.8") {
		t.Errorf("Find(fake) = %q, %v", got, err)
	}
	if testLib.Path() != got {
		t.Errorf("Path() = %q, want %q", testLib.Path(), got)
	}
}

func TestLoadNotALibrary(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "lib64"), 0o755)
	os.WriteFile(filepath.Join(dir, "lib64", "libvixDiskLib.so.8"), []byte("not ELF"), 0o644)
	_, err := Load(dir)
	if err == nil || !strings.Contains(err.Error(), "cannot load") {
		t.Fatalf("Load of a bad file = %v, want a dlopen error", err)
	}
}

func TestLoadMissingRequired(t *testing.T) {
	dir := buildVariant(t, "Read", "GetInfo")
	_, err := Load(dir)
	if err == nil {
		t.Fatal("Load succeeded without VixDiskLib_Read")
	}
	for _, want := range []string{"VixDiskLib_Read", "VixDiskLib_GetInfo"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Load error %q does not name %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "VixDiskLib_Open") {
		t.Errorf("Load error %q names a function that is present", err)
	}
}

// The fake stands in for a real VDDK: it exports every function of
// stubs.h, required and optional (what nbdkit-vddk-plugin needs too).
func TestFakeExportsEveryFunction(t *testing.T) {
	for _, s := range testLib.Symbols() {
		if !s.Present {
			t.Errorf("the fake VDDK lacks %s (required %v)", s.Name, s.Required)
		}
	}
	if len(testLib.Symbols()) != 22 {
		t.Errorf("stubs.h lists %d functions, want 22", len(testLib.Symbols()))
	}
	if v := testLib.Version(); v != 8 {
		t.Errorf("Version = %d, want 8", v)
	}
}

func TestLoadWithoutOptional(t *testing.T) {
	dir := buildVariant(t, "AllocateConnectParams", "QueryAllocatedBlocks", "FreeBlockList")
	l, err := Load(dir)
	if err != nil {
		t.Fatalf("Load without optional functions: %v", err)
	}
	missing := map[string]bool{}
	for _, s := range l.Symbols() {
		if !s.Present {
			missing[s.Name] = true
			if s.Required {
				t.Errorf("required %s missing", s.Name)
			}
		}
	}
	if len(missing) != 3 || !missing["VixDiskLib_QueryAllocatedBlocks"] || !missing["VixDiskLib_AllocateConnectParams"] {
		t.Errorf("missing = %v", missing)
	}
	if err := l.Init(""); err != nil {
		t.Fatal(err)
	}
	log := callLog(t)
	c, err := l.Connect(ConnectParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	size := int64(3*chunkBytes + 1000)
	path := writeFile(t, t.TempDir(), "raw.img", size, map[int64][]byte{0: []byte("hello")})
	d, err := c.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.CanQueryAllocated() {
		t.Error("CanQueryAllocated without QueryAllocatedBlocks")
	}
	got, err := d.Allocated(100, 1<<30)
	if err != nil || len(got) != 1 || got[0].Offset != 100 || got[0].End() != d.Size() {
		t.Errorf("Allocated = %v, %v; want all of [100, %d)", got, err, d.Size())
	}
	buf := make([]byte, 5)
	if _, err := d.ReadAt(buf, 0); err != nil || string(buf) != "hello" {
		t.Errorf("ReadAt = %q, %v", buf, err)
	}
	d.Close()
	c.Close()
	// Without AllocateConnectParams the struct is calloc'd: FreeConnectParams
	// is never called.
	if n := len(grepLines(log(), "VixDiskLib_FreeConnectParams")); n != 0 {
		t.Errorf("FreeConnectParams called %d times without AllocateConnectParams", n)
	}
}

func TestInitIdempotent(t *testing.T) {
	log := callLog(t)
	if err := testLib.Init("/nonexistent.conf"); err != nil {
		t.Fatal(err)
	}
	if err := testLib.Init(""); err != nil {
		t.Fatal(err)
	}
	l2, err := Load(fakeLibdir)
	if err != nil || l2 != testLib {
		t.Fatalf("second Load = %p, %v; want the same *Library %p", l2, err, testLib)
	}
	// Nothing reached VDDK: InitEx ran once, in TestMain.
	if _, err := os.Stat(os.Getenv("FAKEVDDK_LOG")); err == nil {
		if n := len(grepLines(log(), "VixDiskLib_InitEx")); n != 0 {
			t.Errorf("InitEx called again (%d times)", n)
		}
	}
	var initCalls uint64
	for _, s := range testLib.Stats() {
		if s.Name == "VixDiskLib_InitEx" {
			initCalls = s.Calls
		}
	}
	if initCalls != 1 {
		t.Errorf("InitEx calls = %d, want 1", initCalls)
	}
}

func TestConnectBeforeInit(t *testing.T) {
	l, err := Load(buildVariant(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Connect(ConnectParams{}); !errors.Is(err, errNotInitialized) {
		t.Errorf("Connect before Init = %v", err)
	}
	log := callLog(t)
	if err := l.Init(""); err != nil {
		t.Fatal(err)
	}
	l.Exit()
	l.Exit()
	if err := l.Init(""); err == nil || !strings.Contains(err.Error(), "cannot be initialised again") {
		t.Errorf("Init after Exit = %v", err)
	}
	if _, err := l.Connect(ConnectParams{}); !errors.Is(err, errNotInitialized) {
		t.Errorf("Connect after Exit = %v", err)
	}
	lines := log()
	if len(grepLines(lines, "VixDiskLib_InitEx ")) != 1 || len(grepLines(lines, "VixDiskLib_Exit")) != 1 {
		t.Errorf("want one InitEx and one Exit:\n%s", strings.Join(lines, "\n"))
	}
}

func TestDefaultLogger(t *testing.T) {
	defer SetLogger(testLogs.log)
	var got []string
	SetLogger(func(level, msg string) { got = append(got, level+" "+msg) })
	vddkLog(1, "careful")
	if len(got) != 1 || got[0] != "warn VDDK: careful" {
		t.Errorf("logger got %q", got)
	}
	SetLogger(nil) // slog default: must not panic
	for level := range 3 {
		vddkLog(level, "to slog")
	}
}

func TestParseCompression(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want OpenFlags
		ok   bool
	}{
		{"none", 0, true}, {"", 0, true}, {"zlib", OpenCompressionZlib, true},
		{"FastLZ", OpenCompressionFastLZ, true}, {"skipz", OpenCompressionSkipZ, true},
		{"lz4", 0, false}, {"zlib ", 0, false},
	} {
		got, err := ParseCompression(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseCompression(%q) = %v, %v", tc.in, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), "zlib, fastlz or skipz") {
			t.Errorf("error %q does not say what is accepted", err)
		}
	}
	if s := (OpenReadOnly | OpenCompressionZlib | 0x100).String(); s != "READ_ONLY|COMPRESSION_ZLIB|0x100" {
		t.Errorf("String = %q", s)
	}
	if s := OpenFlags(0).String(); s != "NONE" {
		t.Errorf("String = %q", s)
	}
}

func TestErrorIs(t *testing.T) {
	e := &Error{Op: "VixDiskLib_Open", Code: 1<<32 | CodeFileNotFound, Text: "A file was not found"}
	if got := e.Error(); got != "VixDiskLib_Open: A file was not found (VixError 4294967300)" {
		t.Errorf("Error() = %q", got)
	}
	var wrapped error = &Error{Op: "VixDiskLib_Open", Code: CodeFileNotFound, Text: "A file was not found"}
	if got := wrapped.Error(); got != "VixDiskLib_Open: A file was not found (VixError 4)" {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(e, ErrFileNotFound) || errors.Is(e, ErrInvalidArg) || errors.Is(e, ErrNotSupported) {
		t.Error("errors.Is by code is wrong")
	}
	if !errors.Is(e, &Error{Op: "VixDiskLib_Open", Code: 4}) || errors.Is(e, &Error{Op: "VixDiskLib_Read", Code: 4}) {
		t.Error("errors.Is by op is wrong")
	}
	if !errors.Is(&Error{Code: CodeNotSupported}, ErrNotSupported) {
		t.Error("VIX_E_NOT_SUPPORTED is not ErrNotSupported")
	}
}
