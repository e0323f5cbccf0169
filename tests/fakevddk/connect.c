/* Sendense capture — fake libvixDiskLib: library setup and connections.
 *
 * InitEx/Exit, ListTransportModes, AllocateConnectParams/FreeConnectParams,
 * ConnectEx/Disconnect, the credential checks driven by
 * FAKEVDDK_PASSWORD, FAKEVDDK_USER, FAKEVDDK_COOKIE and
 * FAKEVDDK_THUMBPRINT, and the detector for ConnectEx/Open/Close/
 * Disconnect calls that overlap (VDDK wants those made one at a time).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "fakevddk.h"

static int initialized;
static unsigned next_conn_id;
static const char *serial_owner;   /* function inside the serial section */
static struct fake_connection *null_conn; /* FAKEVDDK_NULL_CONNECTION */

int
fake_initialized (void)
{
  return __atomic_load_n (&initialized, __ATOMIC_ACQUIRE);
}

int
fake_conn_valid (const struct fake_connection *c)
{
  return c != NULL && c->magic == FAKE_CONN_MAGIC;
}

/* The connection behind a handle given by the caller: under
 * FAKEVDDK_NULL_CONNECTION, ConnectEx returned NULL for the latest one,
 * and NULL stands for it.
 */
struct fake_connection *
fake_conn_get (VixDiskLibConnection c)
{
  return c ? c : __atomic_load_n (&null_conn, __ATOMIC_ACQUIRE);
}

static int
strict (void)
{
  const char *s = getenv ("FAKEVDDK_STRICT");
  return s != NULL && *s != '\0' && strcmp (s, "0") != 0;
}

/* Report a thread-safety violation; abort under FAKEVDDK_STRICT=1. */
void
fake_violation (const char *what, const char *fn, const char *other)
{
  fake_logline ("FAKEVDDK_VIOLATION %s fn=%s concurrent=%s",
                what, fn, fake_str (other));
  fprintf (stderr, "fakevddk: %s: %s called while %s is running\n",
           what, fn, fake_str (other));
  if (strict ()) {
    fprintf (stderr, "fakevddk: aborting (FAKEVDDK_STRICT is set)\n");
    abort ();
  }
}

