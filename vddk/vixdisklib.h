/* Sendense capture — the VixDiskLib ABI the vddk package uses (x86-64),
 * declared from the public VDDK documentation (see shared VDDK-ABI.md), so
 * that no VMware SDK is needed to build; and the C trampolines the Go code
 * calls (cgo cannot call function pointers).
 */
#ifndef SENDENSE_VDDK_VIXDISKLIB_H
#define SENDENSE_VDDK_VIXDISKLIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t VixError;
#define VDK_VIX_OK 0
#define VDK_VIX_ASYNC 25000
#define VDK_SECTOR_SIZE 512

typedef void VixDiskLibGenericLogFunc (const char *fmt, va_list args);
typedef void (*VixDiskLibCompletionCB) (void *data, VixError result);
typedef void *VixDiskLibConnection;
typedef void *VixDiskLibHandle;

typedef struct VixDiskLibConnectParams {
  char *vmxSpec;                  /* @0 */
  char *serverName;               /* @8 */
  char *thumbPrint;               /* @16 */
  long reserved1;                 /* @24 */
  int credType;                   /* @32 */
  union {                         /* @40, 24 bytes */
    struct { char *userName; char *password; } uid;
    struct { char *cookie; char *userName; char *key; } sessionId;
    void *reserved2;
  } creds;
  uint32_t port;                  /* @64 */
  uint32_t nfcHostPort;           /* @68 */
  char *reserved3[3];             /* @72 .. @95 */
  union {                         /* @96, 24 bytes */
    struct { char *id; char *datastoreMoRef; char *ssId; } vStorageObjSpec;
  } spec;
  int specType;                   /* @120 */
} VixDiskLibConnectParams;

#define VDK_CRED_UID 1
#define VDK_CRED_SESSIONID 2

/* VixDiskLib_Create's parameters (pack 8: capacity @16).  The sector
 * sizes are VDDK >= 7 fields; 0 means the default (512).
 */
typedef struct VixDiskLibCreateParams {
  int diskType;                   /* @0, VIXDISKLIB_DISK_* */
  int adapterType;                /* @4, VIXDISKLIB_ADAPTER_* */
  uint16_t hwVersion;             /* @8 */
  uint64_t capacity;              /* @16, in sectors */
  uint32_t logicalSectorSize;     /* @24 */
  uint32_t physicalSectorSize;    /* @28 */
} VixDiskLibCreateParams;

typedef struct VixDiskLibGeometry {
  uint32_t cylinders, heads, sectors;
} VixDiskLibGeometry;

typedef struct VixDiskLibInfo {
  VixDiskLibGeometry biosGeo;     /* @0 */
  VixDiskLibGeometry physGeo;     /* @12 */
  uint64_t capacity;              /* @24, in sectors */
  int adapterType;                /* @32 */
  int numLinks;                   /* @36 */
  char *parentFileNameHint;       /* @40 */
  char *uuid;                     /* @48 */
  uint32_t logicalSectorSize;     /* @56, VDDK >= 7 */
  uint32_t physicalSectorSize;    /* @60, VDDK >= 7 */
} VixDiskLibInfo;

typedef struct VixDiskLibBlock {
  uint64_t offset;                /* sectors */
  uint64_t length;                /* sectors */
} VixDiskLibBlock;

typedef struct VixDiskLibBlockList {
  uint32_t numBlocks;
  VixDiskLibBlock blocks[];       /* @8 */
} VixDiskLibBlockList;

_Static_assert (sizeof (VixDiskLibConnectParams) == 128, "ConnectParams");
_Static_assert (offsetof (VixDiskLibConnectParams, credType) == 32, "credType");
_Static_assert (offsetof (VixDiskLibConnectParams, creds) == 40, "creds");
_Static_assert (offsetof (VixDiskLibConnectParams, port) == 64, "port");
_Static_assert (offsetof (VixDiskLibConnectParams, nfcHostPort) == 68, "nfc");
_Static_assert (offsetof (VixDiskLibConnectParams, spec) == 96, "spec");
_Static_assert (offsetof (VixDiskLibConnectParams, specType) == 120, "spec");
_Static_assert (sizeof (VixDiskLibInfo) == 64, "Info");
_Static_assert (offsetof (VixDiskLibInfo, capacity) == 24, "capacity");
_Static_assert (offsetof (VixDiskLibInfo, uuid) == 48, "uuid");
_Static_assert (offsetof (VixDiskLibBlockList, blocks) == 8, "blocks");
_Static_assert (offsetof (VixDiskLibCreateParams, hwVersion) == 8, "hwVersion");
_Static_assert (offsetof (VixDiskLibCreateParams, capacity) == 16, "capacity");
_Static_assert (sizeof (VixDiskLibCreateParams) == 32, "CreateParams");
enum { VDK_BLOCKS_OFFSET = offsetof (VixDiskLibBlockList, blocks) };

/* One function pointer per stubs.h entry; NULL when an optional one is
 * missing.
 */
struct vdk_lib {
  void *dl;
#define REQUIRED(name, ret, params) ret (*name) params;
#define OPTIONAL(name, ret, params) ret (*name) params;
#include "stubs.h"
#undef REQUIRED
#undef OPTIONAL
};

/* VDK_FN_<name>: index of each stubs.h entry, for names and statistics. */
enum vdk_fn {
#define REQUIRED(name, ret, params) VDK_FN_##name,
#define OPTIONAL(name, ret, params) VDK_FN_##name,
#include "stubs.h"
#undef REQUIRED
#undef OPTIONAL
  VDK_FN_COUNT
};

