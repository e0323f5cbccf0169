/* Thin C wrappers over libnbd for package nbd: see wrappers.h. */

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "wrappers.h"

#include <stdio.h>

/* save_error_h fills err from libnbd's thread-local error.  h, when not
 * NULL, is a handle that was connected: if it is now closed or dead, the
 * failure is (or followed) the loss of the connection, whatever the
 * message says (a command issued after the server went away fails with
 * "invalid state: CLOSED", EINVAL). */
static void
save_error_h (struct nbd_handle *h, sd_error *err)
{
  const char *msg = nbd_get_error ();
  err->errnum = nbd_get_errno ();
  err->disconnected = h != NULL && (nbd_aio_is_closed (h) == 1 || nbd_aio_is_dead (h) == 1);
  snprintf (err->msg, sizeof err->msg, "%s", msg ? msg : "");
}

static void
save_error (sd_error *err)
{
  save_error_h (NULL, err);
}

struct nbd_handle *
sd_create (sd_error *err)
{
  struct nbd_handle *h = nbd_create ();
  if (h == NULL)
    save_error (err);
  return h;
}

/* CHECK_H returns 0, or -1 with err filled when call fails; hh is the
 * handle when it was connected (see save_error_h), else NULL. */
#define CHECK_H(hh, call)                       \
  do {                                          \
    if ((call) == -1) {                         \
      save_error_h ((hh), err);                 \
      return -1;                                \
    }                                           \
    return 0;                                   \
  } while (0)
#define CHECK(call) CHECK_H (NULL, call)
#define CHECK_IO(call) CHECK_H (h, call)

int
sd_add_meta_context (struct nbd_handle *h, const char *name, sd_error *err)
{
  CHECK (nbd_add_meta_context (h, name));
}

int
sd_set_handle_name (struct nbd_handle *h, const char *name, sd_error *err)
{
  CHECK (nbd_set_handle_name (h, name));
}

int
sd_set_pread_initialize (struct nbd_handle *h, int on, sd_error *err)
{
  CHECK (nbd_set_pread_initialize (h, on != 0));
}

int
sd_connect_uri (struct nbd_handle *h, const char *uri, sd_error *err)
{
  CHECK (nbd_connect_uri (h, uri));
}

int
sd_connect_unix (struct nbd_handle *h, const char *path, sd_error *err)
{
  CHECK (nbd_connect_unix (h, path));
}

int
sd_connect_socket (struct nbd_handle *h, int fd, sd_error *err)
{
  CHECK (nbd_connect_socket (h, fd));
}

int64_t
sd_get_size (struct nbd_handle *h, sd_error *err)
{
  int64_t r = nbd_get_size (h);
  if (r == -1)
    save_error (err);
  return r;
}

int64_t
sd_get_block_size (struct nbd_handle *h, int which, sd_error *err)
{
  int64_t r = nbd_get_block_size (h, which);
  if (r == -1)
    save_error (err);
  return r;
}

int
sd_flag (struct nbd_handle *h, int which, sd_error *err)
{
  int r;

  switch (which) {
  case 0: r = nbd_is_read_only (h); break;
  case 1: r = nbd_can_flush (h); break;
  case 2: r = nbd_can_fua (h); break;
  case 3: r = nbd_can_trim (h); break;
  case 4: r = nbd_can_zero (h); break;
  case 5: r = nbd_can_fast_zero (h); break;
  case 6: r = nbd_can_multi_conn (h); break;
  case 7: r = nbd_can_cache (h); break;
  case 8: r = nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION); break;
  default:
    err->errnum = EINVAL;
    snprintf (err->msg, sizeof err->msg, "sd_flag: unknown flag %d", which);
    return -1;
  }
  if (r == -1)
    save_error (err);
  return r;
}

int
sd_pread (struct nbd_handle *h, void *buf, size_t count, uint64_t offset,
          uint32_t flags, sd_error *err)
{
  CHECK_IO (nbd_pread (h, buf, count, offset, flags));
}

int
sd_pwrite (struct nbd_handle *h, const void *buf, size_t count,
           uint64_t offset, uint32_t flags, sd_error *err)
{
  CHECK_IO (nbd_pwrite (h, buf, count, offset, flags));
}

int
sd_zero (struct nbd_handle *h, uint64_t count, uint64_t offset,
         uint32_t flags, sd_error *err)
{
  CHECK_IO (nbd_zero (h, count, offset, flags));
}

int
sd_trim (struct nbd_handle *h, uint64_t count, uint64_t offset,
         uint32_t flags, sd_error *err)
{
  CHECK_IO (nbd_trim (h, count, offset, flags));
}

int
sd_flush (struct nbd_handle *h, uint32_t flags, sd_error *err)
{
  CHECK_IO (nbd_flush (h, flags));
}

/* Called by libnbd (with the handle lock held) once per metadata context
 * in each block status reply; keeps base:allocation only. */
static int
collect_extents (void *user_data, const char *metacontext, uint64_t offset,
                 uint32_t *entries, size_t nr_entries, int *error)
{
  sd_extents *e = user_data;
  (void) error;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  if (e->seen) /* a non-compliant server repeated the context: keep the first */
    return 0;
  e->seen = 1;
  e->offset = offset;
  nr_entries &= ~(size_t) 1;
  if (nr_entries > e->cap) {
    uint32_t *p = realloc (e->entries, nr_entries * sizeof *p);
    if (p == NULL) {
      *error = ENOMEM;
      return -1;
    }
    e->entries = p;
    e->cap = nr_entries;
  }
  memcpy (e->entries, entries, nr_entries * sizeof *entries);
  e->n = nr_entries;
  return 0;
}

