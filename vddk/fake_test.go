package vddk

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// fakeProbe drives the fake's C ABI directly (the parts the Go package
// never calls: bad handles, bad QueryAllocatedBlocks and ReadAsync
// arguments, Wait) and prints one "name=value" line per check.
const fakeProbe = `
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vixdisklib.h"

static void nolog (const char *fmt, va_list ap) { (void) fmt; (void) ap; }
static int cb_calls; static VixError cb_result; static void *cb_data; static pthread_t cb_thread;
static void done (void *data, VixError err) {
  cb_calls++; cb_result = err; cb_data = data; cb_thread = pthread_self ();
}

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
  printf ("readasync_bad_handle=%llu\n",
          (unsigned long long) ReadAsync ((VixDiskLibHandle) buf, 0, 8, buf, done, NULL));
  printf ("readasync_no_callback=%llu\n", (unsigned long long) ReadAsync (h, 0, 8, buf, NULL, NULL));
  printf ("readasync_past_end=%llu\n",
          (unsigned long long) ReadAsync (h, info->capacity - 1, 2, buf, done, NULL));
  printf ("wait_idle=%llu\n", (unsigned long long) Wait (h));
  printf ("readasync=%llu\n", (unsigned long long) ReadAsync (h, 0, 8, buf, done, (void *) 0x1234));
  printf ("wait=%llu\n", (unsigned long long) Wait (h));
  printf ("callbacks=%d result=%llu data_ok=%d bytes=%.5s other_thread=%d\n", cb_calls,
          (unsigned long long) cb_result, cb_data == (void *) 0x1234, buf,
          !pthread_equal (cb_thread, pthread_self ()));
  memset (buf, 0xAA, 512);
  printf ("readasync_tail=%llu\n", (unsigned long long) ReadAsync (h, info->capacity - 1, 1, buf, done, NULL));
  Wait (h);
  printf ("tail=%.3s%d\n", buf, buf[511]);
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
	if out, err := exec.Command("gcc", "-Wall", "-I", wd, "-o", bin, src, "-ldl", "-lpthread").CombinedOutput(); err != nil {
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
		"readasync_bad_handle=1000\n", "readasync_no_callback=3\n", "readasync_past_end=16007\n",
		"wait_idle=0\n", "readasync=25000\n", "wait=0\n",
		"callbacks=1 result=0 data_ok=1 bytes=HELLO other_thread=1\n",
		"readasync_tail=25000\n", "tail=end0\n",
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

// asyncProbe drives the fake from several threads: "overlap" makes two
// threads call Read on one handle at once (a violation); "inflight"
// keeps ReadAsync reads in flight while calling Read (not one), then
// closes the handle with reads still in flight (Close waits for them).
const asyncProbe = `
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vixdisklib.h"

static void nolog (const char *fmt, va_list ap) { (void) fmt; (void) ap; }
static VixError (*Read) (VixDiskLibHandle, uint64_t, uint64_t, unsigned char *);
static VixDiskLibHandle h;
static int callbacks, failures;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void done (void *data, VixError err) {
  (void) data;
  pthread_mutex_lock (&mu); callbacks++; failures += err != 0; pthread_mutex_unlock (&mu);
}
static void *reader (void *arg) {
  static unsigned char b[2][512];
  Read (h, 0, 1, b[(intptr_t) arg]);
  return NULL;
}