/* What every trampoline returns: the VixError and, on failure, a malloc'd
 * copy of VDDK's text for it (GetErrorText + FreeErrorText done inside the
 * same C call), plus the call's scalar result where it has one.
 */
struct vdk_ret {
  VixError err;
  char *text;                   /* malloc'd, or NULL; caller frees */
  const char *str;              /* GetTransportMode: VDDK-owned string */
};

/* loader.c: finding and loading the library (also compiled into the C
 * front for its load check before nbdkit forks), and the connect
 * parameters.
 */
extern int vdk_find (const char *libdir, char *path, size_t pathlen,
                     char *tried, size_t triedlen);
extern int vdk_load (const char *path, struct vdk_lib **out,
                     char *errbuf, size_t errlen);
extern const char *vdk_fn_name (int fn);
extern int vdk_fn_required (int fn);
extern int vdk_fn_present (const struct vdk_lib *l, int fn);

/* The connect parameters of one connection and the strings they point
 * to, which are ours (VDDK's FreeConnectParams is never given them).
 */
struct vdk_params {
  VixDiskLibConnectParams *p;     /* AllocateConnectParams, or calloc */
  int allocated;                  /* p came from AllocateConnectParams */
  char *vmxSpec, *server, *thumbprint, *user, *password, *cookie;
};
extern struct vdk_params *vdk_params_new (const struct vdk_lib *l,
                                          const char *vmxSpec,
                                          const char *server,
                                          const char *thumbprint,
                                          const char *user,
                                          const char *password,
                                          const char *cookie,
                                          uint32_t port,
                                          uint32_t nfcHostPort);
extern void vdk_params_free (const struct vdk_lib *l, struct vdk_params *p);
extern void vdk_free_secret (char *s);

/* trampolines.c: the result of a call, and that of an absent optional
 * function; then one trampoline per function.
 */
extern struct vdk_ret vdk_result (const struct vdk_lib *l, VixError err);
extern struct vdk_ret vdk_absent (const char *name);
extern struct vdk_ret vdk_InitEx (const struct vdk_lib *l, const char *libDir,
                                  const char *configFile);
extern struct vdk_ret vdk_Exit (const struct vdk_lib *l);
extern struct vdk_ret vdk_ConnectEx (const struct vdk_lib *l,
                                     const VixDiskLibConnectParams *p,
                                     int readOnly,
                                     const char *snapshotRef,
                                     const char *transports,
                                     VixDiskLibConnection *out);
extern struct vdk_ret vdk_Disconnect (const struct vdk_lib *l,
                                      VixDiskLibConnection c);
extern struct vdk_ret vdk_Create (const struct vdk_lib *l,
                                  VixDiskLibConnection c, const char *path,
                                  int diskType, int adapterType,
                                  uint16_t hwVersion, uint64_t capacity);
extern struct vdk_ret vdk_Open (const struct vdk_lib *l, VixDiskLibConnection c,
                                const char *path, uint32_t flags,
                                VixDiskLibHandle *out);
extern struct vdk_ret vdk_Close (const struct vdk_lib *l, VixDiskLibHandle h);
extern struct vdk_ret vdk_FreeInfo (const struct vdk_lib *l,
                                    VixDiskLibInfo *info);
extern struct vdk_ret vdk_FreeBlockList (const struct vdk_lib *l,
                                         VixDiskLibBlockList *list);

/* handle.c: the calls on one disk handle, each made under the handle's
 * mutex (VDDK handles are not thread-safe).  Read and ReadAsync read num
 * sectors at start into buf; with n > 0, num is 1 and bytes [skip, skip+n)
 * of the sector are copied to buf through a bounce buffer.  Write and
 * WriteAsync write num whole sectors from buf.  The asynchronous calls
 * hold the mutex only while VDDK accepts the request and return once it
 * has completed.  Flush is Wait then Flush, both under the mutex.
 */
struct vdk_disk;
extern struct vdk_disk *vdk_disk_new (const struct vdk_lib *l,
                                      VixDiskLibHandle h);
extern void vdk_disk_free (struct vdk_disk *d);
extern VixDiskLibHandle vdk_disk_handle (const struct vdk_disk *d);
extern struct vdk_ret vdk_disk_GetInfo (struct vdk_disk *d,
                                        VixDiskLibInfo **out);
extern struct vdk_ret vdk_disk_GetTransportMode (struct vdk_disk *d);
extern struct vdk_ret vdk_disk_QueryAllocatedBlocks (struct vdk_disk *d,
                                                     uint64_t start,
                                                     uint64_t num,
                                                     uint64_t chunk,
                                                     VixDiskLibBlockList **out);
extern struct vdk_ret vdk_disk_Read (struct vdk_disk *d, uint64_t start,
                                     uint64_t num, void *buf, uint32_t skip,
                                     uint32_t n);
extern struct vdk_ret vdk_disk_ReadAsync (struct vdk_disk *d, uint64_t start,
                                          uint64_t num, void *buf,
                                          uint32_t skip, uint32_t n);
extern struct vdk_ret vdk_disk_Write (struct vdk_disk *d, uint64_t start,
                                      uint64_t num, const void *buf);
extern struct vdk_ret vdk_disk_WriteAsync (struct vdk_disk *d, uint64_t start,
                                           uint64_t num, const void *buf);
extern struct vdk_ret vdk_disk_Wait (struct vdk_disk *d);
extern struct vdk_ret vdk_disk_Flush (struct vdk_disk *d);
extern struct vdk_ret vdk_disk_Close (struct vdk_disk *d);

#endif /* SENDENSE_VDDK_VIXDISKLIB_H */