int
sd_block_status (struct nbd_handle *h, uint64_t count, uint64_t offset,
                 uint32_t flags, sd_extents *out, sd_error *err)
{
  nbd_extent_callback cb = { .callback = collect_extents, .user_data = out };

  out->seen = 0;
  out->n = 0;
  CHECK_IO (nbd_block_status (h, count, offset, cb, flags));
}

void
sd_extents_free (sd_extents *e)
{
  free (e->entries);
  e->entries = NULL;
  e->n = e->cap = 0;
}

#define CHECK64(call)                           \
  do {                                          \
    int64_t r_ = (call);                        \
    if (r_ == -1)                               \
      save_error_h (h, err);                    \
    return r_;                                  \
  } while (0)

int64_t
sd_aio_pread (struct nbd_handle *h, void *buf, size_t count, uint64_t offset,
              uint32_t flags, sd_error *err)
{
  CHECK64 (nbd_aio_pread (h, buf, count, offset, NBD_NULL_COMPLETION, flags));
}

int64_t
sd_aio_pwrite (struct nbd_handle *h, const void *buf, size_t count,
               uint64_t offset, uint32_t flags, sd_error *err)
{
  CHECK64 (nbd_aio_pwrite (h, buf, count, offset, NBD_NULL_COMPLETION, flags));
}

int64_t
sd_aio_zero (struct nbd_handle *h, uint64_t count, uint64_t offset,
             uint32_t flags, sd_error *err)
{
  CHECK64 (nbd_aio_zero (h, count, offset, NBD_NULL_COMPLETION, flags));
}

int64_t
sd_aio_trim (struct nbd_handle *h, uint64_t count, uint64_t offset,
             uint32_t flags, sd_error *err)
{
  CHECK64 (nbd_aio_trim (h, count, offset, NBD_NULL_COMPLETION, flags));
}

int64_t
sd_aio_flush (struct nbd_handle *h, uint32_t flags, sd_error *err)
{
  CHECK64 (nbd_aio_flush (h, NBD_NULL_COMPLETION, flags));
}

int
sd_aio_drain (struct nbd_handle *h, sd_done *out, int max)
{
  int n = 0;

  while (n < max) {
    int64_t cookie = nbd_aio_peek_command_completed (h);
    if (cookie <= 0)
      break;
    out[n].cookie = cookie;
    out[n].err.errnum = 0;
    out[n].err.msg[0] = '\0';
    if (nbd_aio_command_completed (h, cookie) == -1) {
      save_error_h (h, &out[n].err);
      if (out[n].err.errnum == 0)
        out[n].err.errnum = EIO;
    }
    n++;
  }
  return n;
}

int
sd_aio_in_flight (struct nbd_handle *h)
{
  return nbd_aio_in_flight (h);
}

short
sd_aio_events (struct nbd_handle *h, int *fd)
{
  unsigned dir;
  short events = 0;

  *fd = nbd_aio_get_fd (h);
  if (*fd == -1)
    return 0;
  dir = nbd_aio_get_direction (h);
  if (dir & LIBNBD_AIO_DIRECTION_READ)
    events |= POLLIN;
  if (dir & LIBNBD_AIO_DIRECTION_WRITE)
    events |= POLLOUT;
  return events;
}

int
sd_aio_notify (struct nbd_handle *h, short revents, sd_error *err)
{
  unsigned dir = nbd_aio_get_direction (h);

  if ((revents & (POLLIN | POLLHUP | POLLERR)) &&
      (dir & LIBNBD_AIO_DIRECTION_READ)) {
    if (nbd_aio_notify_read (h) == -1) {
      save_error_h (h, err);
      return -1;
    }
    dir = nbd_aio_get_direction (h);
  }
  if ((revents & (POLLOUT | POLLHUP | POLLERR)) &&
      (dir & LIBNBD_AIO_DIRECTION_WRITE)) {
    if (nbd_aio_notify_write (h) == -1) {
      save_error_h (h, err);
      return -1;
    }
  }
  return 0;
}

int
sd_poll (struct nbd_handle *h, int timeout_ms, sd_error *err)
{
  int r = nbd_poll (h, timeout_ms);
  if (r == -1)
    save_error_h (h, err);
  return r;
}

int
sd_shutdown (struct nbd_handle *h, uint32_t flags, sd_error *err)
{
  CHECK (nbd_shutdown (h, flags));
}

void *
sd_buffer_alloc (size_t size)
{
  void *p = NULL;
  if (size == 0)
    size = 1;
  if (posix_memalign (&p, 4096, size) != 0)
    return NULL;
  return p;
}

/* Whether count bytes at buf are all zero: check the first 16 bytes, then
 * compare the buffer with itself shifted by 16 (one fast memcmp). */
int
sd_is_zero (const void *buf, size_t count)
{
  const unsigned char *p = buf;
  size_t i, head = count < 16 ? count : 16;

  for (i = 0; i < head; i++)
    if (p[i] != 0)
      return 0;
  if (count <= 16)
    return 1;
  return memcmp (p, p + 16, count - 16) == 0;
}
