/* Thin C wrappers over libnbd for package nbd.
 *
 * Every wrapper that can fail takes an sd_error out-parameter and fills it
 * inside the same C call, because nbd_get_error/nbd_get_errno are
 * thread-local and a goroutine may move to another OS thread between two
 * cgo calls.  The structs Go passes in hold no pointers, so cgo's pointer
 * checks stay cheap on the hot path.
 */
#ifndef SENDENSE_NBD_WRAPPERS_H
#define SENDENSE_NBD_WRAPPERS_H

#include <stddef.h>
#include <stdint.h>
#include <libnbd.h>

#define SD_MSG_MAX 512

typedef struct {
  int errnum;
  int disconnected; /* the handle had lost its connection (closed or dead) */
  char msg[SD_MSG_MAX];
} sd_error;

/* A retired asynchronous command. */
typedef struct {
  int64_t cookie;
  sd_error err; /* err.errnum == 0: success */
} sd_done;

/* Extents of the base:allocation context collected by sd_block_status:
 * pairs of (length, flags) starting at offset. */
typedef struct {
  uint64_t offset;
  uint32_t *entries;
  size_t n, cap;
  int seen;
} sd_extents;

struct nbd_handle *sd_create (sd_error *err);
int sd_add_meta_context (struct nbd_handle *h, const char *name, sd_error *err);
int sd_set_handle_name (struct nbd_handle *h, const char *name, sd_error *err);
int sd_set_pread_initialize (struct nbd_handle *h, int on, sd_error *err);
int sd_connect_uri (struct nbd_handle *h, const char *uri, sd_error *err);
int sd_connect_unix (struct nbd_handle *h, const char *path, sd_error *err);
int sd_connect_socket (struct nbd_handle *h, int fd, sd_error *err);

int64_t sd_get_size (struct nbd_handle *h, sd_error *err);
int64_t sd_get_block_size (struct nbd_handle *h, int which, sd_error *err);
/* which: 0 read_only, 1 flush, 2 fua, 3 trim, 4 zero, 5 fast_zero,
 * 6 multi_conn, 7 cache, 8 base:allocation negotiated */
int sd_flag (struct nbd_handle *h, int which, sd_error *err);

int sd_pread (struct nbd_handle *h, void *buf, size_t count, uint64_t offset,
              uint32_t flags, sd_error *err);
int sd_pwrite (struct nbd_handle *h, const void *buf, size_t count,
               uint64_t offset, uint32_t flags, sd_error *err);
int sd_zero (struct nbd_handle *h, uint64_t count, uint64_t offset,
             uint32_t flags, sd_error *err);
int sd_trim (struct nbd_handle *h, uint64_t count, uint64_t offset,
             uint32_t flags, sd_error *err);
int sd_flush (struct nbd_handle *h, uint32_t flags, sd_error *err);
int sd_block_status (struct nbd_handle *h, uint64_t count, uint64_t offset,
                     uint32_t flags, sd_extents *out, sd_error *err);
void sd_extents_free (sd_extents *e);

int64_t sd_aio_pread (struct nbd_handle *h, void *buf, size_t count,
                      uint64_t offset, uint32_t flags, sd_error *err);
int64_t sd_aio_pwrite (struct nbd_handle *h, const void *buf, size_t count,
                       uint64_t offset, uint32_t flags, sd_error *err);
int64_t sd_aio_zero (struct nbd_handle *h, uint64_t count, uint64_t offset,
                     uint32_t flags, sd_error *err);
int64_t sd_aio_trim (struct nbd_handle *h, uint64_t count, uint64_t offset,
                     uint32_t flags, sd_error *err);
int64_t sd_aio_flush (struct nbd_handle *h, uint32_t flags, sd_error *err);

/* Retire up to max completed commands into out; returns how many. */
int sd_aio_drain (struct nbd_handle *h, sd_done *out, int max);
int sd_aio_in_flight (struct nbd_handle *h);
/* Socket and poll(2) events wanted now (POLLIN/POLLOUT); fd -1 if none. */
short sd_aio_events (struct nbd_handle *h, int *fd);
/* Tell libnbd what poll(2) reported. */
int sd_aio_notify (struct nbd_handle *h, short revents, sd_error *err);
int sd_poll (struct nbd_handle *h, int timeout_ms, sd_error *err);
int sd_shutdown (struct nbd_handle *h, uint32_t flags, sd_error *err);

void *sd_buffer_alloc (size_t size);
int sd_is_zero (const void *buf, size_t count);

#endif
