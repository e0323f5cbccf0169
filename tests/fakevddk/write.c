/* Sendense capture — fake libvixDiskLib: Write, Flush and Create.
 *
 * Write (and WriteAsync, in async.c) pwrite whole sectors to the disk's
 * file; writing past the capacity is VIX_E_DISK_OUTOFRANGE, on a read-only
 * disk VIX_E_FILE_READ_ONLY, and a full file system VIX_E_DISK_FULL.
 * Flush waits for the handle's asynchronous requests and fsyncs the file.
 * Create makes a local disk the way VMware's monolithicFlat layout does:
 * a descriptor PATH (text) and a sparse PATH-flat.vmdk of the capacity,
 * whatever type was asked (the type is recorded in the descriptor); it
 * never replaces an existing file, and remote connections cannot create
 * (VDDK creates hosted disks only).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fakevddk.h"

/* The checks of Write and WriteAsync. */
VixError
fake_check_write (const struct fake_handle *h, uint64_t start, uint64_t num,
                  const unsigned char *buf)
{
  if (h->readonly)
    return fake_fail (VIX_E_FILE_READ_ONLY, "%s is open read-only",
                      h->file);
  return fake_check_range (h, start, num, buf);
}

/* Write sectors [start, start+num) of h from buf, the checks passed, for
 * write call number call.
 */
VixError
fake_write (struct fake_handle *h, uint64_t start, uint64_t num,
            const unsigned char *buf, long long call)
{
  uint64_t off = start * VIXDISKLIB_SECTOR_SIZE;
  uint64_t len = num * VIXDISKLIB_SECTOR_SIZE, done = 0;

  if (h->fail_write_after >= 0 && call > h->fail_write_after)
    return fake_fail (VIX_E_DISK_FULL, "injected failure of write call "
                      "%lld: no space left on the datastore "
                      "(FAKEVDDK_FAIL_WRITE_AFTER=%lld)",
                      call, h->fail_write_after);
  while (done < len) {
    ssize_t r = pwrite (h->fd, buf + done, len - done, off + done);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return fake_fail (errno == ENOSPC || errno == EDQUOT ||
                        errno == EFBIG ? VIX_E_DISK_FULL : VIX_E_FILE_ERROR,
                        "write %s: %s", h->file, strerror (errno));
    done += r;
  }
  return VIX_OK;
}

EXPORT VixError
VixDiskLib_Write (VixDiskLibHandle h, uint64_t start, uint64_t num,
                  const unsigned char *buf)
{
  VixError err;

  fake_clear_error ();
  if (!fake_handle_valid (h))
    err = fake_fail (VIX_E_INVALID_HANDLE, "disk handle %p", (void *) h);
  else {
    fake_busy_enter (h, "VixDiskLib_Write");
    err = fake_check_write (h, start, num, buf);
    if (err == VIX_OK)
      err = fake_write (h, start, num, buf, fake_next_write_call ());
    fake_busy_leave (h);
  }
  fake_logline ("VixDiskLib_Write handle=%u start=%llu num=%llu result=%llu",
                fake_handle_valid (h) ? h->id : 0, (unsigned long long) start,
                (unsigned long long) num, (unsigned long long) err);
  return err;
}

EXPORT VixError
VixDiskLib_Flush (VixDiskLibHandle h)
{
  VixError err = VIX_OK;
  unsigned waited = 0;

  fake_clear_error ();
  if (!fake_handle_valid (h))
    err = fake_fail (VIX_E_INVALID_HANDLE, "disk handle %p", (void *) h);
  else {
    fake_busy_enter (h, "VixDiskLib_Flush");
    waited = fake_pool_wait (h);
    if (!h->readonly && fsync (h->fd) == -1)
      err = fake_fail (errno == ENOSPC ? VIX_E_DISK_FULL : VIX_E_FILE_ERROR,
                       "fsync %s: %s", h->file, strerror (errno));
    fake_busy_leave (h);
  }
  fake_logline ("VixDiskLib_Flush handle=%u waited=%u result=%llu",
                fake_handle_valid (h) ? h->id : 0, waited,
                (unsigned long long) err);
  return err;
}

/* VMDK names of the disk types and adapters (index = VIXDISKLIB value). */
static const char *const type_names[] = {
  NULL, "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat", "vmfs", "streamOptimized", "vmfsThin", "vmfsSparse",
};
static const char *const adapter_names[] = {
  NULL, "ide", "buslogic", "lsilogic", "pvscsi",
};

static VixError
errno_error (int e)
{
  return e == EEXIST ? VIX_E_FILE_ALREADY_EXISTS :
    e == ENOENT ? VIX_E_FILE_NOT_FOUND :
    e == EACCES || e == EPERM ? VIX_E_FILE_ACCESS_ERROR :
    e == EROFS ? VIX_E_FILE_READ_ONLY :
    e == ENOSPC || e == EDQUOT || e == EFBIG ? VIX_E_DISK_FULL :
    VIX_E_FILE_ERROR;
}

