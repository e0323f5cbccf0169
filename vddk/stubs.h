/* Sendense capture — the VixDiskLib functions the vddk package uses, each
 * listed once (the idea of nbdkit's vddk-stubs.h).
 *
 * REQUIRED(name, return type, parameter list): Load fails without it.
 * OPTIONAL(name, return type, parameter list): may be absent (NULL); the
 * feature that needs it reports ErrNotSupported or falls back.
 *
 * name is the symbol without its "VixDiskLib_" prefix.  This file is
 * expanded several times (function pointers, dlsym loop, names, ids), so
 * it has no include guard.
 */
REQUIRED (InitEx, VixError,
          (uint32_t major, uint32_t minor, VixDiskLibGenericLogFunc *log,
           VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic,
           const char *libDir, const char *configFile))
REQUIRED (Exit, void, (void))
REQUIRED (GetErrorText, char *, (VixError err, const char *locale))
REQUIRED (FreeErrorText, void, (char *text))
REQUIRED (ConnectEx, VixError,
          (const VixDiskLibConnectParams *params, char readOnly,
           const char *snapshotRef, const char *transportModes,
           VixDiskLibConnection *connection))
REQUIRED (Disconnect, VixError, (VixDiskLibConnection connection))
REQUIRED (Open, VixError,
          (VixDiskLibConnection connection, const char *path,
           uint32_t flags, VixDiskLibHandle *handle))
REQUIRED (Close, VixError, (VixDiskLibHandle handle))
REQUIRED (GetInfo, VixError, (VixDiskLibHandle handle, VixDiskLibInfo **info))
REQUIRED (FreeInfo, void, (VixDiskLibInfo *info))
REQUIRED (Read, VixError,
          (VixDiskLibHandle handle, uint64_t start, uint64_t num,
           unsigned char *buf))
OPTIONAL (GetTransportMode, const char *, (VixDiskLibHandle handle))
OPTIONAL (ReadAsync, VixError,
          (VixDiskLibHandle handle, uint64_t start, uint64_t num,
           unsigned char *buf, VixDiskLibCompletionCB cb, void *data))
OPTIONAL (Wait, VixError, (VixDiskLibHandle handle))
OPTIONAL (QueryAllocatedBlocks, VixError,
          (VixDiskLibHandle handle, uint64_t start, uint64_t num,
           uint64_t chunkSize, VixDiskLibBlockList **list))
OPTIONAL (FreeBlockList, VixError, (VixDiskLibBlockList *list))
