/* Sendense capture — the calls on one VDDK disk handle.
 *
 * A VixDiskLibHandle is not thread-safe: every call on it is made under
 * the pthread mutex of its struct vdk_disk, in C, so that no Go code ever
 * waits for another goroutine's VDDK call.  A read with ReadAsync or a
 * write with WriteAsync holds the mutex only while VDDK accepts it; the
 * caller then waits for the completion callback (which only records the
 * result and signals) on a condition variable of its own, so many requests
 * of one handle are in flight at once.  The buffer is only used until the
 * call returns: it returns after the completion, never before.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vixdisklib.h"

struct vdk_disk {
  const struct vdk_lib *l;
  VixDiskLibHandle h;
  pthread_mutex_t lock;         /* held during every call on h */
};

struct vdk_disk *
vdk_disk_new (const struct vdk_lib *l, VixDiskLibHandle h)
{
  struct vdk_disk *d = calloc (1, sizeof *d);

  if (d == NULL)
    return NULL;
  d->l = l;
  d->h = h;
  pthread_mutex_init (&d->lock, NULL);
  return d;
}

void
vdk_disk_free (struct vdk_disk *d)
{
  if (d == NULL)
    return;
  pthread_mutex_destroy (&d->lock);
  free (d);
}

VixDiskLibHandle
vdk_disk_handle (const struct vdk_disk *d)
{
  return d->h;
}

struct vdk_ret
vdk_disk_GetInfo (struct vdk_disk *d, VixDiskLibInfo **out)
{
  VixError err;

  pthread_mutex_lock (&d->lock);
  err = d->l->GetInfo (d->h, out);
  pthread_mutex_unlock (&d->lock);
  return vdk_result (d->l, err);
}

struct vdk_ret
vdk_disk_GetTransportMode (struct vdk_disk *d)
{
  struct vdk_ret r = { VDK_VIX_OK, NULL, NULL };

  pthread_mutex_lock (&d->lock);
  r.str = d->l->GetTransportMode (d->h);
  pthread_mutex_unlock (&d->lock);
  return r;
}

struct vdk_ret
vdk_disk_QueryAllocatedBlocks (struct vdk_disk *d, uint64_t start,
                               uint64_t num, uint64_t chunk,
                               VixDiskLibBlockList **out)
{
  VixError err;

  if (d->l->QueryAllocatedBlocks == NULL)
    return vdk_absent ("VixDiskLib_QueryAllocatedBlocks");
  pthread_mutex_lock (&d->lock);
  err = d->l->QueryAllocatedBlocks (d->h, start, num, chunk, out);
  pthread_mutex_unlock (&d->lock);
  return vdk_result (d->l, err);
}

/* Read with VixDiskLib_Read.  With n > 0, num is 1 and the sector goes
 * through a bounce buffer of which bytes [skip, skip+n) are copied to buf.
 */
struct vdk_ret
vdk_disk_Read (struct vdk_disk *d, uint64_t start, uint64_t num, void *buf,
               uint32_t skip, uint32_t n)
{
  unsigned char bounce[VDK_SECTOR_SIZE];
  VixError err;

  pthread_mutex_lock (&d->lock);
  err = d->l->Read (d->h, start, num, n ? bounce : buf);
  pthread_mutex_unlock (&d->lock);
  if (err == VDK_VIX_OK && n)
    memcpy (buf, bounce + skip, n);
  return vdk_result (d->l, err);
}

/* Write num whole sectors with VixDiskLib_Write. */
struct vdk_ret
vdk_disk_Write (struct vdk_disk *d, uint64_t start, uint64_t num,
                const void *buf)
{
  VixError err;

  pthread_mutex_lock (&d->lock);
  err = d->l->Write (d->h, start, num, buf);
  pthread_mutex_unlock (&d->lock);
  return vdk_result (d->l, err);
}

/* One asynchronous request in flight: the completion callback fills it
 * and signals.
 */
struct vdk_req {
  const struct vdk_lib *l;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  VixError err;
  char *text;                   /* malloc'd VDDK text of a failure */
};