int main (int argc, char **argv) {
  void *dl = dlopen (argv[1], RTLD_NOW);
  if (!dl) { printf ("dlopen=%s\n", dlerror ()); return 1; }
  VixError (*InitEx) (uint32_t, uint32_t, VixDiskLibGenericLogFunc *, VixDiskLibGenericLogFunc *,
                      VixDiskLibGenericLogFunc *, const char *, const char *) = dlsym (dl, "VixDiskLib_InitEx");
  VixError (*ConnectEx) (const VixDiskLibConnectParams *, char, const char *, const char *,
                         VixDiskLibConnection *) = dlsym (dl, "VixDiskLib_ConnectEx");
  VixError (*Open) (VixDiskLibConnection, const char *, uint32_t, VixDiskLibHandle *) = dlsym (dl, "VixDiskLib_Open");
  VixError (*ReadAsync) (VixDiskLibHandle, uint64_t, uint64_t, unsigned char *, VixDiskLibCompletionCB, void *) =
    dlsym (dl, "VixDiskLib_ReadAsync");
  VixError (*Wait) (VixDiskLibHandle) = dlsym (dl, "VixDiskLib_Wait");
  VixError (*Close) (VixDiskLibHandle) = dlsym (dl, "VixDiskLib_Close");
  VixDiskLibConnectParams p; memset (&p, 0, sizeof p);
  VixDiskLibConnection c = NULL;
  static unsigned char buf[16][4096], one[512];
  VixError err;
  int i, ok = 0;

  Read = dlsym (dl, "VixDiskLib_Read");
  InitEx (6, 5, nolog, nolog, nolog, NULL, NULL);
  ConnectEx (&p, 1, NULL, NULL, &c);
  if (Open (c, argv[2], 4, &h) != 0) { printf ("open failed\n"); return 1; }
  if (strcmp (argv[3], "overlap") == 0) {
    pthread_t t[2];
    for (i = 0; i < 2; i++) pthread_create (&t[i], NULL, reader, (void *) (intptr_t) i);
    for (i = 0; i < 2; i++) pthread_join (t[i], NULL);
    printf ("no abort\n");
    return 0;
  }
  for (i = 0; i < 16; i++)
    ok += ReadAsync (h, i * 8, 8, buf[i], done, NULL) == 25000;
  printf ("submitted=%d\n", ok);
  printf ("read_while_in_flight=%llu\n", (unsigned long long) Read (h, 0, 1, one));
  err = Wait (h);
  printf ("wait=%llu callbacks=%d failures=%d\n", (unsigned long long) err, callbacks, failures);
  for (i = 0; i < 16; i++)
    if (memcmp (buf[i], "sector", 6) != 0 || buf[i][6] != 'A' + i) { printf ("bad data in read %d\n", i); return 1; }
  for (i = 0; i < 16; i++)
    ReadAsync (h, i * 8, 8, buf[i], done, NULL);
  err = Close (h);
  printf ("close=%llu callbacks=%d\n", (unsigned long long) err, callbacks);
  return 0;
}
`

// The fake's ReadAsync is asynchronous and its overlap detector tells
// calls (which must not overlap) from reads in flight (which may).
func TestFakeAsync(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is not installed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "probe.c")
	os.WriteFile(src, []byte(asyncProbe), 0o644)
	bin := filepath.Join(dir, "probe")
	wd, _ := os.Getwd()
	if out, err := exec.Command("gcc", "-Wall", "-I", wd, "-o", bin, src, "-ldl", "-lpthread").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	data := map[int64][]byte{}
	for i := range 16 {
		data[int64(i)*4096] = []byte("sector" + string(rune('A'+i)))
	}
	img := writeFile(t, dir, "disk.raw", 1<<20, data)
	lib := filepath.Join(fakeLibdir, "lib64", "libvixDiskLib.so.8")
	run := func(mode string, env ...string) (string, string, error) {
		log := filepath.Join(dir, mode+".log")
		cmd := exec.Command(bin, lib, img, mode)
		cmd.Env = append([]string{"FAKEVDDK_LOG=" + log, "FAKEVDDK_STRICT=1"}, env...)
		out, err := cmd.CombinedOutput()
		l, _ := os.ReadFile(log)
		return string(out), string(l), err
	}

	// Two threads inside Read on one handle: the strict fake aborts.
	out, log, err := run("overlap", "FAKEVDDK_READ_DELAY_US=100000")
	if err == nil || !strings.Contains(out, "calls on one VixDiskLibHandle must not overlap") ||
		!strings.Contains(out, "aborting (FAKEVDDK_STRICT is set)") ||
		!strings.Contains(log, "FAKEVDDK_VIOLATION calls on one VixDiskLibHandle must not overlap fn=VixDiskLib_Read concurrent=VixDiskLib_Read") {
		t.Fatalf("overlap: %v\n%s\n%s", err, out, log)
	}

	// 16 reads of 20 ms in flight on 4 threads; a Read meanwhile is fine;
	// Wait waits for them all; Close waits for those still in flight.
	out, log, err = run("inflight", "FAKEVDDK_READ_LATENCY_US=20000", "FAKEVDDK_ASYNC_THREADS=4")
	if err != nil {
		t.Fatalf("inflight: %v\n%s\n%s", err, out, log)
	}
	for _, want := range []string{
		"submitted=16\n", "read_while_in_flight=0\n", "wait=0 callbacks=16 failures=0\n", "close=0 callbacks=32\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inflight probe output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(log, "FAKEVDDK_VIOLATION") {
		t.Errorf("reads in flight reported as overlapping calls:\n%s", log)
	}
	if !regexp.MustCompile(`VixDiskLib_Wait handle=1 completed=16 result=0`).MatchString(log) ||
		!regexp.MustCompile(`VixDiskLib_Close handle=1 inflight=([1-9]|1[0-6]) maxinflight=1[0-6] result=0`).MatchString(log) {
		t.Errorf("Wait or Close line wrong:\n%s", log)
	}
}

// peerProbe uses the fake as nbdkit-vddk-plugin 1.32 does: resolve the
// functions it requires by name, connect with parameters from
// AllocateConnectParams pointing at strings it does not own (argv) and
// give them back with FreeConnectParams, create a disk, write it with
// Write and WriteAsync, Wait, Flush, read it back, query its allocation,
// close and exit. The strict fake aborts on any misuse; a FreeConnectParams
// that freed the strings would crash on the static ones.
const peerProbe = `
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vixdisklib.h"

