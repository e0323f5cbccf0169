/* Sendense capture — fake libvixDiskLib over local files (tests only).
 *
 * This header declares the parts of VMware's VixDiskLib ABI the fake
 * implements (written from the public VDDK documentation: type sizes and
 * offsets are checked below) and the internal helpers shared by the fake's
 * source files.  See docs/fakevddk.md for the environment variables and
 * the FAKEVDDK_LOG line format.
 */
#ifndef SENDENSE_FAKEVDDK_H
#define SENDENSE_FAKEVDDK_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

/* Only the VixDiskLib_* symbols are exported from the library. */
#define HIDDEN __attribute__((visibility ("hidden")))
#define EXPORT __attribute__((visibility ("default")))

/* ---- ABI: types (x86-64) ---- */

typedef uint64_t VixError;
#define VIX_ERROR_CODE(err) ((err) & 0xFFFF)

/* Error codes used by the fake (values from VMware's vix.h). */
enum {
  VIX_OK = 0,
  VIX_E_FAIL = 1,
  VIX_E_OUT_OF_MEMORY = 2,
  VIX_E_INVALID_ARG = 3,
  VIX_E_FILE_NOT_FOUND = 4,
  VIX_E_NOT_SUPPORTED = 6,
  VIX_E_FILE_ERROR = 7,
  VIX_E_DISK_FULL = 8,
  VIX_E_FILE_READ_ONLY = 11,
  VIX_E_FILE_ALREADY_EXISTS = 12,
  VIX_E_FILE_ACCESS_ERROR = 13,
  VIX_E_INVALID_HANDLE = 1000,
  VIX_E_HOST_USER_PERMISSIONS = 3014,
  VIX_E_DISK_NOINIT = 16001,
  VIX_E_DISK_OUTOFRANGE = 16007,
  VIX_E_CANNOT_CONNECT_TO_HOST = 18000,
  VIX_ASYNC = 25000,
  VIX_E_NET_HTTP_SSL_SECURITY = 30201,
};

#define VIXDISKLIB_SECTOR_SIZE 512
#define VIXDISKLIB_MIN_CHUNK_SIZE 128
#define VIXDISKLIB_MAX_CHUNK_NUMBER (512 * 1024)

#define VIXDISKLIB_FLAG_OPEN_UNBUFFERED 1
#define VIXDISKLIB_FLAG_OPEN_SINGLE_LINK 2
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_ZLIB 16
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_FASTLZ 32
#define VIXDISKLIB_FLAG_OPEN_COMPRESSION_SKIPZ 64

#define VIXDISKLIB_CRED_UID 1
#define VIXDISKLIB_CRED_SESSIONID 2

#define VIXDISKLIB_ADAPTER_IDE 1
#define VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC 2
#define VIXDISKLIB_ADAPTER_SCSI_LSILOGIC 3
#define VIXDISKLIB_ADAPTER_SCSI_PVSCSI 4

#define VIXDISKLIB_DISK_MONOLITHIC_SPARSE 1
#define VIXDISKLIB_DISK_VMFS_SPARSE 8

typedef void VixDiskLibGenericLogFunc (const char *fmt, va_list args);
typedef void (*VixDiskLibCompletionCB) (void *data, VixError result);
typedef int (*VixDiskLibProgressFunc) (void *data, int percentCompleted);

typedef struct fake_connection *VixDiskLibConnection;
typedef struct fake_handle *VixDiskLibHandle;

typedef struct VixDiskLibConnectParams {
  char *vmxSpec;                  /* @0   "moref=vm-42" */
  char *serverName;               /* @8 */
  char *thumbPrint;               /* @16 */
  long reserved1;                 /* @24 */
  int credType;                   /* @32  1 = user/password */
  union {                         /* @40, 24 bytes */
    struct { char *userName; char *password; } uid;
    struct { char *cookie; char *userName; char *key; } sessionId;
    void *reserved2;
  } creds;
  uint32_t port;                  /* @64 */
  uint32_t nfcHostPort;           /* @68 */
  char *vimApiVer;                /* @72 */
  char reserved3[8];              /* @80 */
  void *reserved4[1];             /* @88 */
  union {                         /* @96, 24 bytes */
    struct { char *id; char *datastoreMoRef; char *ssId; } vStorageObjSpec;
  } spec;
  int specType;                   /* @120 */
} VixDiskLibConnectParams;

