/* nbdkit-sendense-plugin: the C front of the Sendense capture plugin.
 *
 * The plugin proper is written in Go (sendense-plugin-go.so, beside this
 * file).  A Go runtime does not survive fork(), and nbdkit forks after
 * loading its plugin when it daemonizes and in captive (--run) mode, so
 * nbdkit cannot load the Go library directly.  This front is what nbdkit
 * loads.  It
 *
 *  - records the key=value parameters (reading password= through
 *    nbdkit_read_password and making path parameters absolute, because
 *    nbdkit chdirs to / before serving in background mode);
 *  - answers --help, --dump-plugin, thread_model and get_ready itself;
 *  - in config_complete, checks the parameters in a short-lived child
 *    process that loads the Go library, replays them and runs Go's
 *    config_complete, so bad parameters fail before nbdkit forks or serves;
 *  - in after_fork, which runs in the serving process, loads the Go library
 *    for real, replays the parameters and forwards every callback to it.
 *
 * The Go library's entry points are listed once in GO_CALLBACKS below.
 */

#define _GNU_SOURCE
#define NBDKIT_API_VERSION 2

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nbdkit-plugin.h>

#ifndef SENDENSE_VERSION
#define SENDENSE_VERSION "0.0.0-dev"
#endif

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#define GO_LIBRARY "sendense-plugin-go.so"
#define DEFAULT_LIBDIR "/usr/lib/vmware-vix-disklib"

/* Every function the Go library exports: (name, return type, arguments).
 * Connection handles are opaque non-zero integers (Go cgo.Handle values).
 */
#define GO_CALLBACKS(X)                                                   \
  X (config, int, (const char *key, const char *value))                   \
  X (config_complete, int, (void))                                        \
  X (after_fork, int, (void))                                             \
  X (unload, void, (void))                                                \
  X (open, uintptr_t, (int readonly))                                     \
  X (close, void, (uintptr_t h))                                          \
  X (get_size, int64_t, (uintptr_t h))                                    \
  X (block_size, int, (uintptr_t h, uint32_t *min, uint32_t *pref,        \
                       uint32_t *max))                                    \
  X (pread, int, (uintptr_t h, void *buf, uint32_t count,                 \
                  uint64_t offset, uint32_t flags))                       \
  X (can_extents, int, (uintptr_t h))                                     \
  X (extents, int, (uintptr_t h, uint32_t count, uint64_t offset,         \
                    uint32_t flags, struct nbdkit_extents *extents))      \
  X (can_multi_conn, int, (uintptr_t h))                                  \
  X (export_description, const char *, (uintptr_t h))

static struct {
#define FIELD(name, ret, args) ret (*name) args;
  GO_CALLBACKS (FIELD)
#undef FIELD
} go;

static void *go_handle;           /* dlopen handle; never dlclosed */
static char *go_library;          /* absolute path of the Go library */

/* The recorded parameters, replayed into Go in order. */
struct param {
  char *key;
  char *value;
};
static struct param *params;
static size_t nr_params;

static const char *
param_value (const char *key)
{
  const char *v = NULL;
  size_t i;

  for (i = 0; i < nr_params; ++i)
    if (strcmp (params[i].key, key) == 0)
      v = params[i].value;
  return v;
}

static void
front_load (void)
{
  Dl_info info;
  char *self, *slash;

  /* Find our own file: the Go library sits beside it.  Resolve it now,
   * because nbdkit chdirs to / before after_fork in background mode.
   */
  if (dladdr ((void *) front_load, &info) == 0 || info.dli_fname == NULL)
    return;
  self = realpath (info.dli_fname, NULL);
  if (self == NULL)
    return;
  slash = strrchr (self, '/');
  if (slash == NULL) {
    free (self);
    return;
  }
  *slash = '\0';
  if (asprintf (&go_library, "%s/%s", self, GO_LIBRARY) == -1)
    go_library = NULL;
  free (self);
}

static void
front_unload (void)
{
  size_t i;

  if (go.unload)
    go.unload ();
  for (i = 0; i < nr_params; ++i) {
    if (strcmp (params[i].key, "password") == 0)
      explicit_bzero (params[i].value, strlen (params[i].value));
    free (params[i].key);
    free (params[i].value);
  }
  free (params);
  free (go_library);
}

/* Parameters naming local files, made absolute while the working
 * directory is still the user's.  file= is a local path only when it
 * does not name a datastore ("[ds] dir/disk.vmdk").
 */
static int
is_path_param (const char *key, const char *value)
{
  return strcmp (key, "libdir") == 0 ||
         strcmp (key, "config") == 0 ||
         strcmp (key, "changed-areas") == 0 ||
         (strcmp (key, "file") == 0 && value[0] != '[');
}