static void nolog (const char *fmt, va_list ap) { (void) fmt; (void) ap; }
static int done_calls; static VixError done_err;
static void done (void *data, VixError err) { (void) data; done_calls++; if (err) done_err = err; }
static char user[] = "root", vm[] = "moref=vm-1";

int main (int argc, char **argv) {
  static const char *required[] = {
    "VixDiskLib_InitEx", "VixDiskLib_Exit", "VixDiskLib_GetErrorText", "VixDiskLib_FreeErrorText",
    "VixDiskLib_FreeConnectParams", "VixDiskLib_ConnectEx", "VixDiskLib_Open",
    "VixDiskLib_GetTransportMode", "VixDiskLib_Close", "VixDiskLib_Disconnect", "VixDiskLib_GetInfo",
    "VixDiskLib_FreeInfo", "VixDiskLib_Read", "VixDiskLib_Write", "VixDiskLib_Flush",
    "VixDiskLib_ReadAsync", "VixDiskLib_WriteAsync", "VixDiskLib_Wait", "VixDiskLib_Create",
    "VixDiskLib_AllocateConnectParams", "VixDiskLib_QueryAllocatedBlocks", "VixDiskLib_FreeBlockList",
  };
  void *dl = dlopen (argv[1], RTLD_NOW);
  size_t i;
  if (!dl) { printf ("dlopen=%s\n", dlerror ()); return 1; }
  for (i = 0; i < sizeof required / sizeof required[0]; i++)
    if (!dlsym (dl, required[i])) { printf ("missing=%s\n", required[i]); return 1; }
#define F(name, ret, args) ret (*name) args = (ret (*) args) dlsym (dl, "VixDiskLib_" #name)
  F (InitEx, VixError, (uint32_t, uint32_t, VixDiskLibGenericLogFunc *, VixDiskLibGenericLogFunc *,
                           VixDiskLibGenericLogFunc *, const char *, const char *));
  F (Exit, void, (void));
  F (AllocateConnectParams, VixDiskLibConnectParams *, (void));
  F (FreeConnectParams, void, (VixDiskLibConnectParams *));
  F (ConnectEx, VixError, (const VixDiskLibConnectParams *, char, const char *, const char *, VixDiskLibConnection *));
  F (Create, VixError, (VixDiskLibConnection, const char *, const VixDiskLibCreateParams *, void *, void *));
  F (Open, VixError, (VixDiskLibConnection, const char *, uint32_t, VixDiskLibHandle *));
  F (GetInfo, VixError, (VixDiskLibHandle, VixDiskLibInfo **));
  F (FreeInfo, void, (VixDiskLibInfo *));
  F (Write, VixError, (VixDiskLibHandle, uint64_t, uint64_t, const unsigned char *));
  F (WriteAsync, VixError, (VixDiskLibHandle, uint64_t, uint64_t, const unsigned char *, VixDiskLibCompletionCB, void *));
  F (Read, VixError, (VixDiskLibHandle, uint64_t, uint64_t, unsigned char *));
  F (ReadAsync, VixError, (VixDiskLibHandle, uint64_t, uint64_t, unsigned char *, VixDiskLibCompletionCB, void *));
  F (Wait, VixError, (VixDiskLibHandle));
  F (Flush, VixError, (VixDiskLibHandle));
  F (QueryAllocatedBlocks, VixError, (VixDiskLibHandle, uint64_t, uint64_t, uint64_t, VixDiskLibBlockList **));
  F (FreeBlockList, VixError, (VixDiskLibBlockList *));
  F (Close, VixError, (VixDiskLibHandle));
  F (Disconnect, VixError, (VixDiskLibConnection));
  VixDiskLibConnectParams *p;
  VixDiskLibConnection c;
  VixDiskLibHandle h;
  VixDiskLibInfo *info;
  VixDiskLibBlockList *bl;
  VixDiskLibCreateParams cp = { .diskType = 1, .adapterType = 2, .hwVersion = 4, .capacity = 2048 };
  static unsigned char w[65536], r[65536];

  memset (w, 'W', sizeof w);
  printf ("init=%llu\n", (unsigned long long) InitEx (6, 5, nolog, nolog, nolog, argv[3], NULL));
  p = AllocateConnectParams ();
  /* Strings that are not the fake's (static, argv), as nbdkit's; no
   * serverName: a local connection.
   */
  p->vmxSpec = vm; p->credType = 1;
  p->creds.uid.userName = user; p->creds.uid.password = argv[4];
  printf ("connect=%llu\n", (unsigned long long) ConnectEx (p, 0, NULL, NULL, &c));
  printf ("create=%llu\n", (unsigned long long) Create (c, argv[2], &cp, NULL, NULL));
  printf ("open=%llu\n", (unsigned long long) Open (c, argv[2], 0, &h));
  GetInfo (h, &info); printf ("capacity=%llu\n", (unsigned long long) info->capacity); FreeInfo (info);
  printf ("write=%llu\n", (unsigned long long) Write (h, 0, 128, w));
  printf ("writeasync=%llu\n", (unsigned long long) WriteAsync (h, 1024, 128, w, done, NULL));
  printf ("wait=%llu\n", (unsigned long long) Wait (h));
  printf ("flush=%llu\n", (unsigned long long) Flush (h));
  printf ("readasync=%llu\n", (unsigned long long) ReadAsync (h, 1024, 128, r, done, NULL));
  Wait (h);
  printf ("async done=%d err=%llu same=%d\n", done_calls, (unsigned long long) done_err, memcmp (r, w, sizeof r) == 0);
  printf ("read=%llu same=%d\n", (unsigned long long) Read (h, 0, 128, r), memcmp (r, w, sizeof r) == 0);
  printf ("query=%llu", (unsigned long long) QueryAllocatedBlocks (h, 0, 2048, 128, &bl));
  printf (" blocks=%u first=%llu+%llu\n", bl->numBlocks, (unsigned long long) bl->blocks[0].offset,
          (unsigned long long) bl->blocks[0].length);
  FreeBlockList (bl);
  printf ("close=%llu\n", (unsigned long long) Close (h));
  printf ("disconnect=%llu\n", (unsigned long long) Disconnect (c));
  FreeConnectParams (p);
  Exit ();
  printf ("end\n");
  return 0;
}
`

func TestFakeAsNbdkitVddkUsesIt(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is not installed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "probe.c")
	os.WriteFile(src, []byte(peerProbe), 0o644)
	bin := filepath.Join(dir, "probe")
	wd, _ := os.Getwd()
	if out, err := exec.Command("gcc", "-Wall", "-I", wd, "-o", bin, src, "-ldl").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	log := filepath.Join(dir, "log")
	cmd := exec.Command(bin, filepath.Join(fakeLibdir, "lib64", "libvixDiskLib.so.8"), filepath.Join(dir, "new.vmdk"), fakeLibdir, "pw")
	cmd.Env = []string{"FAKEVDDK_LOG=" + log, "FAKEVDDK_STRICT=1"}
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	for _, want := range []string{
		"init=0\n", "connect=0\n", "create=0\n", "open=0\n", "capacity=2048\n", "write=0\n",
		"writeasync=25000\n", "wait=0\n", "flush=0\n", "readasync=25000\n", "async done=2 err=0 same=1\n",
		"read=0 same=1\n", "query=0 blocks=2 first=0+128\n", "close=0\n", "disconnect=0\n", "end\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("probe output lacks %q:\n%s", want, out)
		}
	}
	if l, _ := os.ReadFile(log); strings.Contains(string(l), "VIOLATION") {
		t.Errorf("violations:\n%s", l)
	}
}