typedef struct VixDiskLibGeometry {
  uint32_t cylinders, heads, sectors;
} VixDiskLibGeometry;

typedef struct VixDiskLibInfo {
  VixDiskLibGeometry biosGeo;     /* @0 */
  VixDiskLibGeometry physGeo;     /* @12 */
  uint64_t capacity;              /* @24, sectors */
  int adapterType;                /* @32 */
  int numLinks;                   /* @36 */
  char *parentFileNameHint;       /* @40 */
  char *uuid;                     /* @48 */
  uint32_t logicalSectorSize;     /* @56 */
  uint32_t physicalSectorSize;    /* @60 */
} VixDiskLibInfo;

/* VixDiskLib_Create's parameters (pack 8); the sector sizes are VDDK >= 7
 * fields, not read by the fake (callers built for VDDK 6 do not pass
 * them).
 */
typedef struct VixDiskLibCreateParams {
  int diskType;                   /* @0 */
  int adapterType;                /* @4 */
  uint16_t hwVersion;             /* @8 */
  uint64_t capacity;              /* @16, sectors */
  uint32_t logicalSectorSize;     /* @24 */
  uint32_t physicalSectorSize;    /* @28 */
} VixDiskLibCreateParams;

typedef struct VixDiskLibBlock {
  uint64_t offset;                /* sectors */
  uint64_t length;                /* sectors */
} VixDiskLibBlock;

typedef struct VixDiskLibBlockList {
  uint32_t numBlocks;             /* @0 */
  VixDiskLibBlock blocks[];       /* @8 */
} VixDiskLibBlockList;

_Static_assert (sizeof (VixDiskLibConnectParams) == 128, "ConnectParams size");
_Static_assert (offsetof (VixDiskLibConnectParams, credType) == 32, "credType");
_Static_assert (offsetof (VixDiskLibConnectParams, creds) == 40, "creds");
_Static_assert (offsetof (VixDiskLibConnectParams, port) == 64, "port");
_Static_assert (offsetof (VixDiskLibConnectParams, nfcHostPort) == 68, "nfc");
_Static_assert (offsetof (VixDiskLibConnectParams, spec) == 96, "spec");
_Static_assert (offsetof (VixDiskLibConnectParams, specType) == 120, "specType");
_Static_assert (sizeof (VixDiskLibInfo) == 64, "Info size");
_Static_assert (offsetof (VixDiskLibInfo, capacity) == 24, "capacity");
_Static_assert (offsetof (VixDiskLibInfo, uuid) == 48, "uuid");
_Static_assert (offsetof (VixDiskLibBlockList, blocks) == 8, "blocks");
_Static_assert (offsetof (VixDiskLibCreateParams, hwVersion) == 8, "hwVersion");
_Static_assert (offsetof (VixDiskLibCreateParams, capacity) == 16, "capacity");

/* ---- internal state ---- */

#define FAKE_CONN_MAGIC 0x46414b45434f4e4eULL   /* "FAKECONN" */
#define FAKE_HANDLE_MAGIC 0x46414b4548444c45ULL /* "FAKEHDLE" */
#define FAKE_DEAD_MAGIC 0x4445414444454144ULL   /* "DEADDEAD" */

struct fake_connection {
  uint64_t magic;
  unsigned id;
  int remote;                 /* serverName was set */
  int readonly;               /* ConnectEx's readOnly */
  char *root;                 /* FAKEVDDK_ROOT at connect time (remote) */
  char *snapshot;             /* snapshotRef or NULL */
  char *transports;           /* transportModes or NULL */
};