static int
front_config (const char *key, const char *value)
{
  struct param *p;
  char *v;

  if (strcmp (key, "password") == 0) {
    /* Handles "+FILE", "-" and "-FD" once, before anything forks. */
    if (nbdkit_read_password (value, &v) == -1)
      return -1;
  }
  else if (is_path_param (key, value) && value[0] != '\0') {
    v = nbdkit_absolute_path (value);
    if (v == NULL)
      return -1;
  }
  else {
    v = strdup (value);
    if (v == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }

  p = realloc (params, (nr_params + 1) * sizeof *params);
  if (p == NULL || (p[nr_params].key = strdup (key)) == NULL) {
    nbdkit_error ("realloc: %m");
    if (p)
      params = p;
    free (v);
    return -1;
  }
  params = p;
  params[nr_params++].value = v;
  return 0;
}

/* Load the Go library, resolve its entry points and replay the
 * parameters.  Only ever called in a process that will not fork again.
 */
static int
load_go (void)
{
  size_t i;

  if (go_handle)
    return 0;
  if (go_library == NULL) {
    nbdkit_error ("sendense: cannot locate %s next to the plugin", GO_LIBRARY);
    return -1;
  }
  go_handle = dlopen (go_library, RTLD_NOW | RTLD_LOCAL);
  if (go_handle == NULL) {
    nbdkit_error ("sendense: cannot load the Go plugin library: %s", dlerror ());
    return -1;
  }
#define RESOLVE(name, ret, args)                                          \
  go.name = (ret (*) args) dlsym (go_handle, "sendense_go_" #name);       \
  if (go.name == NULL) {                                                  \
    nbdkit_error ("sendense: %s: missing symbol sendense_go_%s "         \
                  "(plugin front and Go library from different builds?)", \
                  go_library, #name);                                     \
    return -1;                                                            \
  }
  GO_CALLBACKS (RESOLVE)
#undef RESOLVE

  for (i = 0; i < nr_params; ++i)
    if (go.config (params[i].key, params[i].value) == -1)
      return -1;
  return 0;
}

/* Check the parameters in a child process, so that bad ones fail here,
 * before nbdkit forks into the background or runs the --run command.
 */
static int
front_config_complete (void)
{
  pid_t pid;
  int status;

  fflush (NULL);
  pid = fork ();
  if (pid == -1) {
    nbdkit_error ("sendense: fork: %m");
    return -1;
  }
  if (pid == 0) {
    int r = load_go () == 0 && go.config_complete () == 0 ? 0 : 1;
    fflush (NULL);
    _exit (r);
  }
  while (waitpid (pid, &status, 0) == -1)
    if (errno != EINTR) {
      nbdkit_error ("sendense: waitpid: %m");
      return -1;
    }
  if (WIFEXITED (status) && WEXITSTATUS (status) == 0)
    return 0;
  if (WIFSIGNALED (status))
    nbdkit_error ("sendense: the parameter check crashed (signal %d)",
                  WTERMSIG (status));
  /* Otherwise the child has already printed the error. */
  return -1;
}

static int
front_get_ready (void)
{
  return 0;
}

static int
front_after_fork (void)
{
  if (load_go () == -1 || go.config_complete () == -1)
    return -1;
  return go.after_fork ();
}

static int
front_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

/* --dump-plugin: version, the Go library and whether a VDDK is found
 * under libdir (given on the command line, or the default).
 */
static void
front_dump_plugin (void)
{
  static const char *const versions[] = { "9", "8", "7", "6" };
  const char *libdir = param_value ("libdir");
  char path[PATH_MAX];
  size_t i;
  int found = 0;

  if (libdir == NULL)
    libdir = DEFAULT_LIBDIR;
  printf ("sendense_version=%s\n", SENDENSE_VERSION);
  printf ("sendense_go_library=%s\n", go_library ? go_library : "");
  printf ("sendense_go_library_found=%s\n",
          go_library && access (go_library, R_OK) == 0 ? "yes" : "no");
  printf ("vddk_default_libdir=%s\n", DEFAULT_LIBDIR);
  printf ("vddk_libdir=%s\n", libdir);
  for (i = 0; i < sizeof versions / sizeof versions[0]; ++i) {
    snprintf (path, sizeof path, "%s/lib64/libvixDiskLib.so.%s",
              libdir, versions[i]);
    if (access (path, R_OK) == 0) {
      printf ("vddk_library=%s\n", path);
      found = 1;
      break;
    }
  }
  printf ("vddk_found=%s\n", found ? "yes" : "no");
  printf ("sendense_extents=yes\n");
  printf ("sendense_cbt=yes\n");
  fflush (stdout);
}

#define sendense_config_help \
  "file=<DISK>  (required) [datastore] dir/disk.vmdk, or a local path.\n" \
  "libdir=<DIR>           VDDK directory (default " DEFAULT_LIBDIR ").\n" \
  "server=<HOST>          vCenter or ESXi host (absent: local file).\n" \
  "port=<PORT>            Server port (default 443).\n" \
  "user=<USER>            User name.\n" \
  "password=<PASSWORD>    Password, +FILE, - (ask) or -FD.\n" \
  "thumbprint=<SHA1>      SHA-1 thumbprint of the server certificate.\n" \
  "vm=moref=<MOREF>       The VM, e.g. vm=moref=vm-42.\n" \
  "snapshot=<MOREF>       The snapshot to read, e.g. snapshot-7.\n" \
  "transports=<MODE:..>   VDDK transport modes, e.g. nbdssl:nbd.\n" \
  "compression=none|zlib|fastlz|skipz  NBD transport compression.\n" \
  "config=<FILE>          VDDK configuration file.\n" \
  "nfchostport=<PORT>     ESXi NFC port (default 902).\n" \
  "changeid=<ID>|*        CBT changeId of the previous backup: extents report\n" \
  "                       only blocks changed since it (* = in-use blocks).\n" \
  "disk-key=<KEY>         Device key of the disk (default: match file=).\n" \
  "changed-areas=<FILE>   Changed areas, one 'OFFSET LENGTH' per line."

/* A connection: the Go handle, and a lock serialising its extents calls
 * before they enter Go.  Reads are not serialised here: the vddk package
 * submits them with VixDiskLib_ReadAsync under the VDDK handle's pthread
 * mutex and waits for them without it (vddk/handle.c), so they overlap.
 * Extents calls (QueryAllocatedBlocks) are serialised by that mutex too,
 * but letting nbdkit's worker threads (16 per connection) wait for them
 * here, in C, before a callback into Go, measured faster under nbdcopy
 * (bench/plugin.sh ratio 1.06-1.12 with this lock, 1.17-1.35 without).
 */
struct conn {
  uintptr_t go;
  pthread_mutex_t lock;
};

static void *
front_open (int readonly)
{
  struct conn *c;
  uintptr_t h = go.open (readonly);

  if (h == 0)
    return NULL;
  c = malloc (sizeof *c);
  if (c == NULL) {
    nbdkit_error ("malloc: %m");
    go.close (h);
    return NULL;
  }
  c->go = h;
  pthread_mutex_init (&c->lock, NULL);
  return c;
}

static void
front_close (void *h)
{
  struct conn *c = h;

  go.close (c->go);
  pthread_mutex_destroy (&c->lock);
  free (c);
}

#define GO(h) (((struct conn *) (h))->go)

static int64_t
front_get_size (void *h)
{
  return go.get_size (GO (h));
}

static int
front_block_size (void *h, uint32_t *min, uint32_t *pref, uint32_t *max)
{
  return go.block_size (GO (h), min, pref, max);
}

static int
front_pread (void *h, void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  return go.pread (GO (h), buf, count, offset, flags);
}

static int
front_can_extents (void *h)
{
  return go.can_extents (GO (h));
}

static int
front_extents (void *h, uint32_t count, uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents)
{
  struct conn *c = h;
  int r;

  pthread_mutex_lock (&c->lock);
  r = go.extents (c->go, count, offset, flags, extents);
  pthread_mutex_unlock (&c->lock);
  return r;
}

static int
front_can_multi_conn (void *h)
{
  return go.can_multi_conn (GO (h));
}

static const char *
front_export_description (void *h)
{
  return go.export_description (GO (h));
}

static struct nbdkit_plugin plugin = {
  .name               = "sendense",
  .longname           = "Sendense capture VMware disk plugin",
  .version            = SENDENSE_VERSION,
  .description        = "Serve a VMware disk snapshot through VDDK, with "
                        "CBT-aware extents",
  .load               = front_load,
  .unload             = front_unload,
  .config             = front_config,
  .config_complete    = front_config_complete,
  .config_help        = sendense_config_help,
  .magic_config_key   = "file",
  .dump_plugin        = front_dump_plugin,
  .thread_model       = front_thread_model,
  .get_ready          = front_get_ready,
  .after_fork         = front_after_fork,
  .open               = front_open,
  .close              = front_close,
  .get_size           = front_get_size,
  .block_size         = front_block_size,
  .pread              = front_pread,
  .can_extents        = front_can_extents,
  .extents            = front_extents,
  .can_multi_conn     = front_can_multi_conn,
  .export_description = front_export_description,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)
