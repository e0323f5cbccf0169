/* Sendense capture — fake libvixDiskLib: error codes and texts.
 *
 * GetErrorText returns the VIX API's message for a code.  Real VDDK only
 * knows the code; the fake also remembers, per thread, a detail for the
 * last failure (such as the file it looked for) and appends it when the
 * same code is asked for on the same thread, which is what a caller that
 * converts errors inside the failing call (as ours does) sees.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakevddk.h"

static const struct {
  VixError code;
  const char *name;
  const char *text;
} error_table[] = {
  /* Texts of the VIX API reference (vix.h / VixError documentation). */
  { VIX_OK, "VIX_OK", "The operation was successful" },
  { VIX_E_FAIL, "VIX_E_FAIL", "Unknown error" },
  { VIX_E_OUT_OF_MEMORY, "VIX_E_OUT_OF_MEMORY",
    "Memory allocation failed: out of memory" },
  { VIX_E_INVALID_ARG, "VIX_E_INVALID_ARG",
    "One of the parameters was invalid" },
  { VIX_E_FILE_NOT_FOUND, "VIX_E_FILE_NOT_FOUND", "A file was not found" },
  { VIX_E_NOT_SUPPORTED, "VIX_E_NOT_SUPPORTED",
    "The operation is not supported for the specified parameters" },
  { VIX_E_FILE_ERROR, "VIX_E_FILE_ERROR",
    "A file access error occurred on the host or guest operating system" },
  { VIX_E_DISK_FULL, "VIX_E_DISK_FULL",
    "An error occurred while writing a file; the disk is full" },
  { VIX_E_FILE_READ_ONLY, "VIX_E_FILE_READ_ONLY",
    "The file is write-protected" },
  { VIX_E_FILE_ALREADY_EXISTS, "VIX_E_FILE_ALREADY_EXISTS",
    "The file already exists" },
  { VIX_E_FILE_ACCESS_ERROR, "VIX_E_FILE_ACCESS_ERROR",
    "You do not have access rights to this file" },
  { VIX_E_INVALID_HANDLE, "VIX_E_INVALID_HANDLE",
    "The handle is not a valid VIX object" },
  { VIX_E_HOST_USER_PERMISSIONS, "VIX_E_HOST_USER_PERMISSIONS",
    "Insufficient permissions in the host operating system" },
  { VIX_E_DISK_NOINIT, "VIX_E_DISK_NOINIT",
    "The disk library has not been initialized" },
  { VIX_E_DISK_OUTOFRANGE, "VIX_E_DISK_OUTOFRANGE",
    "The requested sectors are out of range" },
  { VIX_E_CANNOT_CONNECT_TO_HOST, "VIX_E_CANNOT_CONNECT_TO_HOST",
    "Cannot connect to host" },
  { VIX_ASYNC, "VIX_ASYNC", "The operation will complete asynchronously" },
  { VIX_E_NET_HTTP_SSL_SECURITY, "VIX_E_NET_HTTP_SSL_SECURITY",
    "SSL security error: the server certificate could not be verified" },
};

static __thread VixError last_code;
static __thread char last_detail[1024];

static int
lookup (VixError code)
{
  size_t i;

  for (i = 0; i < sizeof error_table / sizeof error_table[0]; ++i)
    if (error_table[i].code == VIX_ERROR_CODE (code))
      return (int) i;
  return -1;
}

const char *
fake_error_name (VixError code)
{
  int i = lookup (code);
  return i >= 0 ? error_table[i].name : "VIX_E_UNKNOWN";
}

/* Record a failure with its detail and return its code, so API functions
 * can say: return fake_fail (VIX_E_FILE_NOT_FOUND, "%s", path);
 */
VixError
fake_fail (VixError code, const char *fmt, ...)
{
  va_list ap;

  last_code = code;
  va_start (ap, fmt);
  vsnprintf (last_detail, sizeof last_detail, fmt, ap);
  va_end (ap);
  return code;
}

VixError
fake_last_error (void)
{
  return last_code;
}

void
fake_clear_error (void)
{
  last_code = VIX_OK;
  last_detail[0] = '\0';
}

EXPORT char *
VixDiskLib_GetErrorText (VixError err, const char *locale)
{
  int i = lookup (err);
  const char *text = i >= 0 ? error_table[i].text : "Unknown error";
  size_t n;
  char *s;

  (void) locale;
  n = strlen (text) + strlen (last_detail) + 3;
  s = malloc (n);
  if (s == NULL)
    return NULL;
  if (err == last_code && last_detail[0] != '\0')
    snprintf (s, n, "%s: %s", text, last_detail);
  else
    snprintf (s, n, "%s", text);
  fake_logline ("VixDiskLib_GetErrorText code=%llu name=%s",
                (unsigned long long) err, fake_error_name (err));
  return s;
}

EXPORT void
VixDiskLib_FreeErrorText (char *text)
{
  fake_logline ("VixDiskLib_FreeErrorText");
  free (text);
}