/* The ReadAsync/WriteAsync machinery of one handle (async.c): a queue and
 * a few threads, started by the first request and stopped by Close.
 */
struct fake_pool;

struct fake_handle {
  uint64_t magic;
  unsigned id;
  int fd;
  int readonly;               /* opened READ_ONLY, or on a read-only connection */
  struct fake_connection *conn;
  uint64_t file_size;         /* bytes */
  uint64_t capacity;          /* sectors = ceil (file_size / 512) */
  char *file;                 /* the local file behind the disk */
  char mode[16];              /* transport mode reported */
  const char *owner;          /* function running on it (detector) */
  /* Knobs, read from the environment when the disk is opened. */
  unsigned read_delay_us;     /* serialised per handle (the link) */
  unsigned read_latency_us;   /* overlaps between reads in flight */
  long long fail_read_after;  /* -1 = off */
  long long fail_read_count;
  long long fail_write_after; /* -1 = off */
  int no_query_allocated;
  int no_async;               /* ReadAsync answers VIX_E_NOT_SUPPORTED */
  unsigned async_threads;     /* threads of the ReadAsync pool */
  pthread_mutex_t link;       /* held while paying read_delay_us */
  struct fake_pool *pool;     /* NULL until the first ReadAsync */
};

/* errors.c */
HIDDEN VixError fake_fail (VixError code, const char *fmt, ...)
  __attribute__((format (printf, 2, 3)));
HIDDEN void fake_clear_error (void);
HIDDEN VixError fake_last_error (void);
HIDDEN const char *fake_error_name (VixError code);

/* log.c */
HIDDEN void fake_logline (const char *fmt, ...)
  __attribute__((format (printf, 1, 2)));
HIDDEN void fake_vddk_log (int level, const char *fmt, ...)
  __attribute__((format (printf, 2, 3)));
HIDDEN void fake_set_log_functions (VixDiskLibGenericLogFunc *log,
                                    VixDiskLibGenericLogFunc *warn,
                                    VixDiskLibGenericLogFunc *panic);
HIDDEN const char *fake_str (const char *s);
HIDDEN void fake_flag_names (uint32_t flags, char *buf, size_t n);

/* connect.c */
HIDDEN int fake_initialized (void);
HIDDEN int fake_conn_valid (const struct fake_connection *c);
HIDDEN struct fake_connection *fake_conn_get (VixDiskLibConnection c);
HIDDEN void fake_serial_enter (const char *fn);
HIDDEN void fake_serial_leave (void);

/* disk.c */
HIDDEN int fake_handle_valid (const struct fake_handle *h);
HIDDEN void fake_busy_enter (struct fake_handle *h, const char *fn);
HIDDEN void fake_violation (const char *what, const char *fn,
                            const char *other);
HIDDEN void fake_busy_leave (struct fake_handle *h);
HIDDEN VixError fake_check_range (const struct fake_handle *h, uint64_t start,
                                  uint64_t num, const unsigned char *buf);
HIDDEN long long fake_next_read_call (void);
HIDDEN long long fake_next_write_call (void);
HIDDEN VixError fake_read (struct fake_handle *h, uint64_t start,
                           uint64_t num, unsigned char *buf, long long call);
HIDDEN VixError fake_write (struct fake_handle *h, uint64_t start,
                            uint64_t num, const unsigned char *buf,
                            long long call);
HIDDEN VixError fake_check_write (const struct fake_handle *h, uint64_t start,
                                  uint64_t num, const unsigned char *buf);

/* async.c */
HIDDEN void fake_pool_stop (struct fake_handle *h, unsigned *inflight,
                            unsigned *max_inflight);
HIDDEN unsigned fake_pool_wait (struct fake_handle *h);

/* paths.c */
HIDDEN char *fake_map_path (const struct fake_connection *c, const char *path);
HIDDEN char *fake_flat_path (const char *path);

#endif /* SENDENSE_FAKEVDDK_H */
