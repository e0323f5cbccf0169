/* Sendense capture — one C trampoline per VixDiskLib function (cgo cannot
 * call function pointers).  Each returns the VixError together with VDDK's
 * text for it, fetched and freed inside the same C call and thread.  The
 * calls on a disk handle are in handle.c, under the handle's mutex.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vixdisklib.h"
#include "_cgo_export.h"

#define VIX_E_NOT_SUPPORTED 6

/* An optional function that this VDDK lacks (VIX_E_NOT_SUPPORTED). */
struct vdk_ret
vdk_absent (const char *name)
{
  struct vdk_ret r = { VIX_E_NOT_SUPPORTED, NULL, NULL };
  size_t n = strlen (name) + 40;

  r.text = malloc (n);
  if (r.text)
    snprintf (r.text, n, "%s is not in this VDDK", name);
  return r;
}

/* The VixError and, on failure, a malloc'd copy of VDDK's text for it,
 * fetched on the calling thread (VDDK may keep details per thread).
 */
struct vdk_ret
vdk_result (const struct vdk_lib *l, VixError err)
{
  struct vdk_ret r = { err, NULL, NULL };

  if (err != VDK_VIX_OK && err != VDK_VIX_ASYNC) {
    char *t = l->GetErrorText (err, NULL);
    if (t) {
      r.text = strdup (t);
      l->FreeErrorText (t);
    }
  }
  return r;
}

/* The log, warning and panic functions given to InitEx: format the
 * message here (VDDK passes printf-style fmt + va_list) and hand it to Go.
 */
static void
dispatch (int level, const char *fmt, va_list ap)
{
  char buf[2048], *msg = buf;
  va_list aq;
  int n;

  va_copy (aq, ap);
  n = vsnprintf (buf, sizeof buf, fmt, aq);
  va_end (aq);
  if (n < 0)
    return;
  if ((size_t) n >= sizeof buf) {
    msg = malloc (n + 1);
    if (msg == NULL)
      msg = buf;                /* keep the truncated one */
    else {
      va_copy (aq, ap);
      vsnprintf (msg, n + 1, fmt, aq);
      va_end (aq);
    }
  }
  n = strlen (msg);
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
    msg[--n] = '\0';
  sendenseVddkLog (level, msg);
  if (msg != buf)
    free (msg);
}

static void log_info (const char *fmt, va_list ap) { dispatch (0, fmt, ap); }
static void log_warn (const char *fmt, va_list ap) { dispatch (1, fmt, ap); }
static void log_panic (const char *fmt, va_list ap) { dispatch (2, fmt, ap); }

struct vdk_ret
vdk_InitEx (const struct vdk_lib *l, const char *libDir, const char *configFile)
{
  return vdk_result (l, l->InitEx (6, 5, log_info, log_warn, log_panic,
                               libDir, configFile));
}

struct vdk_ret
vdk_Exit (const struct vdk_lib *l)
{
  l->Exit ();
  return vdk_result (l, VDK_VIX_OK);
}

struct vdk_ret
vdk_ConnectEx (const struct vdk_lib *l, const VixDiskLibConnectParams *p,
               int readOnly, const char *snapshotRef, const char *transports,
               VixDiskLibConnection *out)
{
  return vdk_result (l, l->ConnectEx (p, readOnly != 0, snapshotRef,
                                      transports, out));
}

struct vdk_ret
vdk_Disconnect (const struct vdk_lib *l, VixDiskLibConnection c)
{
  return vdk_result (l, l->Disconnect (c));
}

/* Create a disk: no progress function (VDDK allows NULL). */
struct vdk_ret
vdk_Create (const struct vdk_lib *l, VixDiskLibConnection c, const char *path,
            int diskType, int adapterType, uint16_t hwVersion,
            uint64_t capacity)
{
  VixDiskLibCreateParams p = {
    .diskType = diskType,
    .adapterType = adapterType,
    .hwVersion = hwVersion,
    .capacity = capacity,
  };

  return vdk_result (l, l->Create (c, path, &p, NULL, NULL));
}

struct vdk_ret
vdk_Open (const struct vdk_lib *l, VixDiskLibConnection c, const char *path,
          uint32_t flags, VixDiskLibHandle *out)
{
  return vdk_result (l, l->Open (c, path, flags, out));
}

/* Close of a handle that never became a struct vdk_disk. */
struct vdk_ret
vdk_Close (const struct vdk_lib *l, VixDiskLibHandle h)
{
  return vdk_result (l, l->Close (h));
}

struct vdk_ret
vdk_FreeInfo (const struct vdk_lib *l, VixDiskLibInfo *info)
{
  l->FreeInfo (info);
  return vdk_result (l, VDK_VIX_OK);
}

struct vdk_ret
vdk_FreeBlockList (const struct vdk_lib *l, VixDiskLibBlockList *list)
{
  if (l->FreeBlockList == NULL)
    return vdk_absent ("VixDiskLib_FreeBlockList");
  return vdk_result (l, l->FreeBlockList (list));
}
