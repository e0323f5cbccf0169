#!/usr/bin/env bash
# --help lists every parameter; --dump-plugin prints nbdkit-vddk-plugin's
# vddk_* keys (vddk_default_libdir, vddk_has_nfchostport,
# vddk_library_version, vddk_dll and one VixDiskLib_<name>=1 line per
# function the library has) and ours.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version

nbdkit $plugin --help > $tmp/help
for p in file libdir server port user password cookie thumbprint vm snapshot transports \
         compression config nfchostport single-link unbuffered vimapiver create create-size \
         create-type create-adapter-type create-hwversion readonly noreexec \
         changeid disk-key changed-areas; do
    grep -E "^$p=" $tmp/help || fail "--help does not list $p="
done

# Without a VDDK under the default libdir.
nbdkit $plugin --dump-plugin > $tmp/dump
cat $tmp/dump
grep "^name=sendense$" $tmp/dump
grep "^sendense_version=$(cat $top_srcdir/VERSION)$" $tmp/dump
grep "^sendense_go_library_found=yes$" $tmp/dump
grep "^thread_model=parallel$" $tmp/dump
grep "^vddk_default_libdir=/usr/lib/vmware-vix-disklib$" $tmp/dump
grep "^vddk_has_nfchostport=1$" $tmp/dump
if [ ! -e /usr/lib/vmware-vix-disklib ]; then
    grep "^vddk_found=no$" $tmp/dump
    if grep -E '^(vddk_library_version|vddk_dll|VixDiskLib_)' $tmp/dump; then fail "library keys without a library"; fi
fi

# With libdir= (nbdkit passes the parameters before --dump-plugin output).
nbdkit $plugin --dump-plugin libdir=$fakevddk > $tmp/dump2
cat $tmp/dump2
grep "^vddk_found=yes$" $tmp/dump2
grep "^vddk_loaded=yes$" $tmp/dump2
grep "^vddk_library_version=8$" $tmp/dump2
grep "^vddk_dll=$(realpath $fakevddk/lib64/libvixDiskLib.so.8)$" $tmp/dump2
# Every function the fake exports, each on its own line.
nm -D --defined-only $fakevddk/lib64/libvixDiskLib.so.8 | awk '/ VixDiskLib_/ { print $3 "=1" }' | sort > $tmp/want
grep '^VixDiskLib_' $tmp/dump2 | sort > $tmp/got
diff -u $tmp/want $tmp/got
test "$(wc -l < $tmp/got)" -eq 23
grep "^vddk_transport_modes=file:san:hotadd:nbdssl:nbd$" $tmp/dump2

# A library that does not load: the key says why, no library keys.
mkdir -p $tmp/bad/lib64
echo 'not ELF' > $tmp/bad/lib64/libvixDiskLib.so.9
nbdkit $plugin --dump-plugin libdir=$tmp/bad > $tmp/dump3
cat $tmp/dump3
grep "^vddk_loaded=no$" $tmp/dump3
grep "^vddk_load_error=.*libvixDiskLib.so.9" $tmp/dump3
if grep -E '^(vddk_library_version|VixDiskLib_)' $tmp/dump3; then fail "library keys for a library that does not load"; fi
