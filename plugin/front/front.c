/* nbdkit-sendense-plugin: the C front of the Sendense capture plugin.
 *
 * The plugin proper is written in Go (sendense-plugin-go.so, beside this
 * file).  A Go runtime does not survive fork(), and nbdkit forks after
 * loading its plugin when it daemonizes and in captive (--run) mode, so
 * nbdkit cannot load the Go library directly.  This front is what nbdkit
 * loads.  It
 *
 *  - records the key=value parameters (reading password= through
 *    nbdkit_read_password, passing booleans and sizes through nbdkit's
 *    parsers, and making path parameters absolute, because nbdkit chdirs
 *    to / before serving in background mode);
 *  - answers --help, --dump-plugin, thread_model and get_ready itself;
 *  - in config_complete, before nbdkit forks or serves: re-executes nbdkit
 *    with VDDK's directory in LD_LIBRARY_PATH when it is not there (as
 *    nbdkit-vddk-plugin does, see reexec below), checks the parameters in
 *    a short-lived child process that loads the Go library, replays them
 *    and runs Go's config_complete, and loads VDDK (dlopen RTLD_NOW, every
 *    required function resolved, no VixDiskLib call), so that bad
 *    parameters and a VDDK that cannot be loaded fail nbdkit at start-up
 *    in every mode;
 *  - in after_fork, which runs in the serving process, loads the Go library
 *    for real, replays the parameters and forwards every callback to it.
 *
 * The Go library's entry points are listed once in GO_CALLBACKS below; the
 * VixDiskLib functions once in vddk/stubs.h, through vddk/loader.c, which
 * is compiled into this file's library too (with hidden visibility).
 */

#define _GNU_SOURCE
#define NBDKIT_API_VERSION 2

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nbdkit-plugin.h>

#include "vixdisklib.h"

#ifndef SENDENSE_VERSION
#define SENDENSE_VERSION "0.0.0-dev"
#endif

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#define GO_LIBRARY "sendense-plugin-go.so"
#define DEFAULT_LIBDIR "/usr/lib/vmware-vix-disklib"

/* The environment of a re-executed nbdkit: the directory prepended to
 * LD_LIBRARY_PATH, and LD_LIBRARY_PATH as it was (absent when it was
 * unset).  Removed, and LD_LIBRARY_PATH restored, as soon as the front
 * loads, so that nothing nbdkit starts (--run) sees a difference.
 */
#define ENV_REEXEC_DIR "SENDENSE_REEXEC_DIR"
#define ENV_REEXEC_ORIG "SENDENSE_REEXEC_LD_LIBRARY_PATH"

/* -D sendense.stats=1 and -D sendense.datapath=1 (nbdkit sets these). */
NBDKIT_DLL_PUBLIC int sendense_debug_stats;
NBDKIT_DLL_PUBLIC int sendense_debug_datapath;

/* Every function the Go library exports: (name, return type, arguments).
 * Connection handles are opaque non-zero integers (Go cgo.Handle values).
 */
#define GO_CALLBACKS(X)                                                   \
  X (config, int, (const char *key, const char *value))                   \
  X (config_complete, int, (void))                                        \
  X (debug, void, (const char *name, int value))                          \
  X (after_fork, int, (void))                                             \
  X (unload, void, (void))                                                \
  X (open, uintptr_t, (int readonly))                                     \
  X (close, void, (uintptr_t h))                                          \
  X (get_size, int64_t, (uintptr_t h))                                    \
  X (block_size, int, (uintptr_t h, uint32_t *min, uint32_t *pref,        \
                       uint32_t *max))                                    \
  X (pread, int, (uintptr_t h, void *buf, uint32_t count,                 \
                  uint64_t offset, uint32_t flags))                       \
  X (can_write, int, (uintptr_t h))                                       \
  X (pwrite, int, (uintptr_t h, const void *buf, uint32_t count,          \
                   uint64_t offset, uint32_t flags))                      \
  X (can_flush, int, (uintptr_t h))                                       \
  X (flush, int, (uintptr_t h, uint32_t flags))                           \
  X (zero, int, (uintptr_t h, uint32_t count, uint64_t offset,            \
                 uint32_t flags))                                         \
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
static int reexeced;              /* this nbdkit is a re-execution */
static struct vdk_lib *vddk;      /* loaded by the check; never unloaded */

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
  const char *orig;

  if (getenv (ENV_REEXEC_DIR)) {
    reexeced = 1;
    orig = getenv (ENV_REEXEC_ORIG);
    if (orig)
      setenv ("LD_LIBRARY_PATH", orig, 1);
    else
      unsetenv ("LD_LIBRARY_PATH");
    unsetenv (ENV_REEXEC_ORIG);
    unsetenv (ENV_REEXEC_DIR);
  }

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
    if (strcmp (params[i].key, "password") == 0 ||
        strcmp (params[i].key, "cookie") == 0)
      explicit_bzero (params[i].value, strlen (params[i].value));
    free (params[i].key);
    free (params[i].value);
  }
  free (params);
  free (go_library);
}

