/* Sendense capture — load libvixDiskLib with dlopen and resolve every
 * stubs.h entry; build the ConnectParams struct.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vixdisklib.h"

static const struct {
  const char *name;
  int required;
} fns[VDK_FN_COUNT] = {
#define REQUIRED(name, ret, params) { "VixDiskLib_" #name, 1 },
#define OPTIONAL(name, ret, params) { "VixDiskLib_" #name, 0 },
#include "stubs.h"
#undef REQUIRED
#undef OPTIONAL
};

const char *
vdk_fn_name (int fn)
{
  return fn >= 0 && fn < VDK_FN_COUNT ? fns[fn].name : "?";
}

int
vdk_fn_required (int fn)
{
  return fn >= 0 && fn < VDK_FN_COUNT ? fns[fn].required : 0;
}

int
vdk_fn_present (const struct vdk_lib *l, int fn)
{
  switch (fn) {
#define REQUIRED(name, ret, params) \
  case VDK_FN_##name: return l->name != NULL;
#define OPTIONAL REQUIRED
#include "stubs.h"
#undef REQUIRED
#undef OPTIONAL
  default: return 0;
  }
}

/* dlopen PATH and resolve each function.  Returns 0 on success; -1 when
 * dlopen fails (errbuf: dlerror); -2 when required symbols are missing
 * (errbuf: their names, comma separated).  The library is never closed
 * once loaded: VDDK does not support being unloaded.
 */
int
vdk_load (const char *path, struct vdk_lib **out, char *errbuf, size_t errlen)
{
  struct vdk_lib *l;
  void *dl;
  size_t used = 0;

  errbuf[0] = '\0';
  dlerror ();
  dl = dlopen (path, RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    const char *e = dlerror ();
    snprintf (errbuf, errlen, "%s", e ? e : "dlopen failed");
    return -1;
  }
  l = calloc (1, sizeof *l);
  if (l == NULL) {
    snprintf (errbuf, errlen, "out of memory");
    dlclose (dl);
    return -1;
  }
  l->dl = dl;
#define REQUIRED(name, ret, params)                                     \
  *(void **) (&l->name) = dlsym (dl, "VixDiskLib_" #name);              \
  if (l->name == NULL && used < errlen)                                 \
    used += snprintf (errbuf + used, errlen - used, "%s%s",             \
                      used ? ", " : "", "VixDiskLib_" #name);
#define OPTIONAL(name, ret, params)                                     \
  *(void **) (&l->name) = dlsym (dl, "VixDiskLib_" #name);
#include "stubs.h"
#undef REQUIRED
#undef OPTIONAL
  if (used > 0) {
    free (l);
    dlclose (dl);
    return -2;
  }
  *out = l;
  return 0;
}

static char *
dup_or_null (const char *s)
{
  return s && *s ? strdup (s) : NULL;
}

/* A ConnectParams for remote mode (server set), or all NULL/0 for local
 * mode (server NULL or empty).  Strings are copied; free with
 * vdk_params_free, which also wipes the password.
 */
VixDiskLibConnectParams *
vdk_params_new (const char *vmxSpec, const char *server,
                const char *thumbprint, const char *user,
                const char *password, uint32_t port, uint32_t nfcHostPort)
{
  VixDiskLibConnectParams *p = calloc (1, sizeof *p);

  if (p == NULL || server == NULL || *server == '\0')
    return p;
  p->vmxSpec = dup_or_null (vmxSpec);
  p->serverName = dup_or_null (server);
  p->thumbPrint = dup_or_null (thumbprint);
  p->credType = VDK_CRED_UID;
  p->creds.uid.userName = dup_or_null (user);
  p->creds.uid.password = password ? strdup (password) : NULL;
  p->port = port;
  p->nfcHostPort = nfcHostPort;
  return p;
}

void
vdk_free_secret (char *s)
{
  if (s) {
    explicit_bzero (s, strlen (s));
    free (s);
  }
}

void
vdk_params_free (VixDiskLibConnectParams *p)
{
  if (p == NULL)
    return;
  free (p->vmxSpec);
  free (p->serverName);
  free (p->thumbPrint);
  if (p->credType == VDK_CRED_UID) {
    free (p->creds.uid.userName);
    vdk_free_secret (p->creds.uid.password);
  }
  free (p);
}
