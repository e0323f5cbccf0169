/* Sendense capture — the VixDiskLib functions, each listed once (the idea
 * of nbdkit's vddk-stubs.h).  This one list feeds the vddk package's
 * loader, trampolines and statistics, the C front's load check before
 * nbdkit forks and its --dump-plugin lines, and the test that the fake
 * VDDK (tests/fakevddk) exports every one of them.
 *
 * REQUIRED(name, return type, parameter list): every VDDK >= 6.5 has it
 * (nbdkit-vddk-plugin 1.32 requires the same ones, plus Create and the
 * connect parameter functions); loading fails without it.
 * OPTIONAL(name, return type, parameter list): added in VDDK 6.7; may be
 * absent (NULL), and the feature that needs it falls back (extents report
 * everything as data; connect parameters are calloc'd).
 *
 * name is the symbol without its "VixDiskLib_" prefix.  This file is
 * expanded several times, so it has no include guard.  The parameter
 * lists name VDDK types (vixdisklib.h); a use that only needs the names
 * may expand them to nothing.
 */
REQUIRED (InitEx, VixError,
          (uint32_t major, uint32_t minor, VixDiskLibGenericLogFunc *log,
           VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic,
           const char *libDir, const char *configFile))
REQUIRED (Exit, void, (void))
REQUIRED (GetErrorText, char *, (VixError err, const char *locale))
REQUIRED (FreeErrorText, void, (char *text))
REQUIRED (FreeConnectParams, void, (VixDiskLibConnectParams *params))
REQUIRED (ConnectEx, VixError,
          (const VixDiskLibConnectParams *params, char readOnly,
           const char *snapshotRef, const char *transportModes,
           VixDiskLibConnection *connection))
REQUIRED (Disconnect, VixError, (VixDiskLibConnection connection))
REQUIRED (Create, VixError,
          (VixDiskLibConnection connection, const char *path,
           const VixDiskLibCreateParams *params, void *progressFunc,
           void *progressData))
REQUIRED (Open, VixError,
          (VixDiskLibConnection connection, const char *path,
           uint32_t flags, VixDiskLibHandle *handle))
REQUIRED (Close, VixError, (VixDiskLibHandle handle))
REQUIRED (GetInfo, VixError, (VixDiskLibHandle handle, VixDiskLibInfo **info))
REQUIRED (FreeInfo, void, (VixDiskLibInfo *info))
REQUIRED (GetTransportMode, const char *, (VixDiskLibHandle handle))
REQUIRED (Read, VixError,
          (VixDiskLibHandle handle, uint64_t start, uint64_t num,
           unsigned char *buf))
REQUIRED (Write, VixError,
          (VixDiskLibHandle handle, uint64_t start, uint64_t num,
           const unsigned char *buf))
REQUIRED (ReadAsync, VixError,
          (VixDiskLibHandle handle, uint64_t start, uint64_t num,
           unsigned char *buf, VixDiskLibCompletionCB cb, void *data))
REQUIRED (WriteAsync, VixError,
          (VixDiskLibHandle handle, uint64_t start, uint64_t num,
           const unsigned char *buf, VixDiskLibCompletionCB cb, void *data))
REQUIRED (Wait, VixError, (VixDiskLibHandle handle))
REQUIRED (Flush, VixError, (VixDiskLibHandle handle))
OPTIONAL (AllocateConnectParams, VixDiskLibConnectParams *, (void))
OPTIONAL (QueryAllocatedBlocks, VixError,
          (VixDiskLibHandle handle, uint64_t start, uint64_t num,
           uint64_t chunkSize, VixDiskLibBlockList **list))
OPTIONAL (FreeBlockList, VixError, (VixDiskLibBlockList *list))
