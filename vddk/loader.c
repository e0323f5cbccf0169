/* Sendense capture — find libvixDiskLib under libdir, load it with dlopen
 * and resolve every stubs.h entry; build the ConnectParams struct.
 *
 * Plain C without Go: the C front (plugin/front) compiles this file too,
 * so that its load check before nbdkit forks finds the same file and
 * requires the same functions as the vddk package after the fork.
 */
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* The library under libdir, in nbdkit-vddk-plugin's order: for each VDDK
 * major, newest first, libdir/lib64/ (VDDK's own layout) then libdir
 * itself.  Writes the first existing regular file (following symlinks)
 * to path and returns its major; returns 0 when there is none, with the
 * paths tried, comma separated, in tried.
 */
int
vdk_find (const char *libdir, char *path, size_t pathlen,
          char *tried, size_t triedlen)
{
  static const int majors[] = { 9, 8, 7, 6 };
  static const char *const subdirs[] = { "/lib64", "" };
  size_t i, j, used = 0;
  struct stat st;

  if (triedlen)
    tried[0] = '\0';
  for (i = 0; i < sizeof majors / sizeof majors[0]; ++i)
    for (j = 0; j < sizeof subdirs / sizeof subdirs[0]; ++j) {
      int n = snprintf (path, pathlen, "%s%s/libvixDiskLib.so.%d",
                        libdir, subdirs[j], majors[i]);
      if (n < 0 || (size_t) n >= pathlen)
        continue;
      if (stat (path, &st) == 0 && S_ISREG (st.st_mode))
        return majors[i];
      if (used < triedlen)
        used += snprintf (tried + used, triedlen - used, "%s%s",
                          used ? ", " : "", path);
    }
  if (pathlen)
    path[0] = '\0';
  return 0;
}

/* After a failed dlopen: when path is an ELF file for another machine
 * than ours, say so (glibc says "No such file or directory" for some).
 */
static void
explain_elf (const char *path, char *errbuf, size_t errlen)
{
  unsigned char h[EI_NIDENT + 4];
  size_t used = strlen (errbuf);
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  ssize_t n;
  unsigned machine;

  if (fd == -1)
    return;
  n = read (fd, h, sizeof h);
  close (fd);
  if (n != (ssize_t) sizeof h || memcmp (h, ELFMAG, SELFMAG) != 0 ||
      used >= errlen)
    return;
  machine = h[EI_DATA] == ELFDATA2MSB ? (h[18] << 8) | h[19] : h[18] | (h[19] << 8);
  if (h[EI_CLASS] != ELFCLASS64)
    snprintf (errbuf + used, errlen - used,
              " (%s is a 32-bit ELF file: VDDK for Linux is 64-bit x86-64)",
              path);
  else if (machine != EM_X86_64)
    snprintf (errbuf + used, errlen - used,
              " (%s is an ELF file for machine %u%s, not x86-64: "
              "VDDK for Linux is x86-64 only)", path, machine,
              machine == EM_AARCH64 ? " (aarch64)" : "");
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
    explain_elf (path, errbuf, errlen);
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

/* The connect parameters for remote mode (server set), or all NULL/0 for
 * local mode (server NULL or empty).  The struct comes from
 * AllocateConnectParams when this VDDK has it (VMware's advice), else
 * from calloc; the strings are copies owned by the returned vdk_params.
 * A cookie selects VIXDISKLIB_CRED_SESSIONID (cookie, user, and the
 * password as the key), as nbdkit-vddk-plugin does.  NULL when out of
 * memory.  The password may be empty; NULL only when absent.
 */
struct vdk_params *
vdk_params_new (const struct vdk_lib *l, const char *vmxSpec,
                const char *server, const char *thumbprint, const char *user,
                const char *password, const char *cookie, uint32_t port,
                uint32_t nfcHostPort)
{
  struct vdk_params *v = calloc (1, sizeof *v);
  VixDiskLibConnectParams *p;

  if (v == NULL)
    return NULL;
  if (l->AllocateConnectParams) {
    v->p = l->AllocateConnectParams ();
    v->allocated = v->p != NULL;
  }
  else
    v->p = calloc (1, sizeof *v->p);
  if (v->p == NULL) {
    free (v);
    return NULL;
  }
  p = v->p;
  if (server == NULL || *server == '\0')
    return v;
  p->vmxSpec = v->vmxSpec = dup_or_null (vmxSpec);
  p->serverName = v->server = dup_or_null (server);
  p->thumbPrint = v->thumbprint = dup_or_null (thumbprint);
  v->user = dup_or_null (user);
  v->password = password ? strdup (password) : NULL;
  if (cookie && *cookie) {
    p->credType = VDK_CRED_SESSIONID;
    p->creds.sessionId.cookie = v->cookie = strdup (cookie);
    p->creds.sessionId.userName = v->user;
    p->creds.sessionId.key = v->password;
  }
  else {
    p->credType = VDK_CRED_UID;
    p->creds.uid.userName = v->user;
    p->creds.uid.password = v->password;
  }
  p->port = port;
  p->nfcHostPort = nfcHostPort;
  return v;
}

void
vdk_free_secret (char *s)
{
  if (s) {
    explicit_bzero (s, strlen (s));
    free (s);
  }
}

/* Free the parameters after the connection is closed: the struct goes
 * back to VDDK (FreeConnectParams) with our pointers cleared, so that VDDK
 * never frees or keeps strings it does not own; then ours are freed, the
 * secrets wiped.
 */
void
vdk_params_free (const struct vdk_lib *l, struct vdk_params *v)
{
  if (v == NULL)
    return;
  v->p->vmxSpec = v->p->serverName = v->p->thumbPrint = NULL;
  memset (&v->p->creds, 0, sizeof v->p->creds);
  if (v->allocated)
    l->FreeConnectParams (v->p);
  else
    free (v->p);
  free (v->vmxSpec);
  free (v->server);
  free (v->thumbprint);
  free (v->user);
  vdk_free_secret (v->password);
  vdk_free_secret (v->cookie);
  free (v);
}
