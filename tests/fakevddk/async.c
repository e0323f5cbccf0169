/* Sendense capture — fake libvixDiskLib: ReadAsync, WriteAsync and Wait.
 *
 * Like VDDK's, ReadAsync and WriteAsync are truly asynchronous: they check
 * their arguments, queue the request to the handle's pool of threads
 * (FAKEVDDK_ASYNC_THREADS, default 4, started by the handle's first
 * request, never before) and return VIX_ASYNC at once.  A pool thread does
 * the request with the semantics of Read or Write (zeroes past EOF,
 * FAKEVDDK_READ_DELAY_US, FAKEVDDK_FAIL_READ_AFTER,
 * FAKEVDDK_FAIL_WRITE_AFTER, …) and calls the completion callback from
 * that thread, with the thread's error detail set (so GetErrorText called
 * in the callback describes the failure).  Wait returns once every request
 * of the handle has completed, callbacks included.  Close waits for
 * requests still in flight (saying so through the warning log) and stops
 * the pool.
 *
 * The overlap detector (FAKEVDDK_STRICT) sees the ReadAsync/WriteAsync
 * call itself, the submission, like any other call on the handle:
 * requests in flight are not calls, and may overlap each other and later
 * calls.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakevddk.h"

struct fake_req {
  struct fake_req *next;
  uint64_t start, num;
  unsigned char *buf;         /* read into */
  const unsigned char *wbuf;  /* write from (a write when set) */
  VixDiskLibCompletionCB cb;
  void *data;
  long long call;             /* read or write call number (FAIL_*_AFTER) */
};

struct fake_pool {
  pthread_mutex_t lock;
  pthread_cond_t work;        /* a request was queued, or stop */
  pthread_cond_t idle;        /* inflight fell to 0 */
  struct fake_req *head, *tail;
  unsigned inflight;          /* accepted, callback not yet returned */
  unsigned max_inflight;
  unsigned completed;         /* since the last Wait */
  int stop;
  struct fake_handle *h;
  unsigned nthreads;
  pthread_t threads[];
};

/* Serialises the creation of pools (the overlap detector only reports
 * overlapping ReadAsync calls, so two could get here at once).
 */
static pthread_mutex_t pool_create_lock = PTHREAD_MUTEX_INITIALIZER;

static void *
pool_thread (void *arg)
{
  struct fake_pool *p = arg;
  struct fake_handle *h = p->h;

  pthread_mutex_lock (&p->lock);
  for (;;) {
    struct fake_req *r;
    VixError err;

    while (p->head == NULL && !p->stop)
      pthread_cond_wait (&p->work, &p->lock);
    if (p->head == NULL)
      break;                    /* stopping, and nothing left */
    r = p->head;
    p->head = r->next;
    if (p->head == NULL)
      p->tail = NULL;
    pthread_mutex_unlock (&p->lock);

    fake_clear_error ();
    if (r->wbuf)
      err = fake_write (h, r->start, r->num, r->wbuf, r->call);
    else
      err = fake_read (h, r->start, r->num, r->buf, r->call);
    r->cb (r->data, err);
    free (r);

    pthread_mutex_lock (&p->lock);
    p->completed++;
    if (--p->inflight == 0)
      pthread_cond_broadcast (&p->idle);
  }
  pthread_mutex_unlock (&p->lock);
  return NULL;
}

/* The pool of h, started on first use.  NULL (and the error recorded)
 * when it cannot be.
 */
static struct fake_pool *
get_pool (struct fake_handle *h)
{
  struct fake_pool *p = __atomic_load_n (&h->pool, __ATOMIC_ACQUIRE);
  sigset_t all, old;
  unsigned i;
  int e = 0;

  if (p)
    return p;
  pthread_mutex_lock (&pool_create_lock);
  p = h->pool;
  if (p) {
    pthread_mutex_unlock (&pool_create_lock);
    return p;
  }
  p = calloc (1, sizeof *p + h->async_threads * sizeof p->threads[0]);
  if (p == NULL) {
    pthread_mutex_unlock (&pool_create_lock);
    fake_fail (VIX_E_OUT_OF_MEMORY, "asynchronous I/O thread pool");
    return NULL;
  }
  pthread_mutex_init (&p->lock, NULL);
  pthread_cond_init (&p->work, NULL);
  pthread_cond_init (&p->idle, NULL);
  p->h = h;
  /* The pool threads take no signals: the process's own threads do. */
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  for (i = 0; i < h->async_threads; ++i) {
    e = pthread_create (&p->threads[i], NULL, pool_thread, p);
    if (e != 0)
      break;
    p->nthreads++;
  }
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (p->nthreads == 0) {
    pthread_mutex_unlock (&pool_create_lock);
    fake_fail (VIX_E_FAIL, "asynchronous I/O: cannot start a thread: %s",
               strerror (e));
    free (p);
    return NULL;
  }
  __atomic_store_n (&h->pool, p, __ATOMIC_RELEASE);
  pthread_mutex_unlock (&pool_create_lock);
  return p;
}

