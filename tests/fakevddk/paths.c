/* Sendense capture — fake libvixDiskLib: from a VDDK path to a local file.
 *
 * Remote mode (ConnectEx had a serverName): "[ds] a/b.vmdk" is
 * $FAKEVDDK_ROOT/ds/a/b-S-flat.vmdk when the connection has snapshotRef S
 * and that file exists, else $FAKEVDDK_ROOT/ds/a/b-flat.vmdk.
 * Local mode: "/x/b.vmdk" is /x/b-S-flat.vmdk (same rule), else
 * /x/b-flat.vmdk if it exists, else the path itself (so any raw file works).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fakevddk.h"

static int
exists (const char *path)
{
  return access (path, F_OK) == 0;
}

/* "dir/b.vmdk" -> "dir/b" (malloc'd); names without .vmdk are kept. */
static char *
stem (const char *path)
{
  size_t n = strlen (path);
  char *s;

  if (n > 5 && strcmp (path + n - 5, ".vmdk") == 0)
    n -= 5;
  s = malloc (n + 1);
  if (s) {
    memcpy (s, path, n);
    s[n] = '\0';
  }
  return s;
}

static char *
join (const char *a, const char *b, const char *c, const char *d)
{
  size_t n = strlen (a) + strlen (b) + strlen (c) + strlen (d) + 1;
  char *s = malloc (n);

  if (s)
    snprintf (s, n, "%s%s%s%s", a, b, c, d);
  return s;
}

/* Try STEM-SNAP-flat.vmdk then STEM-flat.vmdk; then FALLBACK if set. */
static char *
pick (const char *st, const char *snapshot, const char *fallback,
      const char *requested)
{
  char *p;

  if (snapshot && *snapshot) {
    p = join (st, "-", snapshot, "-flat.vmdk");
    if (p && exists (p))
      return p;
    free (p);
  }
  p = join (st, "-flat.vmdk", "", "");
  if (p && exists (p))
    return p;
  if (fallback && exists (fallback)) {
    free (p);
    return strdup (fallback);
  }
  if (p == NULL) {
    fake_fail (VIX_E_OUT_OF_MEMORY, "mapping %s", requested);
    return NULL;
  }
  if (fallback)
    fake_fail (VIX_E_FILE_NOT_FOUND, "%s (nor %s) for %s",
               fallback, p, requested);
  else
    fake_fail (VIX_E_FILE_NOT_FOUND, "%s for %s", p, requested);
  free (p);
  return NULL;
}

/* The flat file VixDiskLib_Create makes for a local descriptor path:
 * "/x/b.vmdk" -> "/x/b-flat.vmdk" (malloc'd); NULL (error recorded) when
 * path does not end in .vmdk.
 */
char *
fake_flat_path (const char *path)
{
  size_t n = strlen (path);
  char *st, *flat;

  if (n <= 5 || strcmp (path + n - 5, ".vmdk") != 0) {
    fake_fail (VIX_E_INVALID_ARG, "%s: a disk to create must end in .vmdk",
               path);
    return NULL;
  }
  st = stem (path);
  flat = st ? join (st, "-flat.vmdk", "", "") : NULL;
  free (st);
  if (flat == NULL)
    fake_fail (VIX_E_OUT_OF_MEMORY, "mapping %s", path);
  return flat;
}

char *
fake_map_path (const struct fake_connection *c, const char *path)
{
  char *st, *res;

  if (!c->remote) {
    st = stem (path);
    if (st == NULL) {
      fake_fail (VIX_E_OUT_OF_MEMORY, "mapping %s", path);
      return NULL;
    }
    res = pick (st, c->snapshot, path, path);
    free (st);
    return res;
  }

  /* Remote: "[datastore] relative/path.vmdk". */
  {
    const char *rb = path[0] == '[' ? strchr (path, ']') : NULL;
    const char *rel;
    char *ds, *local;

    if (rb == NULL || rb == path + 1) {
      fake_fail (VIX_E_INVALID_ARG,
                 "remote disk path %s is not of the form \"[datastore] "
                 "dir/disk.vmdk\"", path);
      return NULL;
    }
    rel = rb + 1;
    while (*rel == ' ')
      rel++;
    if (*rel == '\0' || *rel == '/' || strstr (rel, "..") != NULL) {
      fake_fail (VIX_E_INVALID_ARG, "bad datastore path in %s", path);
      return NULL;
    }
    ds = strndup (path + 1, rb - path - 1);
    if (ds == NULL) {
      fake_fail (VIX_E_OUT_OF_MEMORY, "mapping %s", path);
      return NULL;
    }
    local = join (c->root, "/", ds, "/");
    free (ds);
    if (local == NULL) {
      fake_fail (VIX_E_OUT_OF_MEMORY, "mapping %s", path);
      return NULL;
    }
    st = stem (rel);
    res = NULL;
    if (st) {
      char *full = join (local, st, "", "");
      if (full)
        res = pick (full, c->snapshot, NULL, path);
      else
        fake_fail (VIX_E_OUT_OF_MEMORY, "mapping %s", path);
      free (full);
      free (st);
    }
    else
      fake_fail (VIX_E_OUT_OF_MEMORY, "mapping %s", path);
    free (local);
    return res;
  }
}
