/* Sendense capture — fake libvixDiskLib: disks.
 *
 * Open/Close, GetInfo/FreeInfo, GetTransportMode, Read,
 * QueryAllocatedBlocks/FreeBlockList over a local file, opened O_RDWR
 * unless the disk or its connection is read-only (ReadAsync/WriteAsync/
 * Wait are in async.c, Write/Flush/Create in write.c).
 * Handles are never freed (a closed one is marked dead), so stale and
 * bogus handles get VIX_E_INVALID_HANDLE instead of a crash; calls that
 * overlap on one handle are reported (and abort under FAKEVDDK_STRICT=1).
 */
#define _GNU_SOURCE             /* SEEK_DATA, SEEK_HOLE */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fakevddk.h"

static unsigned next_handle_id;
static long long read_calls;    /* Read + ReadAsync calls in this process */
static long long write_calls;   /* Write + WriteAsync calls in this process */

int
fake_handle_valid (const struct fake_handle *h)
{
  return h != NULL && h->magic == FAKE_HANDLE_MAGIC;
}

#define handle_valid fake_handle_valid

void
fake_busy_enter (struct fake_handle *h, const char *fn)
{
  const char *expected = NULL;

  if (!__atomic_compare_exchange_n (&h->owner, &expected, fn, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    fake_violation ("calls on one VixDiskLibHandle must not overlap",
                    fn, expected);
}

void
fake_busy_leave (struct fake_handle *h)
{
  __atomic_store_n (&h->owner, NULL, __ATOMIC_RELEASE);
}

static long long
env_ll (const char *name, long long def)
{
  const char *s = getenv (name);
  char *end;
  long long v;

  if (s == NULL || *s == '\0')
    return def;
  errno = 0;
  v = strtoll (s, &end, 10);
  if (errno || *end != '\0' || v < 0) {
    fprintf (stderr, "fakevddk: ignoring bad %s=%s\n", name, s);
    return def;
  }
  return v;
}

static int
env_bool (const char *name)
{
  const char *s = getenv (name);
  return s != NULL && *s != '\0' && strcmp (s, "0") != 0;
}

/* The transport mode VDDK would pick: "file" for local disks, else the
 * first mode the caller allowed, else nbdssl.
 */
static void
choose_mode (struct fake_handle *h)
{
  const struct fake_connection *c = h->conn;
  size_t n;

  if (!c->remote) {
    snprintf (h->mode, sizeof h->mode, "file");
    return;
  }
  if (c->transports == NULL) {
    snprintf (h->mode, sizeof h->mode, "nbdssl");
    return;
  }
  n = strcspn (c->transports, ":");
  if (n >= sizeof h->mode)
    n = sizeof h->mode - 1;
  memcpy (h->mode, c->transports, n);
  h->mode[n] = '\0';
}

/* A file the fake cannot read as a disk: a hosted sparse or ESX sparse
 * extent (what qemu-img create -f vmdk makes by default), or a descriptor
 * whose flat extent is missing.  A real VDDK reads those; the fake would
 * serve their bytes as if they were the disk, so it refuses them.
 */
static const char *
unreadable_format (int fd)
{
  static const char descriptor[] = "# Disk DescriptorFile";
  char head[sizeof descriptor - 1];
  ssize_t n = pread (fd, head, sizeof head, 0);

  if (n >= 4 && memcmp (head, "KDMV", 4) == 0)
    return "a hosted sparse VMDK extent";
  if (n >= 4 && memcmp (head, "COWD", 4) == 0)
    return "an ESX sparse VMDK extent";
  if (n == (ssize_t) sizeof head && memcmp (head, descriptor, n) == 0)
    return "a VMDK descriptor without its -flat.vmdk extent";
  return NULL;
}

EXPORT VixError
VixDiskLib_Open (VixDiskLibConnection c, const char *path, uint32_t flags,
                 VixDiskLibHandle *handle)
{
  VixError err = VIX_OK;
  struct fake_handle *h = NULL;
  char *file = NULL;
  char fnames[128];
  int fd = -1, readonly;
  off_t size;
  const char *format;

  fake_clear_error ();
  fake_serial_enter ("VixDiskLib_Open");
  c = fake_conn_get (c);
  fake_flag_names (flags, fnames, sizeof fnames);
  readonly = (flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY) ||
    (fake_conn_valid (c) && c->readonly);
  if (!fake_conn_valid (c))
    err = fake_fail (VIX_E_INVALID_HANDLE, "connection %p", (void *) c);
  else if (path == NULL || handle == NULL)
    err = fake_fail (VIX_E_INVALID_ARG, "NULL %s",
                     path == NULL ? "path" : "handle");
  else if ((file = fake_map_path (c, path)) == NULL)
    err = fake_last_error ();
  else if ((fd = open (file, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC))
           == -1)
    err = fake_fail (errno == ENOENT ? VIX_E_FILE_NOT_FOUND :
                     errno == EACCES ? VIX_E_FILE_ACCESS_ERROR :
                     errno == EROFS ? VIX_E_FILE_READ_ONLY :
                     VIX_E_FILE_ERROR, "%s: %s", file, strerror (errno));
  else if ((format = unreadable_format (fd)) != NULL)
    err = fake_fail (VIX_E_NOT_SUPPORTED, "%s is %s: the fake VDDK reads "
                     "only flat VMDKs (NAME-flat.vmdk) and raw files",
                     file, format);
  else if ((size = lseek (fd, 0, SEEK_END)) == -1)
    err = fake_fail (VIX_E_FILE_ERROR, "%s: %s", file, strerror (errno));
  else if ((h = calloc (1, sizeof *h)) == NULL)
    err = fake_fail (VIX_E_OUT_OF_MEMORY, "handle");
  else {
    h->magic = FAKE_HANDLE_MAGIC;
    h->id = __atomic_add_fetch (&next_handle_id, 1, __ATOMIC_RELAXED);
    h->fd = fd;
    h->readonly = readonly;
    h->conn = c;
    h->file = file;
    h->file_size = size;
    h->capacity = (h->file_size + VIXDISKLIB_SECTOR_SIZE - 1) /
      VIXDISKLIB_SECTOR_SIZE;
    h->read_delay_us = env_ll ("FAKEVDDK_READ_DELAY_US", 0);
    h->fail_read_after = env_ll ("FAKEVDDK_FAIL_READ_AFTER", -1);
    h->fail_read_count = env_ll ("FAKEVDDK_FAIL_READ_COUNT", 1);
    h->read_latency_us = env_ll ("FAKEVDDK_READ_LATENCY_US", 0);
    h->fail_write_after = env_ll ("FAKEVDDK_FAIL_WRITE_AFTER", -1);
    h->no_query_allocated = env_bool ("FAKEVDDK_NO_QUERY_ALLOCATED");
    h->no_async = env_bool ("FAKEVDDK_NO_ASYNC");
    h->async_threads = env_ll ("FAKEVDDK_ASYNC_THREADS", 4);
    if (h->async_threads < 1)
      h->async_threads = 1;
    if (h->async_threads > 64)
      h->async_threads = 64;
    pthread_mutex_init (&h->link, NULL);
    choose_mode (h);
    *handle = h;
  }
  if (err != VIX_OK && fd >= 0)
    close (fd);

  fake_logline ("VixDiskLib_Open path=%s file=%s flags=0x%x %s%s conn=%u "
                "handle=%u result=%llu",
                fake_str (path), fake_str (file), flags, fnames,
                readonly && !(flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY) ?
                " (read-only connection)" : "",
                fake_conn_valid (c) ? c->id : 0, h ? h->id : 0,
                (unsigned long long) err);
  if (h)
    fake_vddk_log (0, "VixDiskLib: opened %s as %s (%s), %llu sectors, "
                   "transport %s", path, file,
                   readonly ? "read-only" : "read-write",
                   (unsigned long long) h->capacity, h->mode);
  else
    free (file);
  fake_serial_leave ();
  return err;
}

EXPORT VixError
VixDiskLib_Close (VixDiskLibHandle h)
{
  VixError err = VIX_OK;
  unsigned id = 0, inflight = 0, max_inflight = 0;

  fake_clear_error ();
  fake_serial_enter ("VixDiskLib_Close");
  if (!handle_valid (h))
    err = fake_fail (VIX_E_INVALID_HANDLE, "disk handle %p", (void *) h);
  else {
    fake_busy_enter (h, "VixDiskLib_Close");
    id = h->id;
    /* Reads still in flight finish first (and their callbacks run):
     * closing under them would pull the file from under the pool.
     */
    fake_pool_stop (h, &inflight, &max_inflight);
    close (h->fd);
    h->fd = -1;
    free (h->file);
    h->file = NULL;
    h->magic = FAKE_DEAD_MAGIC;
    fake_busy_leave (h);
  }
  fake_logline ("VixDiskLib_Close handle=%u inflight=%u maxinflight=%u "
                "result=%llu", id, inflight, max_inflight,
                (unsigned long long) err);
  fake_serial_leave ();
  return err;
}

static uint64_t
fnv1a (const char *s, uint64_t h)
{
  for (; *s; s++) {
    h ^= (unsigned char) *s;
    h *= 0x100000001b3ULL;
  }
  return h;
}

EXPORT VixError
VixDiskLib_GetInfo (VixDiskLibHandle h, VixDiskLibInfo **info)
{
  VixError err = VIX_OK;
  VixDiskLibInfo *inf = NULL;

  fake_clear_error ();
  if (!handle_valid (h))
    err = fake_fail (VIX_E_INVALID_HANDLE, "disk handle %p", (void *) h);
  else if (info == NULL)
    err = fake_fail (VIX_E_INVALID_ARG, "NULL info");
  else {
    fake_busy_enter (h, "VixDiskLib_GetInfo");
    inf = calloc (1, sizeof *inf);
    if (inf == NULL || (inf->uuid = malloc (48)) == NULL) {
      free (inf);
      inf = NULL;
      err = fake_fail (VIX_E_OUT_OF_MEMORY, "info");
    }
    else {
      uint64_t a = fnv1a (h->file, 0xcbf29ce484222325ULL);
      uint64_t b = fnv1a (h->file, a ^ 0x5bd1e995ULL);
      uint64_t cyl = h->capacity / (255 * 63);
      int i, n = 0;

      inf->capacity = h->capacity;
      inf->biosGeo.heads = inf->physGeo.heads = 255;
      inf->biosGeo.sectors = inf->physGeo.sectors = 63;
      inf->biosGeo.cylinders = inf->physGeo.cylinders =
        cyl > 65535 ? 65535 : (uint32_t) cyl;
      inf->adapterType = VIXDISKLIB_ADAPTER_SCSI_LSILOGIC;
      inf->numLinks = 1;
      inf->parentFileNameHint = NULL;
      inf->logicalSectorSize = VIXDISKLIB_SECTOR_SIZE;
      inf->physicalSectorSize = VIXDISKLIB_SECTOR_SIZE;
      /* VMware's ddb.uuid style: "60 00 c2 9a …-… ". */
      for (i = 0; i < 16; i++) {
        unsigned byte = (i < 8 ? a >> (8 * i) : b >> (8 * (i - 8))) & 0xff;
        n += snprintf (inf->uuid + n, 48 - n, "%s%02x",
                       i == 0 ? "" : i == 8 ? "-" : " ", byte);
      }
      *info = inf;
    }
    fake_busy_leave (h);
  }
  fake_logline ("VixDiskLib_GetInfo handle=%u capacity=%llu result=%llu",
                handle_valid (h) ? h->id : 0,
                inf ? (unsigned long long) inf->capacity : 0ULL,
                (unsigned long long) err);
  return err;
}

EXPORT void
VixDiskLib_FreeInfo (VixDiskLibInfo *info)
{
  fake_logline ("VixDiskLib_FreeInfo");
  if (info) {
    free (info->uuid);
    free (info);
  }
}

EXPORT const char *
VixDiskLib_GetTransportMode (VixDiskLibHandle h)
{
  const char *mode = handle_valid (h) ? h->mode : NULL;

  fake_logline ("VixDiskLib_GetTransportMode handle=%u mode=%s",
                handle_valid (h) ? h->id : 0, fake_str (mode));
  return mode;
}

/* The argument checks of Read and ReadAsync. */
VixError
fake_check_range (const struct fake_handle *h, uint64_t start, uint64_t num,
                  const unsigned char *buf)
{
  if (buf == NULL)
    return fake_fail (VIX_E_INVALID_ARG, "NULL buffer");
  if (start > h->capacity || num > h->capacity - start)
    return fake_fail (VIX_E_DISK_OUTOFRANGE,
                      "sectors %llu+%llu are beyond the capacity %llu of %s",
                      (unsigned long long) start, (unsigned long long) num,
                      (unsigned long long) h->capacity, h->file);
  return VIX_OK;
}

/* Number the Read/ReadAsync calls of the process that passed the checks,
 * from 1 (FAKEVDDK_FAIL_READ_AFTER counts them).
 */
long long
fake_next_read_call (void)
{
  return __atomic_add_fetch (&read_calls, 1, __ATOMIC_RELAXED);
}

/* The same for Write/WriteAsync (FAKEVDDK_FAIL_WRITE_AFTER). */
long long
fake_next_write_call (void)
{
  return __atomic_add_fetch (&write_calls, 1, __ATOMIC_RELAXED);
}

/* Read sectors [start, start+num) of h into buf, the checks passed, for
 * read call number call; the file's tail past EOF (up to the capacity)
 * reads as zeroes.  FAKEVDDK_READ_DELAY_US is paid holding h->link, so the
 * reads of one handle pay it one after another even when several are in
 * flight (the handle's connection is busy for that long: a bandwidth);
 * FAKEVDDK_READ_LATENCY_US is not (a latency that in-flight reads share).
 */
VixError
fake_read (struct fake_handle *h, uint64_t start, uint64_t num,
           unsigned char *buf, long long call)
{
  uint64_t off, len, avail, done = 0;

  if (h->fail_read_after >= 0 && call > h->fail_read_after &&
      call <= h->fail_read_after + h->fail_read_count)
    return fake_fail (VIX_E_FAIL, "injected failure of read call %lld "
                      "(FAKEVDDK_FAIL_READ_AFTER=%lld)",
                      call, h->fail_read_after);
  if (h->read_latency_us)
    usleep (h->read_latency_us);
  if (h->read_delay_us) {
    pthread_mutex_lock (&h->link);
    usleep (h->read_delay_us);
    pthread_mutex_unlock (&h->link);
  }

  off = start * VIXDISKLIB_SECTOR_SIZE;
  len = num * VIXDISKLIB_SECTOR_SIZE;
  avail = off < h->file_size ? h->file_size - off : 0;
  if (avail > len)
    avail = len;
  while (done < avail) {
    ssize_t r = pread (h->fd, buf + done, avail - done, off + done);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return fake_fail (VIX_E_FILE_ERROR, "read %s: %s",
                        h->file, strerror (errno));
    if (r == 0)
      break;                    /* the file shrank: zeroes below */
    done += r;
  }
  memset (buf + done, 0, len - done);
  return VIX_OK;
}

EXPORT VixError
VixDiskLib_Read (VixDiskLibHandle h, uint64_t start, uint64_t num,
                 unsigned char *buf)
{
  VixError err;

  fake_clear_error ();
  if (!handle_valid (h))
    err = fake_fail (VIX_E_INVALID_HANDLE, "disk handle %p", (void *) h);
  else {
    fake_busy_enter (h, "VixDiskLib_Read");
    err = fake_check_range (h, start, num, buf);
    if (err == VIX_OK)
      err = fake_read (h, start, num, buf, fake_next_read_call ());
    fake_busy_leave (h);
  }
  fake_logline ("VixDiskLib_Read handle=%u start=%llu num=%llu result=%llu",
                handle_valid (h) ? h->id : 0, (unsigned long long) start,
                (unsigned long long) num, (unsigned long long) err);
  return err;
}

/* Append sectors [s, e) to *list, merging with the last block. */
static int
add_block (VixDiskLibBlockList **list, size_t *cap, uint64_t s, uint64_t e)
{
  VixDiskLibBlockList *l = *list;
  uint32_t n = l->numBlocks;

  if (n > 0 && l->blocks[n - 1].offset + l->blocks[n - 1].length >= s) {
    uint64_t end = l->blocks[n - 1].offset + l->blocks[n - 1].length;
    if (e > end)
      l->blocks[n - 1].length = e - l->blocks[n - 1].offset;
    return 0;
  }
  if (n == *cap) {
    size_t ncap = *cap * 2;
    l = realloc (l, sizeof *l + ncap * sizeof l->blocks[0]);
    if (l == NULL)
      return -1;
    *list = l;
    *cap = ncap;
  }
  l->blocks[n].offset = s;
  l->blocks[n].length = e - s;
  l->numBlocks = n + 1;
  return 0;
}

/* Allocated chunks of [start, start+num) from SEEK_DATA/SEEK_HOLE. */
static VixError
query (struct fake_handle *h, uint64_t start, uint64_t num, uint64_t chunk,
       VixDiskLibBlockList **out)
{
  const uint64_t cb = chunk * VIXDISKLIB_SECTOR_SIZE;
  const uint64_t b0 = start * VIXDISKLIB_SECTOR_SIZE;
  const uint64_t b1 = (start + num) * VIXDISKLIB_SECTOR_SIZE;
  const uint64_t limit = b1 < h->file_size ? b1 : h->file_size;
  size_t cap = 16;
  VixDiskLibBlockList *l = malloc (sizeof *l + cap * sizeof l->blocks[0]);
  uint64_t pos = b0;

  if (l == NULL)
    return fake_fail (VIX_E_OUT_OF_MEMORY, "block list");
  l->numBlocks = 0;
  while (pos < limit) {
    off_t d = lseek (h->fd, pos, SEEK_DATA), hole;
    uint64_t s, e;

    if (d == -1 && errno == ENXIO)
      break;                    /* no data after pos */
    if (d == -1 && errno == EINVAL)
      d = pos;                  /* no SEEK_DATA here: all data */
    else if (d == -1) {
      free (l);
      return fake_fail (VIX_E_FILE_ERROR, "SEEK_DATA %s: %s",
                        h->file, strerror (errno));
    }
    if ((uint64_t) d >= limit)
      break;
    hole = lseek (h->fd, d, SEEK_HOLE);
    if (hole == -1 || hole <= d)  /* no SEEK_HOLE, or the file changed */
      hole = limit;
    s = (uint64_t) d / cb * cb;
    e = ((uint64_t) hole < limit ? (uint64_t) hole : limit);
    e = (e + cb - 1) / cb * cb;
    if (e > b1)
      e = b1;
    if (add_block (&l, &cap, s / VIXDISKLIB_SECTOR_SIZE,
                   e / VIXDISKLIB_SECTOR_SIZE) == -1) {
      free (l);
      return fake_fail (VIX_E_OUT_OF_MEMORY, "block list");
    }
    pos = hole;
  }
  *out = l;
  return VIX_OK;
}

EXPORT VixError
VixDiskLib_QueryAllocatedBlocks (VixDiskLibHandle h, uint64_t start,
                                 uint64_t num, uint64_t chunk,
                                 VixDiskLibBlockList **list)
{
  VixError err = VIX_OK;
  VixDiskLibBlockList *l = NULL;

  fake_clear_error ();
  if (!handle_valid (h))
    err = fake_fail (VIX_E_INVALID_HANDLE, "disk handle %p", (void *) h);
  else {
    fake_busy_enter (h, "VixDiskLib_QueryAllocatedBlocks");
    if (h->no_query_allocated)
      err = fake_fail (VIX_E_NOT_SUPPORTED,
                       "FAKEVDDK_NO_QUERY_ALLOCATED is set");
    else if (list == NULL)
      err = fake_fail (VIX_E_INVALID_ARG, "NULL block list");
    else if (chunk < VIXDISKLIB_MIN_CHUNK_SIZE || (chunk & (chunk - 1)))
      err = fake_fail (VIX_E_INVALID_ARG, "chunk size %llu is not a power "
                       "of two of at least %d sectors",
                       (unsigned long long) chunk, VIXDISKLIB_MIN_CHUNK_SIZE);
    else if (num == 0 || start % chunk || num % chunk)
      err = fake_fail (VIX_E_INVALID_ARG, "sectors %llu+%llu are not whole "
                       "chunks of %llu", (unsigned long long) start,
                       (unsigned long long) num, (unsigned long long) chunk);
    else if (num / chunk > VIXDISKLIB_MAX_CHUNK_NUMBER)
      err = fake_fail (VIX_E_INVALID_ARG, "%llu chunks in one call, the "
                       "limit is %d", (unsigned long long) (num / chunk),
                       VIXDISKLIB_MAX_CHUNK_NUMBER);
    else if (start > h->capacity || num > h->capacity - start)
      err = fake_fail (VIX_E_INVALID_ARG, "sectors %llu+%llu go past the "
                       "capacity %llu", (unsigned long long) start,
                       (unsigned long long) num,
                       (unsigned long long) h->capacity);
    else
      err = query (h, start, num, chunk, &l);
    if (err == VIX_OK)
      *list = l;
    fake_busy_leave (h);
  }
  fake_logline ("VixDiskLib_QueryAllocatedBlocks handle=%u start=%llu "
                "num=%llu chunk=%llu blocks=%u result=%llu",
                handle_valid (h) ? h->id : 0, (unsigned long long) start,
                (unsigned long long) num, (unsigned long long) chunk,
                l ? l->numBlocks : 0, (unsigned long long) err);
  return err;
}

EXPORT VixError
VixDiskLib_FreeBlockList (VixDiskLibBlockList *list)
{
  VixError err = VIX_OK;

  fake_clear_error ();
  if (list == NULL)
    err = fake_fail (VIX_E_INVALID_ARG, "NULL block list");
  fake_logline ("VixDiskLib_FreeBlockList result=%llu",
                (unsigned long long) err);
  free (list);
  return err;
}
