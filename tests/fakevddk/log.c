/* Sendense capture — fake libvixDiskLib: the FAKEVDDK_LOG call log and
 * the VDDK log callbacks.
 *
 * FAKEVDDK_LOG=FILE: every API call appends one line "FUNCTION key=value…
 * pid=N" to FILE, opened with O_APPEND and written with a single write(2)
 * so lines from concurrent threads and processes never mix.  The variable
 * is looked up at every call, so a test can point it elsewhere at any
 * time.  Passwords are never written.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fakevddk.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char *log_path;          /* path of log_fd, protected by log_lock */
static int log_fd = -1;

static VixDiskLibGenericLogFunc *log_funcs[3];

const char *
fake_str (const char *s)
{
  return s ? s : "(null)";
}

/* Return an fd for FAKEVDDK_LOG, or -1 when logging is off. */
static int
get_log_fd (void)
{
  const char *path = getenv ("FAKEVDDK_LOG");
  int fd;

  if (path == NULL || *path == '\0')
    return -1;
  pthread_mutex_lock (&log_lock);
  if (log_path == NULL || strcmp (log_path, path) != 0) {
    if (log_fd >= 0)
      close (log_fd);
    free (log_path);
    log_path = strdup (path);
    log_fd = open (path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd == -1)
      fprintf (stderr, "fakevddk: cannot open FAKEVDDK_LOG %s: %s\n",
               path, strerror (errno));
  }
  fd = log_fd;
  pthread_mutex_unlock (&log_lock);
  return fd;
}

void
fake_logline (const char *fmt, ...)
{
  char line[8192];
  va_list ap;
  int fd = get_log_fd ();
  int n, m;

  if (fd < 0)
    return;
  va_start (ap, fmt);
  n = vsnprintf (line, sizeof line - 32, fmt, ap);
  va_end (ap);
  if (n < 0)
    return;
  if ((size_t) n > sizeof line - 33)
    n = sizeof line - 33;       /* truncated */
  m = snprintf (line + n, sizeof line - n, " pid=%ld\n", (long) getpid ());
  if (write (fd, line, n + m) != n + m)
    fprintf (stderr, "fakevddk: short write to FAKEVDDK_LOG\n");
}

void
fake_set_log_functions (VixDiskLibGenericLogFunc *log,
                        VixDiskLibGenericLogFunc *warn,
                        VixDiskLibGenericLogFunc *panic)
{
  __atomic_store_n (&log_funcs[0], log, __ATOMIC_RELEASE);
  __atomic_store_n (&log_funcs[1], warn, __ATOMIC_RELEASE);
  __atomic_store_n (&log_funcs[2], panic, __ATOMIC_RELEASE);
}

/* Send a message to the caller's log (0), warning (1) or panic (2)
 * function given to InitEx, the way VDDK reports details of failures.
 */
void
fake_vddk_log (int level, const char *fmt, ...)
{
  VixDiskLibGenericLogFunc *fn;
  va_list ap;

  if (level < 0 || level > 2)
    return;
  fn = __atomic_load_n (&log_funcs[level], __ATOMIC_ACQUIRE);
  if (fn == NULL)
    return;
  va_start (ap, fmt);
  fn (fmt, ap);
  va_end (ap);
}

void
fake_flag_names (uint32_t flags, char *buf, size_t n)
{
  static const struct { uint32_t bit; const char *name; } names[] = {
    { VIXDISKLIB_FLAG_OPEN_UNBUFFERED, "UNBUFFERED" },
    { VIXDISKLIB_FLAG_OPEN_SINGLE_LINK, "SINGLE_LINK" },
    { VIXDISKLIB_FLAG_OPEN_READ_ONLY, "READ_ONLY" },
    { VIXDISKLIB_FLAG_OPEN_COMPRESSION_ZLIB, "COMPRESSION_ZLIB" },
    { VIXDISKLIB_FLAG_OPEN_COMPRESSION_FASTLZ, "COMPRESSION_FASTLZ" },
    { VIXDISKLIB_FLAG_OPEN_COMPRESSION_SKIPZ, "COMPRESSION_SKIPZ" },
  };
  size_t i, used = 0;
  uint32_t known = 0;

  buf[0] = '\0';
  for (i = 0; i < sizeof names / sizeof names[0]; ++i) {
    known |= names[i].bit;
    if (flags & names[i].bit)
      used += snprintf (buf + used, used < n ? n - used : 0, "%s%s",
                        used ? "|" : "", names[i].name);
  }
  if (flags & ~known)
    used += snprintf (buf + used, used < n ? n - used : 0, "%sUNKNOWN(0x%x)",
                      used ? "|" : "", flags & ~known);
  if (used == 0)
    snprintf (buf, n, "NONE");
}