/* Queue r to the pool of h; r->call is set here. */
static VixError
submit (struct fake_handle *h, struct fake_req *r)
{
  struct fake_pool *p = get_pool (h);

  if (p == NULL) {
    free (r);
    return fake_last_error ();
  }
  r->call = r->wbuf ? fake_next_write_call () : fake_next_read_call ();
  pthread_mutex_lock (&p->lock);
  if (p->tail)
    p->tail->next = r;
  else
    p->head = r;
  p->tail = r;
  if (++p->inflight > p->max_inflight)
    p->max_inflight = p->inflight;
  pthread_cond_signal (&p->work);
  pthread_mutex_unlock (&p->lock);
  return VIX_ASYNC;
}

/* The common part of ReadAsync (wbuf NULL) and WriteAsync. */
static VixError
async_request (const char *fn, VixDiskLibHandle h, uint64_t start,
               uint64_t num, unsigned char *buf, const unsigned char *wbuf,
               VixDiskLibCompletionCB cb, void *data)
{
  VixError err;
  struct fake_req *r;

  fake_clear_error ();
  if (!fake_handle_valid (h))
    err = fake_fail (VIX_E_INVALID_HANDLE, "disk handle %p", (void *) h);
  else {
    fake_busy_enter (h, fn);
    if (h->no_async)
      err = fake_fail (VIX_E_NOT_SUPPORTED, "FAKEVDDK_NO_ASYNC is set");
    else if (cb == NULL)
      err = fake_fail (VIX_E_INVALID_ARG, "NULL completion callback");
    else if ((err = wbuf ? fake_check_write (h, start, num, wbuf) :
              fake_check_range (h, start, num, buf)) != VIX_OK)
      ;
    else if ((r = calloc (1, sizeof *r)) == NULL)
      err = fake_fail (VIX_E_OUT_OF_MEMORY, "asynchronous request");
    else {
      r->start = start;
      r->num = num;
      r->buf = buf;
      r->wbuf = wbuf;
      r->cb = cb;
      r->data = data;
      err = submit (h, r);
    }
    fake_busy_leave (h);
  }
  fake_logline ("%s handle=%u start=%llu num=%llu result=%llu", fn,
                fake_handle_valid (h) ? h->id : 0,
                (unsigned long long) start, (unsigned long long) num,
                (unsigned long long) err);
  return err;
}

EXPORT VixError
VixDiskLib_ReadAsync (VixDiskLibHandle h, uint64_t start, uint64_t num,
                      unsigned char *buf, VixDiskLibCompletionCB cb,
                      void *data)
{
  return async_request ("VixDiskLib_ReadAsync", h, start, num, buf, NULL,
                        cb, data);
}

EXPORT VixError
VixDiskLib_WriteAsync (VixDiskLibHandle h, uint64_t start, uint64_t num,
                       const unsigned char *buf, VixDiskLibCompletionCB cb,
                       void *data)
{
  return async_request ("VixDiskLib_WriteAsync", h, start, num, NULL, buf,
                        cb, data);
}

/* Wait until no request of h is in flight (callbacks returned); returns
 * how many completed since the last wait.  The caller is inside a call
 * on h.
 */
unsigned
fake_pool_wait (struct fake_handle *h)
{
  struct fake_pool *p = __atomic_load_n (&h->pool, __ATOMIC_ACQUIRE);
  unsigned n = 0;

  if (p) {
    pthread_mutex_lock (&p->lock);
    while (p->inflight > 0)
      pthread_cond_wait (&p->idle, &p->lock);
    n = p->completed;
    p->completed = 0;
    pthread_mutex_unlock (&p->lock);
  }
  return n;
}

EXPORT VixError
VixDiskLib_Wait (VixDiskLibHandle h)
{
  VixError err = VIX_OK;
  unsigned n = 0;

  fake_clear_error ();
  if (!fake_handle_valid (h))
    err = fake_fail (VIX_E_INVALID_HANDLE, "disk handle %p", (void *) h);
  else {
    fake_busy_enter (h, "VixDiskLib_Wait");
    n = fake_pool_wait (h);
    fake_busy_leave (h);
  }
  fake_logline ("VixDiskLib_Wait handle=%u completed=%u result=%llu",
                fake_handle_valid (h) ? h->id : 0, n,
                (unsigned long long) err);
  return err;
}

/* For Close: wait for the requests in flight, stop and free the pool.
 * *inflight is how many were in flight (0 when the caller waited, as it
 * should), *max_inflight the most there ever were at once.
 */
void
fake_pool_stop (struct fake_handle *h, unsigned *inflight,
                unsigned *max_inflight)
{
  struct fake_pool *p = __atomic_exchange_n (&h->pool, NULL,
                                             __ATOMIC_ACQ_REL);
  unsigned i;

  *inflight = *max_inflight = 0;
  if (p == NULL)
    return;
  pthread_mutex_lock (&p->lock);
  *inflight = p->inflight;
  *max_inflight = p->max_inflight;
  if (p->inflight > 0)
    fake_vddk_log (1, "VixDiskLib: Close of disk handle %u with %u "
                   "asynchronous requests in flight: waiting for them "
                   "(call VixDiskLib_Wait first)", h->id, p->inflight);
  while (p->inflight > 0)
    pthread_cond_wait (&p->idle, &p->lock);
  p->stop = 1;
  pthread_cond_broadcast (&p->work);
  pthread_mutex_unlock (&p->lock);
  for (i = 0; i < p->nthreads; ++i)
    pthread_join (p->threads[i], NULL);
  pthread_mutex_destroy (&p->lock);
  pthread_cond_destroy (&p->work);
  pthread_cond_destroy (&p->idle);
  free (p);
}