/* Write the descriptor of a monolithicFlat disk of cap sectors whose data
 * is in flat (a path; only its base name is written).
 */
static int
write_descriptor (int fd, const char *flat,
                  const VixDiskLibCreateParams *p)
{
  const char *base = strrchr (flat, '/');
  unsigned heads = p->adapterType == VIXDISKLIB_ADAPTER_IDE ? 16 : 255;
  uint64_t cyl = p->capacity / (heads * 63);
  char buf[2048];
  int n;

  n = snprintf (buf, sizeof buf,
                "# Disk DescriptorFile\n"
                "version=1\n"
                "encoding=\"UTF-8\"\n"
                "CID=fffffffe\n"
                "parentCID=ffffffff\n"
                "createType=\"monolithicFlat\"\n"
                "\n"
                "# Extent description\n"
                "RW %llu FLAT \"%s\" 0\n"
                "\n"
                "# The Disk Data Base\n"
                "#DDB\n"
                "\n"
                "ddb.adapterType = \"%s\"\n"
                "ddb.geometry.cylinders = \"%llu\"\n"
                "ddb.geometry.heads = \"%u\"\n"
                "ddb.geometry.sectors = \"63\"\n"
                "ddb.virtualHWVersion = \"%u\"\n"
                "ddb.fakevddk.createType = \"%s\"\n",
                (unsigned long long) p->capacity, base ? base + 1 : flat,
                adapter_names[p->adapterType],
                (unsigned long long) (cyl > 16383 ? 16383 : cyl), heads,
                (unsigned) p->hwVersion, type_names[p->diskType]);
  return n > 0 && (size_t) n < sizeof buf && write (fd, buf, n) == n ? 0 : -1;
}

EXPORT VixError
VixDiskLib_Create (VixDiskLibConnection c, const char *path,
                   const VixDiskLibCreateParams *p,
                   VixDiskLibProgressFunc progress, void *progressData)
{
  VixError err = VIX_OK;
  char *flat = NULL;
  int dfd = -1, ffd = -1;

  fake_clear_error ();
  c = fake_conn_get (c);
  if (!fake_conn_valid (c))
    err = fake_fail (VIX_E_INVALID_HANDLE, "connection %p", (void *) c);
  else if (path == NULL || p == NULL)
    err = fake_fail (VIX_E_INVALID_ARG, "NULL %s",
                     path == NULL ? "path" : "createParams");
  else if (c->remote)
    err = fake_fail (VIX_E_NOT_SUPPORTED, "%s: VixDiskLib_Create creates "
                     "local disks only (create a local disk and clone it)",
                     path);
  else if (c->readonly)
    err = fake_fail (VIX_E_INVALID_ARG, "%s: the connection is read-only",
                     path);
  else if (path[0] != '/')
    err = fake_fail (VIX_E_INVALID_ARG, "%s is not an absolute path", path);
  else if (p->capacity == 0)
    err = fake_fail (VIX_E_INVALID_ARG, "%s: capacity 0", path);
  else if (p->diskType < VIXDISKLIB_DISK_MONOLITHIC_SPARSE ||
           p->diskType > VIXDISKLIB_DISK_VMFS_SPARSE)
    err = fake_fail (VIX_E_INVALID_ARG, "%s: unknown disk type %d",
                     path, p->diskType);
  else if (p->adapterType < VIXDISKLIB_ADAPTER_IDE ||
           p->adapterType > VIXDISKLIB_ADAPTER_SCSI_PVSCSI)
    err = fake_fail (VIX_E_INVALID_ARG, "%s: unknown adapter type %d",
                     path, p->adapterType);
  else if ((flat = fake_flat_path (path)) == NULL)
    err = fake_last_error ();
  else if ((dfd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                        0644)) == -1)
    err = fake_fail (errno_error (errno), "%s: %s", path, strerror (errno));
  else if ((ffd = open (flat, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                        0644)) == -1) {
    err = fake_fail (errno_error (errno), "%s: %s", flat, strerror (errno));
    unlink (path);
  }
  else if (ftruncate (ffd, p->capacity * VIXDISKLIB_SECTOR_SIZE) == -1 ||
           write_descriptor (dfd, flat, p) == -1 ||
           fsync (dfd) == -1) {
    err = fake_fail (errno_error (errno), "creating %s: %s", path,
                     strerror (errno));
    unlink (flat);
    unlink (path);
  }
  if (dfd >= 0)
    close (dfd);
  if (ffd >= 0)
    close (ffd);
  if (err == VIX_OK && progress)
    progress (progressData, 100);

  fake_logline ("VixDiskLib_Create path=%s file=%s type=%d adapter=%d "
                "hwVersion=%u capacity=%llu result=%llu",
                fake_str (path), fake_str (flat), p ? p->diskType : 0,
                p ? p->adapterType : 0, p ? (unsigned) p->hwVersion : 0,
                p ? (unsigned long long) p->capacity : 0ULL,
                (unsigned long long) err);
  free (flat);
  return err;
}
