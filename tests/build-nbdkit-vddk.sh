#!/usr/bin/env bash
# Build nbdkit's own VDDK plugin (nbdkit-vddk-plugin.so, which Debian does
# not ship) from Debian's nbdkit source, once per machine: the peer that
# tests/test-plugin-vddk-peer.sh runs against our fake VDDK. The plugin is
# cached in $SENDENSE_CACHE (default ~/.cache/sendense) and copied to OUT.
#
#   tests/build-nbdkit-vddk.sh VERSION SHA256 OUT
#
# VERSION is an upstream nbdkit version whose orig tarball the Debian
# archive configured for apt serves, SHA256 that tarball's checksum from
# Debian's .dsc; NBDKIT_TARBALL=FILE uses a local copy instead. Only
# plugins/vddk is built (its .c files and the two helpers it needs from
# common/utils), against the installed nbdkit's <nbdkit-plugin.h>, so it
# loads into the nbdkit that the tests run. A few seconds.
set -euo pipefail
version=$1 sha256=$2 out=$3
cache=${SENDENSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sendense}
so=$cache/nbdkit-vddk-$version.so
if [ ! -f "$so" ]; then
    mkdir -p "$cache"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    start=$SECONDS
    tarball=$work/nbdkit_$version.orig.tar.gz
    if [ -n "${NBDKIT_TARBALL:-}" ]; then
        cp "$NBDKIT_TARBALL" "$tarball"
    else
        # The Debian archive apt already uses (its main, not -security).
        mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 'Label: Debian' | head -n 1)
        [ -n "$mirror" ] || { echo "build-nbdkit-vddk: no Debian archive in apt's sources: set NBDKIT_TARBALL" >&2; exit 1; }
        echo "downloading nbdkit $version source (once per machine)..."
        # The archive drops a version once a newer one replaces it: then
        # the peer test skips (it says why) rather than failing the build.
        curl -fsSL -o "$tarball" "${mirror%/}/pool/main/n/nbdkit/nbdkit_$version.orig.tar.gz" || {
            echo "build-nbdkit-vddk: WARNING: cannot download nbdkit_$version.orig.tar.gz from $mirror" \
                 "(set NBDKIT_TARBALL=FILE, or the version and SHA-256 of Debian's current .dsc in the Makefile);" \
                 "test-plugin-vddk-peer.sh will skip" >&2
            exit 0
        }
    fi
    echo "$sha256  $tarball" | sha256sum -c --quiet ||
        { echo "build-nbdkit-vddk: nbdkit_$version.orig.tar.gz does not have the SHA-256 of Debian's .dsc" >&2; exit 1; }
    src=$work/nbdkit-$version
    tar -xzf "$tarball" -C "$work" "nbdkit-$version/plugins/vddk" "nbdkit-$version/common"
    # What configure would find on this system, for these files only.
    printf '#define PACKAGE_VERSION "%s"\n#define HAVE_DLADDR 1\n' "$version" > "$work/config.h"
    # libdir= is always given in our tests; the default is Debian-style.
    nice ${CC:-gcc} -O2 -w -fPIC -shared -D_GNU_SOURCE -pthread \
        -I"$work" -I"$src/common/include" -I"$src/common/utils" -I"$src/common/replacements" \
        -DVDDK_LIBDIR='"/usr/lib/vmware-vix-disklib"' \
        -o "$work/nbdkit-vddk-plugin.so" \
        "$src"/plugins/vddk/*.c "$src/common/utils/cleanup.c" "$src/common/utils/vector.c" -ldl
    # Every nbdkit_* function it calls must be one the installed nbdkit has.
    missing=$(comm -23 <(nm -u "$work/nbdkit-vddk-plugin.so" | awk '$2 ~ /^nbdkit_/ {print $2}' | sort -u) \
                       <(nm -D --defined-only "$(command -v nbdkit)" | awk '{print $3}' | sort -u))
    [ -z "$missing" ] || { echo "build-nbdkit-vddk: the installed nbdkit lacks:" $missing >&2; exit 1; }
    nbdkit "$work/nbdkit-vddk-plugin.so" --version >/dev/null
    mv "$work/nbdkit-vddk-plugin.so" "$so.tmp" && mv "$so.tmp" "$so"
    echo "built $so in $((SECONDS - start)) s"
fi
mkdir -p "$(dirname "$out")"
cp "$so" "$out.tmp" && mv "$out.tmp" "$out"