static void
request_done (void *data, VixError err)
{
  struct vdk_req *r = data;
  char *text = NULL;

  /* The text is fetched here, on VDDK's thread, as nbdkit-vddk does:
   * that is where VDDK knows about the failure.
   */
  if (err != VDK_VIX_OK) {
    char *t = r->l->GetErrorText (err, NULL);
    if (t) {
      text = strdup (t);
      r->l->FreeErrorText (t);
    }
  }
  pthread_mutex_lock (&r->mu);
  r->err = err;
  r->text = text;
  r->done = 1;
  pthread_cond_signal (&r->cv);
  pthread_mutex_unlock (&r->mu);
}

/* Submit num sectors at start with ReadAsync (wbuf NULL, into rbuf) or
 * WriteAsync (from wbuf) under the handle's mutex, and wait for the
 * completion without it.  Any answer but VIX_ASYNC is the request's
 * vdk_result (VDDK calls the callback only for requests it accepted), so
 * VIX_E_NOT_SUPPORTED comes back as is and the caller falls back to the
 * synchronous call.
 */
static struct vdk_ret
async_request (struct vdk_disk *d, uint64_t start, uint64_t num,
               unsigned char *rbuf, const unsigned char *wbuf)
{
  struct vdk_req r = { .l = d->l };
  struct vdk_ret ret = { VDK_VIX_OK, NULL, NULL };
  VixError err;

  pthread_mutex_init (&r.mu, NULL);
  pthread_cond_init (&r.cv, NULL);
  pthread_mutex_lock (&d->lock);
  if (wbuf)
    err = d->l->WriteAsync (d->h, start, num, wbuf, request_done, &r);
  else
    err = d->l->ReadAsync (d->h, start, num, rbuf, request_done, &r);
  pthread_mutex_unlock (&d->lock);
  if (err == VDK_VIX_ASYNC) {
    pthread_mutex_lock (&r.mu);
    while (!r.done)
      pthread_cond_wait (&r.cv, &r.mu);
    pthread_mutex_unlock (&r.mu);
    ret.err = r.err;
    ret.text = r.text;
  }
  else
    ret = vdk_result (d->l, err);
  pthread_cond_destroy (&r.cv);
  pthread_mutex_destroy (&r.mu);
  return ret;
}

/* Read with VixDiskLib_ReadAsync and wait for its completion.  skip and
 * n as for vdk_disk_Read.
 */
struct vdk_ret
vdk_disk_ReadAsync (struct vdk_disk *d, uint64_t start, uint64_t num,
                    void *buf, uint32_t skip, uint32_t n)
{
  unsigned char bounce[VDK_SECTOR_SIZE];
  struct vdk_ret ret;

  ret = async_request (d, start, num, n ? bounce : buf, NULL);
  if (ret.err == VDK_VIX_OK && n)
    memcpy (buf, bounce + skip, n);
  return ret;
}

/* Write num whole sectors with VixDiskLib_WriteAsync and wait for its
 * completion.
 */
struct vdk_ret
vdk_disk_WriteAsync (struct vdk_disk *d, uint64_t start, uint64_t num,
                     const void *buf)
{
  return async_request (d, start, num, NULL, buf);
}

struct vdk_ret
vdk_disk_Wait (struct vdk_disk *d)
{
  VixError err;

  pthread_mutex_lock (&d->lock);
  err = d->l->Wait (d->h);
  pthread_mutex_unlock (&d->lock);
  return vdk_result (d->l, err);
}

/* Wait for the asynchronous requests in flight (of other threads: each
 * caller waits for its own), then VixDiskLib_Flush, both under the
 * handle's mutex so that no request is submitted in between, as
 * nbdkit-vddk-plugin's worker thread does.  The first failure wins.
 */
struct vdk_ret
vdk_disk_Flush (struct vdk_disk *d)
{
  VixError werr, ferr;

  pthread_mutex_lock (&d->lock);
  werr = d->l->Wait (d->h);
  ferr = d->l->Flush (d->h);
  pthread_mutex_unlock (&d->lock);
  return vdk_result (d->l, werr != VDK_VIX_OK ? werr : ferr);
}

struct vdk_ret
vdk_disk_Close (struct vdk_disk *d)
{
  VixError err;

  pthread_mutex_lock (&d->lock);
  err = d->l->Close (d->h);
  pthread_mutex_unlock (&d->lock);
  return vdk_result (d->l, err);
}