void
fake_serial_enter (const char *fn)
{
  const char *expected = NULL;

  if (!__atomic_compare_exchange_n (&serial_owner, &expected, fn, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    fake_violation ("ConnectEx/Open/Close/Disconnect must be serialised",
               fn, expected);
}

void
fake_serial_leave (void)
{
  __atomic_store_n (&serial_owner, NULL, __ATOMIC_RELEASE);
}

EXPORT VixError
VixDiskLib_InitEx (uint32_t major, uint32_t minor,
                   VixDiskLibGenericLogFunc *log,
                   VixDiskLibGenericLogFunc *warn,
                   VixDiskLibGenericLogFunc *panic,
                   const char *libDir, const char *configFile)
{
  int again;

  fake_clear_error ();
  fake_set_log_functions (log, warn, panic);
  again = __atomic_exchange_n (&initialized, 1, __ATOMIC_ACQ_REL);
  fake_logline ("VixDiskLib_InitEx version=%u.%u libDir=%s configFile=%s "
                "again=%d result=0",
                major, minor, fake_str (libDir), fake_str (configFile), again);
  fake_vddk_log (0, "VixDiskLib: fake VDDK %u.%u initialised (libDir %s)",
                 major, minor, fake_str (libDir));
  if (again)
    fake_vddk_log (1, "VixDiskLib: InitEx called again in process %ld",
                   (long) getpid ());
  if (configFile && access (configFile, R_OK) != 0)
    fake_vddk_log (1, "VixDiskLib: cannot read config file %s", configFile);
  return VIX_OK;
}

EXPORT void
VixDiskLib_Exit (void)
{
  fake_logline ("VixDiskLib_Exit");
  __atomic_store_n (&initialized, 0, __ATOMIC_RELEASE);
  fake_set_log_functions (NULL, NULL, NULL);
}

/* The transport modes this VDDK offers, in VDDK's own order and form
 * (nbdkit-vddk requires the function, as every VDDK >= 6.5 has it, and
 * prints the list in --dump-plugin).  Callable before InitEx.
 */
EXPORT const char *
VixDiskLib_ListTransportModes (void)
{
  fake_logline ("VixDiskLib_ListTransportModes");
  return "file:san:hotadd:nbdssl:nbd";
}

/* AllocateConnectParams hands out the 128-byte struct behind a header
 * holding this magic, so FreeConnectParams can tell its own structs.
 */
#define FAKE_PARAMS_MAGIC 0x46414b4550524d53ULL /* "FAKEPRMS" */

struct fake_params {
  uint64_t magic;
  uint64_t pad;                 /* keeps p 16-byte aligned */
  VixDiskLibConnectParams p;
};

EXPORT VixDiskLibConnectParams *
VixDiskLib_AllocateConnectParams (void)
{
  struct fake_params *fp = calloc (1, sizeof *fp);

  if (fp)
    fp->magic = FAKE_PARAMS_MAGIC;
  fake_logline ("VixDiskLib_AllocateConnectParams result=%s",
                fp ? "ok" : "(null)");
  return fp ? &fp->p : NULL;
}

/* Frees the struct only: the strings in it belong to the caller (that is
 * how nbdkit-vddk-plugin uses it).
 */
EXPORT void
VixDiskLib_FreeConnectParams (VixDiskLibConnectParams *p)
{
  struct fake_params *fp;

  fake_logline ("VixDiskLib_FreeConnectParams");
  if (p == NULL)
    return;
  fp = (struct fake_params *) ((char *) p - offsetof (struct fake_params, p));
  if (fp->magic != FAKE_PARAMS_MAGIC) {
    fake_violation ("FreeConnectParams needs a struct from "
                    "AllocateConnectParams", "VixDiskLib_FreeConnectParams",
                    NULL);
    return;
  }
  fp->magic = FAKE_DEAD_MAGIC;
  free (fp);
}

/* The credential and server checks of a remote ConnectEx: user/password
 * (VIXDISKLIB_CRED_UID) or a session cookie (VIXDISKLIB_CRED_SESSIONID,
 * with the user name and the password as its key).
 */
static VixError
check_remote (const VixDiskLibConnectParams *p, const char **root)
{
  const char *want_tp = getenv ("FAKEVDDK_THUMBPRINT");
  const char *want_user = getenv ("FAKEVDDK_USER");
  const char *want_pw = getenv ("FAKEVDDK_PASSWORD");
  const char *want_cookie = getenv ("FAKEVDDK_COOKIE");
  const char *user, *password;

  *root = getenv ("FAKEVDDK_ROOT");
  if (*root == NULL || **root == '\0')
    return fake_fail (VIX_E_CANNOT_CONNECT_TO_HOST,
                      "%s: the fake VDDK serves remote disks only from "
                      "local directories: set FAKEVDDK_ROOT", p->serverName);
  switch (p->credType) {
  case VIXDISKLIB_CRED_UID:
    user = p->creds.uid.userName;
    password = p->creds.uid.password;
    break;
  case VIXDISKLIB_CRED_SESSIONID:
    user = p->creds.sessionId.userName;
    password = p->creds.sessionId.key;
    if (p->creds.sessionId.cookie == NULL ||
        *p->creds.sessionId.cookie == '\0')
      return fake_fail (VIX_E_INVALID_ARG, "session cookie is missing");
    break;
  default:
    return fake_fail (VIX_E_INVALID_ARG,
                      "credType %d: the fake supports user/password "
                      "(VIXDISKLIB_CRED_UID) and session cookies "
                      "(VIXDISKLIB_CRED_SESSIONID)", p->credType);
  }
  if (user == NULL || *user == '\0')
    return fake_fail (VIX_E_INVALID_ARG, "user name is missing");
  if (want_tp && *want_tp &&
      (p->thumbPrint == NULL || strcasecmp (p->thumbPrint, want_tp) != 0)) {
    fake_vddk_log (1, "SSL: the thumbprint of %s does not match: "
                   "expected %s, got %s",
                   p->serverName, want_tp, fake_str (p->thumbPrint));
    return fake_fail (VIX_E_NET_HTTP_SSL_SECURITY,
                      "the server thumbprint does not match %s",
                      fake_str (p->thumbPrint));
  }
  if (p->credType == VIXDISKLIB_CRED_SESSIONID) {
    if (want_cookie &&
        strcmp (p->creds.sessionId.cookie, want_cookie) != 0) {
      fake_vddk_log (1, "Cannot complete login: the session cookie of %s "
                     "on %s is not valid", user, p->serverName);
      return fake_fail (VIX_E_HOST_USER_PERMISSIONS,
                        "login as %s on %s failed: session cookie not "
                        "valid", user, p->serverName);
    }
    return VIX_OK;
  }
  if ((want_user && *want_user && strcmp (user, want_user) != 0) ||
      (want_pw && (password == NULL || strcmp (password, want_pw) != 0))) {
    fake_vddk_log (1, "Cannot complete login due to an incorrect user name "
                   "or password (user %s on %s)", user, p->serverName);
    return fake_fail (VIX_E_HOST_USER_PERMISSIONS,
                      "login as %s on %s failed: incorrect user name or "
                      "password", user, p->serverName);
  }
  return VIX_OK;
}

EXPORT VixError
VixDiskLib_ConnectEx (const VixDiskLibConnectParams *p, char readOnly,
                      const char *snapshotRef, const char *transportModes,
                      VixDiskLibConnection *connection)
{
  VixError err = VIX_OK;
  struct fake_connection *c = NULL;
  const char *root = NULL;
  int remote;

  fake_clear_error ();
  fake_serial_enter ("VixDiskLib_ConnectEx");
  remote = p != NULL && p->serverName != NULL && *p->serverName != '\0';
  if (!fake_initialized ())
    err = fake_fail (VIX_E_DISK_NOINIT, "ConnectEx before InitEx");
  else if (p == NULL || connection == NULL)
    err = fake_fail (VIX_E_INVALID_ARG, "NULL %s",
                     p == NULL ? "connectParams" : "connection");
  else if (remote)
    err = check_remote (p, &root);

  if (err == VIX_OK && (c = calloc (1, sizeof *c)) == NULL)
    err = fake_fail (VIX_E_OUT_OF_MEMORY, "connection");
  else if (err == VIX_OK) {
    c->magic = FAKE_CONN_MAGIC;
    c->id = __atomic_add_fetch (&next_conn_id, 1, __ATOMIC_RELAXED);
    c->remote = remote;
    c->readonly = readOnly != 0;
    c->root = root ? strdup (root) : NULL;
    c->snapshot = snapshotRef && *snapshotRef ? strdup (snapshotRef) : NULL;
    c->transports = transportModes && *transportModes ?
      strdup (transportModes) : NULL;
    *connection = c;
    if (getenv ("FAKEVDDK_NULL_CONNECTION")) {
      /* A VDDK may hand out any value, NULL included, as a handle. */
      __atomic_store_n (&null_conn, c, __ATOMIC_RELEASE);
      *connection = NULL;
    }
  }

  fake_logline ("VixDiskLib_ConnectEx vmxSpec=%s server=%s port=%u "
                "nfcHostPort=%u thumbprint=%s credType=%d user=%s "
                "password=%s%s readOnly=%d snapshotRef=%s transports=%s "
                "conn=%u result=%llu",
                p ? fake_str (p->vmxSpec) : "(null)",
                p ? fake_str (p->serverName) : "(null)",
                p ? p->port : 0, p ? p->nfcHostPort : 0,
                p ? fake_str (p->thumbPrint) : "(null)",
                p ? p->credType : 0,
                p && p->credType == VIXDISKLIB_CRED_UID ?
                fake_str (p->creds.uid.userName) :
                p && p->credType == VIXDISKLIB_CRED_SESSIONID ?
                fake_str (p->creds.sessionId.userName) : "(null)",
                p && p->credType == VIXDISKLIB_CRED_UID &&
                p->creds.uid.password ? "<hidden>" :
                p && p->credType == VIXDISKLIB_CRED_SESSIONID &&
                p->creds.sessionId.key ? "<hidden>" : "(null)",
                p && p->credType == VIXDISKLIB_CRED_SESSIONID ?
                " cookie=<hidden>" : "",
                readOnly, fake_str (snapshotRef), fake_str (transportModes),
                c ? c->id : 0, (unsigned long long) err);
  fake_serial_leave ();
  return err;
}

EXPORT VixError
VixDiskLib_Disconnect (VixDiskLibConnection c)
{
  VixError err = VIX_OK;
  unsigned id = 0;

  fake_clear_error ();
  fake_serial_enter ("VixDiskLib_Disconnect");
  if (c == NULL && (c = fake_conn_get (NULL)) != NULL)
    __atomic_store_n (&null_conn, NULL, __ATOMIC_RELEASE);
  if (!fake_conn_valid (c))
    err = fake_fail (VIX_E_INVALID_HANDLE, "connection %p", (void *) c);
  else {
    id = c->id;
    /* The struct itself is never freed, so a stale handle is detected. */
    c->magic = FAKE_DEAD_MAGIC;
    free (c->root);
    free (c->snapshot);
    free (c->transports);
    c->root = c->snapshot = c->transports = NULL;
  }
  fake_logline ("VixDiskLib_Disconnect conn=%u result=%llu",
                id, (unsigned long long) err);
  fake_serial_leave ();
  return err;
}
