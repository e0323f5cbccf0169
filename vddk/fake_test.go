package vddk

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeProbe drives the fake's C ABI directly (the parts the Go package
// never calls: ReadAsync/Wait, bad handles, bad QueryAllocatedBlocks
// arguments) and prints one "name=value" line per check.
const fakeProbe = `
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vixdisklib.h"

static void nolog (const char *fmt, va_list ap) { (void) fmt; (void) ap; }
static int cb_calls; static VixError cb_result; static void *cb_data;
static void done (void *data, VixError err) { cb_calls++; cb_result = err; cb_data = data; }

int main (int argc, char **argv) {
  void *dl = dlopen (argv[1], RTLD_NOW);
  if (!dl) { printf ("dlopen=%s\n", dlerror ()); return 1; }
  VixError (*InitEx) (uint32_t, uint32_t, VixDiskLibGenericLogFunc *, VixDiskLibGenericLogFunc *,
                      VixDiskLibGenericLogFunc *, const char *, const char *) = dlsym (dl, "VixDiskLib_InitEx");
  VixError (*ConnectEx) (const VixDiskLibConnectParams *, char, const char *, const char *,
                         VixDiskLibConnection *) = dlsym (dl, "VixDiskLib_ConnectEx");
  VixError (*Open) (VixDiskLibConnection, const char *, uint32_t, VixDiskLibHandle *) = dlsym (dl, "VixDiskLib_Open");
  VixError (*Read) (VixDiskLibHandle, uint64_t, uint64_t, unsigned char *) = dlsym (dl, "VixDiskLib_Read");
  VixError (*ReadAsync) (VixDiskLibHandle, uint64_t, uint64_t, unsigned char *, VixDiskLibCompletionCB, void *) =
    dlsym (dl, "VixDiskLib_ReadAsync");
  VixError (*Wait) (VixDiskLibHandle) = dlsym (dl, "VixDiskLib_Wait");
  VixError (*Query) (VixDiskLibHandle, uint64_t, uint64_t, uint64_t, VixDiskLibBlockList **) =
    dlsym (dl, "VixDiskLib_QueryAllocatedBlocks");
  VixError (*Close) (VixDiskLibHandle) = dlsym (dl, "VixDiskLib_Close");
  VixError (*Disconnect) (VixDiskLibConnection) = dlsym (dl, "VixDiskLib_Disconnect");
  VixError (*GetInfo) (VixDiskLibHandle, VixDiskLibInfo **) = dlsym (dl, "VixDiskLib_GetInfo");
  char *(*GetErrorText) (VixError, const char *) = dlsym (dl, "VixDiskLib_GetErrorText");
  VixDiskLibConnectParams p; memset (&p, 0, sizeof p);
  VixDiskLibConnection c = NULL; VixDiskLibHandle h = NULL; VixDiskLibBlockList *bl = NULL;
  VixDiskLibInfo *info = NULL;
  static unsigned char buf[1 << 20];
  char *t;

  printf ("connect_noinit=%llu\n", (unsigned long long) ConnectEx (&p, 1, NULL, NULL, &c));
  printf ("init=%llu\n", (unsigned long long) InitEx (6, 5, nolog, nolog, nolog, NULL, NULL));
  printf ("connect=%llu\n", (unsigned long long) ConnectEx (&p, 1, NULL, NULL, &c));
  printf ("open=%llu\n", (unsigned long long) Open (c, argv[2], 4, &h));
  GetInfo (h, &info);
  printf ("capacity=%llu\n", (unsigned long long) info->capacity);
  printf ("uuid=%s\n", info->uuid);
  printf ("read_bad_handle=%llu\n", (unsigned long long) Read ((VixDiskLibHandle) buf, 0, 1, buf));
  printf ("read_past_end=%llu\n", (unsigned long long) Read (h, info->capacity - 1, 2, buf));
  t = GetErrorText (16007, NULL); printf ("text_16007=%s\n", t);
  printf ("read_last=%llu\n", (unsigned long long) Read (h, info->capacity - 1, 1, buf));
  printf ("query_chunk64=%llu\n", (unsigned long long) Query (h, 0, 128, 64, &bl));
  printf ("query_chunk192=%llu\n", (unsigned long long) Query (h, 0, 384, 192, &bl));
  printf ("query_unaligned_start=%llu\n", (unsigned long long) Query (h, 64, 128, 128, &bl));
  printf ("query_unaligned_num=%llu\n", (unsigned long long) Query (h, 0, 200, 128, &bl));
  printf ("query_too_many=%llu\n", (unsigned long long) Query (h, 0, (512ULL * 1024 + 1) * 128, 128, &bl));
  printf ("query_past_end=%llu\n", (unsigned long long) Query (h, 0, (info->capacity + 127) / 128 * 128, 128, &bl));
  printf ("query_ok=%llu\n", (unsigned long long) Query (h, 0, info->capacity / 128 * 128, 128, &bl));
  printf ("query_blocks=%u first=%llu+%llu\n", bl->numBlocks,
          (unsigned long long) bl->blocks[0].offset, (unsigned long long) bl->blocks[0].length);
  memset (buf, 0, sizeof buf);
  printf ("readasync=%llu\n", (unsigned long long) ReadAsync (h, 0, 8, buf, done, (void *) 0x1234));
  printf ("callbacks_before_wait=%d\n", cb_calls);
  printf ("wait=%llu\n", (unsigned long long) Wait (h));
  printf ("callbacks=%d result=%llu data_ok=%d bytes=%.5s\n", cb_calls, (unsigned long long) cb_result,
          cb_data == (void *) 0x1234, buf);
  printf ("close=%llu\n", (unsigned long long) Close (h));
  printf ("read_after_close=%llu\n", (unsigned long long) Read (h, 0, 1, buf));
  printf ("close_again=%llu\n", (unsigned long long) Close (h));
  printf ("disconnect=%llu\n", (unsigned long long) Disconnect (c));
  printf ("disconnect_again=%llu\n", (unsigned long long) Disconnect (c));
  return 0;
}
`