/* Parameters naming local files, made absolute while the working
 * directory is still the user's.  file= is a local path only when it
 * does not name a datastore ("[ds] dir/disk.vmdk").  config= must exist
 * (nbdkit_realpath), as in nbdkit-vddk-plugin.
 */
static int
is_path_param (const char *key, const char *value)
{
  return strcmp (key, "libdir") == 0 ||
         strcmp (key, "changed-areas") == 0 ||
         (strcmp (key, "file") == 0 && value[0] != '[');
}

/* Boolean parameters: normalised with nbdkit_parse_bool, so they accept
 * exactly what nbdkit-vddk-plugin accepts.
 */
static int
is_bool_param (const char *key)
{
  static const char *const keys[] = {
    "single-link", "unbuffered", "create", "noreexec", "readonly",
  };
  size_t i;

  for (i = 0; i < sizeof keys / sizeof keys[0]; ++i)
    if (strcmp (key, keys[i]) == 0)
      return 1;
  return 0;
}

static int
front_config (const char *key, const char *value)
{
  struct param *p;
  char *v;

  if (strcmp (key, "password") == 0) {
    /* Handles "+FILE", "-" and "-FD" once, before anything forks; the
     * password may be empty.
     */
    if (nbdkit_read_password (value, &v) == -1)
      return -1;
  }
  else if (is_bool_param (key)) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    v = strdup (r ? "true" : "false");
  }
  else if (strcmp (key, "create-size") == 0) {
    int64_t n = nbdkit_parse_size (value);
    if (n == -1)
      return -1;
    if (asprintf (&v, "%" PRIi64, n) == -1)
      v = NULL;
  }
  else if (strcmp (key, "config") == 0 && value[0] != '\0') {
    v = nbdkit_realpath (value);
    if (v == NULL)
      return -1;
  }
  else if (is_path_param (key, value) && value[0] != '\0') {
    v = nbdkit_absolute_path (value);
    if (v == NULL)
      return -1;
  }
  else
    v = strdup (value);
  if (v == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
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

static int
param_true (const char *key)
{
  const char *v = param_value (key);
  return v && strcmp (v, "true") == 0;
}

static const char *
libdir (void)
{
  const char *l = param_value ("libdir");
  return l ? l : DEFAULT_LIBDIR;
}

/* Re-executing nbdkit (nbdkit-vddk-plugin's reexec, LIBRARY LOCATION in
 * docs/nbdkit-sendense-plugin.md).  VDDK's libraries need the other
 * libraries of their directory, which the dynamic linker finds through
 * LD_LIBRARY_PATH only, and reads only when a process starts.  So when
 * dir is not in it, nbdkit is executed again, same process, same
 * arguments (/proc/self/cmdline), with dir prepended.  The password was
 * read once already (a prompt or a pipe cannot be read twice): every
 * password= argument is replaced by password=-FD of a memfd holding it,
 * which nbdkit_read_password reads and closes; it never touches a disk.
 * Under socket activation nbdkit has taken LISTEN_FDS and LISTEN_PID out
 * of the environment and made the sockets close-on-exec: they are given
 * back (listening sockets from fd 3 that are close-on-exec can only be
 * those, since nbdkit binds its own after config_complete).  Returns only
 * when the re-execution could not be done (then VDDK is loaded without
 * it, and a library that needs it fails the load check).
 */
static void
reexec (const char *dir)
{
  const char *env = getenv ("LD_LIBRARY_PATH");
  const char *password = param_value ("password");
  char *cmdline = NULL, *ldpath = NULL, *pwarg = NULL, **argv = NULL;
  char nfds_str[16], pid_str[16];
  size_t len = 0, cap = 0, argc = 0, i;
  int fd, pwfd = -1, nfds = 0;
  ssize_t r;

  if (env && *env) {
    size_t n = strlen (dir);
    const char *s = env;
    while (s) {                 /* already in it: nothing to do */
      if (strncmp (s, dir, n) == 0 && (s[n] == ':' || s[n] == '\0'))
        return;
      s = strchr (s, ':');
      if (s)
        s++;
    }
  }

  fd = open ("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    nbdkit_debug ("sendense: /proc/self/cmdline: %m: not re-executing");
    return;
  }
  for (;;) {
    if (len == cap) {
      char *c = realloc (cmdline, cap = cap ? 2 * cap : 4096);
      if (c == NULL)
        goto out;
      cmdline = c;
    }
    r = read (fd, cmdline + len, cap - len);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    len += r;
  }
  close (fd);
  fd = -1;
  if (len == 0 || cmdline[len - 1] != '\0')
    goto out;

  argv = calloc (len + 2, sizeof *argv);
  if (argv == NULL)
    goto out;
  for (i = 0; i < len; i += strlen (cmdline + i) + 1)
    if (strncmp (cmdline + i, "password=", 9) != 0)
      argv[argc++] = cmdline + i;
  if (password) {
    pwfd = memfd_create ("sendense-password", 0);
    if (pwfd == -1 ||
        write (pwfd, password, strlen (password)) != (ssize_t) strlen (password) ||
        lseek (pwfd, 0, SEEK_SET) == -1 ||
        asprintf (&pwarg, "password=-%d", pwfd) == -1) {
      nbdkit_debug ("sendense: passing the password on: %m: not re-executing");
      pwarg = NULL;
      goto out;
    }
    argv[argc++] = pwarg;
  }
  argv[argc] = NULL;

  if (asprintf (&ldpath, "%s%s%s", dir, env && *env ? ":" : "",
                env && *env ? env : "") == -1) {
    ldpath = NULL;
    goto out;
  }
  for (fd = 3; fd != pwfd; fd++) {
    int flags = fcntl (fd, F_GETFD), listening = 0;
    socklen_t n = sizeof listening;

    if (flags == -1 || !(flags & FD_CLOEXEC) ||
        getsockopt (fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) == -1 ||
        !listening)
      break;
    nfds++;
  }
  fd = -1;
  snprintf (nfds_str, sizeof nfds_str, "%d", nfds);
  snprintf (pid_str, sizeof pid_str, "%ld", (long) getpid ());
  if (setenv (ENV_REEXEC_DIR, dir, 1) == -1 ||
      (env && setenv (ENV_REEXEC_ORIG, env, 1) == -1) ||
      setenv ("LD_LIBRARY_PATH", ldpath, 1) == -1 ||
      (nfds && (setenv ("LISTEN_FDS", nfds_str, 1) == -1 ||
                setenv ("LISTEN_PID", pid_str, 1) == -1)))
    goto restore;
  for (i = 0; i < (size_t) nfds; ++i)
    fcntl (3 + i, F_SETFD, fcntl (3 + i, F_GETFD) & ~FD_CLOEXEC);
  nbdkit_debug ("sendense: re-executing nbdkit with LD_LIBRARY_PATH=%s%s",
                ldpath, nfds ? " (socket activation)" : "");
  fflush (NULL);
  execv ("/proc/self/exe", argv);
  nbdkit_debug ("sendense: execv /proc/self/exe: %m: not re-executing");

 restore:
  for (i = 0; i < (size_t) nfds; ++i)
    fcntl (3 + i, F_SETFD, fcntl (3 + i, F_GETFD) | FD_CLOEXEC);
  if (nfds) {
    unsetenv ("LISTEN_FDS");
    unsetenv ("LISTEN_PID");
  }
  if (env)
    setenv ("LD_LIBRARY_PATH", env, 1);
  else
    unsetenv ("LD_LIBRARY_PATH");
  unsetenv (ENV_REEXEC_DIR);
  unsetenv (ENV_REEXEC_ORIG);
 out:
  if (fd >= 0)
    close (fd);
  if (pwfd >= 0)
    close (pwfd);
  free (pwarg);
  free (ldpath);
  free (argv);
  free (cmdline);
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
  go.debug ("stats", sendense_debug_stats);
  go.debug ("datapath", sendense_debug_datapath);
  return 0;
}

/* Check the parameters in a child process, so that bad ones fail here,
 * before nbdkit forks into the background or runs the --run command.
 */
static int
check_params (void)
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
front_config_complete (void)
{
  char path[PATH_MAX], tried[8192], err[2048];
  int found;

  found = vdk_find (libdir (), path, sizeof path, tried, sizeof tried) > 0;
  if (found && !reexeced && !param_true ("noreexec")) {
    char dir[PATH_MAX], *slash;

    snprintf (dir, sizeof dir, "%s", path);
    slash = strrchr (dir, '/');
    if (slash) {
      *slash = '\0';
      reexec (dir);             /* returns only if it did not happen */
    }
  }
  if (check_params () == -1)
    return -1;
  if (!found) {                 /* the Go check says so too */
    nbdkit_error ("sendense: libdir=%s: no libvixDiskLib: tried %s",
                  libdir (), tried);
    return -1;
  }

  /* Load VDDK now, before nbdkit forks: dlopen and dlsym only, no
   * VixDiskLib call (InitEx starts threads: after the fork).  It stays
   * loaded; the Go side's dlopen after the fork gets the same library.
   */
  switch (vdk_load (path, &vddk, err, sizeof err)) {
  case 0:
    nbdkit_debug ("sendense: VDDK %s loads", path);
    return 0;
  case -2:
    nbdkit_error ("sendense: libdir=%s: %s lacks the required function(s) "
                  "%s: this is not a usable VDDK (VDDK 6.5 or later is "
                  "needed)", libdir (), path, err);
    return -1;
  default:
    nbdkit_error ("sendense: libdir=%s: cannot load VDDK: %s "
                  "(see LIBRARY LOCATION in nbdkit-sendense-plugin(1))",
                  libdir (), err);
    return -1;
  }
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

/* vddk_transport_modes=: the modes this VDDK offers, as
 * nbdkit-vddk-plugin prints them (VixDiskLib_ListTransportModes, which
 * our plugin does not otherwise need, between InitEx and Exit).
 */
static void
print_transport_modes (void *dl)
{
  VixError (*initex) (uint32_t, uint32_t, VixDiskLibGenericLogFunc *,
                      VixDiskLibGenericLogFunc *, VixDiskLibGenericLogFunc *,
                      const char *, const char *);
  void (*exit_fn) (void);
  const char *(*list) (void);
  const char *modes;

  *(void **) &initex = dlsym (dl, "VixDiskLib_InitEx");
  *(void **) &exit_fn = dlsym (dl, "VixDiskLib_Exit");
  *(void **) &list = dlsym (dl, "VixDiskLib_ListTransportModes");
  if (initex == NULL || exit_fn == NULL || list == NULL ||
      initex (6, 5, NULL, NULL, NULL, libdir (), param_value ("config")) != 0)
    return;
  modes = list ();
  if (modes)
    printf ("vddk_transport_modes=%s\n", modes);
  exit_fn ();
}

/* --dump-plugin: nbdkit-vddk-plugin's vddk_* keys (the library version
 * and path, its transport modes, one VixDiskLib_<name>=1 line per
 * function found, when the library loads), and ours.  Loading here is
 * dlopen and dlsym, and InitEx/Exit for the transport modes, as
 * nbdkit-vddk-plugin does.
 */
static void
front_dump_plugin (void)
{
  char path[PATH_MAX], tried[8192];
  int version = vdk_find (libdir (), path, sizeof path, tried, sizeof tried);
  void *dl = NULL;
  int i;

  printf ("sendense_version=%s\n", SENDENSE_VERSION);
  printf ("sendense_go_library=%s\n", go_library ? go_library : "");
  printf ("sendense_go_library_found=%s\n",
          go_library && access (go_library, R_OK) == 0 ? "yes" : "no");
  printf ("vddk_default_libdir=%s\n", DEFAULT_LIBDIR);
  printf ("vddk_has_nfchostport=1\n");
  printf ("vddk_libdir=%s\n", libdir ());
  if (version > 0) {
    printf ("vddk_library=%s\n", path);
    dl = dlopen (path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL)
      printf ("vddk_load_error=%s\n", dlerror ());
  }
  printf ("vddk_found=%s\n", version > 0 ? "yes" : "no");
  printf ("vddk_loaded=%s\n", dl ? "yes" : "no");
  if (dl) {
    Dl_info info;
    char *real = NULL;
    void *initex = dlsym (dl, "VixDiskLib_InitEx");

    printf ("vddk_library_version=%d\n", version);
    if (initex && dladdr (initex, &info) != 0 && info.dli_fname)
      real = realpath (info.dli_fname, NULL);
    if (real == NULL)
      real = realpath (path, NULL);
    if (real)
      printf ("vddk_dll=%s\n", real);
    free (real);
    print_transport_modes (dl);
    for (i = 0; i < VDK_FN_COUNT; ++i)
      if (dlsym (dl, vdk_fn_name (i)))
        printf ("%s=1\n", vdk_fn_name (i));
    /* Not in stubs.h (we do not call it), but nbdkit-vddk lists it. */
    if (dlsym (dl, "VixDiskLib_ListTransportModes"))
      printf ("VixDiskLib_ListTransportModes=1\n");
  }
  printf ("sendense_extents=yes\n");
  printf ("sendense_cbt=yes\n");
  printf ("sendense_write=yes\n");
  fflush (stdout);
}

#define sendense_config_help \
  "file=<DISK>  (required) [datastore] dir/disk.vmdk, or a local path.\n" \
  "libdir=<DIR>           VDDK directory (default " DEFAULT_LIBDIR ").\n" \
  "server=<HOST>          vCenter or ESXi host (absent: local file).\n" \
  "port=<PORT>            Server port (default 443).\n" \
  "user=<USER>            User name.\n" \
  "password=<PASSWORD>    Password, +FILE, - (ask) or -FD (may be empty).\n" \
  "cookie=<COOKIE>        vSphere session cookie (instead of logging in).\n" \
  "thumbprint=<SHA1>      SHA-1 thumbprint of the server certificate.\n" \
  "vm=moref=<MOREF>       The VM, e.g. vm=moref=vm-42.\n" \
  "snapshot=<MOREF>       The snapshot to read, e.g. snapshot-7 (read-only).\n" \
  "transports=<MODE:..>   VDDK transport modes, e.g. nbdssl:nbd.\n" \
  "compression=none|zlib|fastlz|skipz  NBD transport compression.\n" \
  "config=<FILE>          VDDK configuration file.\n" \
  "nfchostport=<PORT>     ESXi NFC port (default 902).\n" \
  "single-link=true       Open the current link only, not the chain.\n" \
  "unbuffered=true        Disable host caching.\n" \
  "vimapiver=<VER>        Ignored (as nbdkit-vddk-plugin does).\n" \
  "create=true            Create the local VMDK before serving it.\n" \
  "create-size=<SIZE>     Size of the created disk (required with create).\n" \
  "create-type=<TYPE>     monolithic-sparse (default), monolithic-flat, ...\n" \
  "create-adapter-type=<TYPE>  ide, scsi-buslogic (default), scsi-lsilogic.\n" \
  "create-hwversion=<VER> workstation5 (default), esx65, ... or a number.\n" \
  "readonly=true          Serve read-only even without nbdkit -r.\n" \
  "noreexec=true          Do not re-execute nbdkit to set LD_LIBRARY_PATH.\n" \
  "changeid=<ID>|*        CBT changeId of the previous backup: extents report\n" \
  "                       only blocks changed since it (* = in-use blocks).\n" \
  "disk-key=<KEY>         Device key of the disk (default: match file=).\n" \
  "changed-areas=<FILE>   Changed areas, one 'OFFSET LENGTH' per line."

/* A connection: the Go handle, and a lock serialising its extents calls
 * before they enter Go.  Reads and writes are not serialised here: the
 * vddk package submits them with VixDiskLib_ReadAsync/WriteAsync under
 * the VDDK handle's pthread mutex and waits for them without it
 * (vddk/handle.c), so they overlap.  Extents calls (QueryAllocatedBlocks)
 * are serialised by that mutex too, but letting nbdkit's worker threads
 * (16 per connection) wait for them here, in C, before a callback into
 * Go, measured faster under nbdcopy (bench/plugin.sh ratio 1.06-1.12
 * with this lock, 1.17-1.35 without).
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
front_can_write (void *h)
{
  return go.can_write (GO (h));
}

static int
front_pwrite (void *h, const void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  return go.pwrite (GO (h), buf, count, offset, flags);
}

static int
front_can_flush (void *h)
{
  return go.can_flush (GO (h));
}

static int
front_flush (void *h, uint32_t flags)
{
  return go.flush (GO (h), flags);
}

/* FUA: the Go side flushes after the write (VixDiskLib_Flush), as
 * nbdkit-vddk-plugin does.
 */
static int
front_can_fua (void *h)
{
  (void) h;
  return NBDKIT_FUA_NATIVE;
}

static int
front_zero (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  return go.zero (GO (h), count, offset, flags);
}

/* Zeroing writes zeroes where the disk is allocated: not fast. */
static int
front_can_fast_zero (void *h)
{
  (void) h;
  return 0;
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
  .description        = "Serve a VMware disk through VDDK, read-write or "
                        "a snapshot with CBT-aware extents",
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
  .can_write          = front_can_write,
  .pwrite             = front_pwrite,
  .can_flush          = front_can_flush,
  .flush              = front_flush,
  .can_fua            = front_can_fua,
  .zero               = front_zero,
  .can_fast_zero      = front_can_fast_zero,
  .can_extents        = front_can_extents,
  .extents            = front_extents,
  .can_multi_conn     = front_can_multi_conn,
  .export_description = front_export_description,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)