func TestFakeABI(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is not installed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "probe.c")
	os.WriteFile(src, []byte(fakeProbe), 0o644)
	bin := filepath.Join(dir, "probe")
	wd, _ := os.Getwd()
	if out, err := exec.Command("gcc", "-Wall", "-I", wd, "-o", bin, src, "-ldl").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	// 300 KiB + 10: data at the start, a hole, data at the end.
	img := writeFile(t, dir, "disk.raw", 300<<10+10, map[int64][]byte{0: []byte("HELLO world"), 300 << 10: []byte("end")})
	cmd := exec.Command(bin, filepath.Join(fakeLibdir, "lib64", "libvixDiskLib.so.8"), img)
	cmd.Env = []string{"FAKEVDDK_LOG=" + filepath.Join(dir, "log")}
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	for _, want := range []string{
		"connect_noinit=16001\n", "init=0\n", "connect=0\n", "open=0\n",
		"capacity=601\n",
		"read_bad_handle=1000\n", "read_past_end=16007\n",
		"text_16007=The requested sectors are out of range: sectors 600+2 are beyond the capacity 601",
		"read_last=0\n",
		"query_chunk64=3\n", "query_chunk192=3\n", "query_unaligned_start=3\n", "query_unaligned_num=3\n",
		"query_too_many=3\n", "query_past_end=3\n", "query_ok=0\n", "query_blocks=1 first=0+128\n",
		"readasync=25000\n", "callbacks_before_wait=0\n", "wait=0\n",
		"callbacks=1 result=0 data_ok=1 bytes=HELLO\n",
		"close=0\n", "read_after_close=1000\n", "close_again=1000\n", "disconnect=0\n", "disconnect_again=1000\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("probe output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "uuid=") || len(strings.SplitN(strings.SplitN(out, "uuid=", 2)[1], "\n", 2)[0]) != 47 {
		t.Errorf("bad uuid in:\n%s", out)
	}
}
