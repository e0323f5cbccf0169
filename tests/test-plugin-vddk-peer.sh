#!/usr/bin/env bash
# The fake VDDK stands in for a real one in the real nbdkit-vddk-plugin:
# it loads (every function nbdkit-vddk requires is there), reads, writes
# and creates; and the same command lines work with our plugin. Debian
# does not ship nbdkit-vddk: `make test` builds it from Debian's nbdkit
# source (tests/build-nbdkit-vddk.sh) into build/; NBDKIT_VDDK=PATH names
# another, else `nbdkit vddk` when it is installed.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdcopy --version
requires qemu-img --version
# Calls that overlap where VDDK forbids it abort the fake (and fail the
# test), for the peer's calling pattern as for ours.
export FAKEVDDK_STRICT=1
# A named or built peer must load; only an absent `nbdkit vddk` skips.
vddk=${NBDKIT_VDDK:-}
[ -n "$vddk" ] || [ ! -f "$builddir/nbdkit-vddk-plugin.so" ] ||
    vddk=$builddir/nbdkit-vddk-plugin.so
[ -n "$vddk" ] || { vddk=vddk; requires nbdkit vddk --dump-plugin; }
nbdkit "$vddk" --version

# Its --dump-plugin names our fake's functions, and loads it.
nbdkit "$vddk" --dump-plugin libdir=$fakevddk > $tmp/dump
cat $tmp/dump
grep '^vddk_library_version=8$' $tmp/dump
grep '^VixDiskLib_Create=1$' $tmp/dump
grep '^VixDiskLib_ListTransportModes=1$' $tmp/dump
grep '^vddk_transport_modes=file:san:hotadd:nbdssl:nbd$' $tmp/dump
# Ours prints the same nbdkit-vddk keys and functions.
nbdkit $plugin --dump-plugin libdir=$fakevddk > $tmp/ours
for k in $(grep -E '^(vddk_|VixDiskLib_)' $tmp/dump | cut -d= -f1); do
    grep -x "$(grep "^$k=" $tmp/dump)" $tmp/ours
done
grep '^VixDiskLib_WriteAsync=1$' $tmp/dump
grep '^VixDiskLib_AllocateConnectParams=1$' $tmp/dump

size=$((32*1024*1024))
make_disk $tmp/src.raw $size 0 $((1024*1024)) $((16*1024*1024)) 65536
# A thin flat VMDK of it, to compare the extents both plugins report.
qemu-img convert -f raw -O vmdk -o subformat=monolithicFlat $tmp/src.raw $tmp/thin.vmdk
for p in "$vddk" $plugin; do
    rm -f $tmp/new.vmdk $tmp/new-flat.vmdk
    # The same command lines for both: create, write, read back.
    nbdkit -U - "$p" libdir=$fakevddk $tmp/new.vmdk create=true create-size=32M \
        --run 'nbdcopy --flush '$tmp/src.raw' "$uri"'
    qemu-img compare -f raw -F vmdk $tmp/src.raw $tmp/new.vmdk
    nbdkit -U - -r "$p" libdir=$fakevddk $tmp/new.vmdk --run 'nbdcopy "$uri" '$tmp/back.raw
    cmp $tmp/src.raw $tmp/back.raw
    nbdkit -U - -r "$p" libdir=$fakevddk $tmp/thin.vmdk --run 'nbdinfo --map "$uri"' > $tmp/map
    cat $tmp/map
    grep -E '^ +0 +1048576 +0 +data$' $tmp/map
    grep -E '^ +1048576 +15728640 +3 +hole,zero$' $tmp/map
    grep -E '^ +16777216 +65536 +0 +data$' $tmp/map
done
# A disk whose end is not a whole 64 KiB allocation chunk (nbdkit's
# test-vddk-real-unaligned-chunk.sh, with a flat VMDK the fake reads).
dd if=/dev/urandom of=$tmp/odd.raw bs=512 count=$((3*128)) status=none
truncate -s $(( (4*128 + 3) * 512)) $tmp/odd.raw
qemu-img convert -f raw -O vmdk -o subformat=monolithicFlat $tmp/odd.raw $tmp/odd.vmdk
for p in "$vddk" $plugin; do
    nbdkit -U - -r "$p" libdir=$fakevddk $tmp/odd.vmdk --run 'nbdinfo --map "$uri"' > $tmp/map
    cat $tmp/map
    test "$(cat $tmp/map)" = "\
         0      196608    0  data
    196608       65536    3  hole,zero
    262144        1536    0  data"
done
# nbdkit-vddk has no zero callback: nbdkit writes zeroes for nbdcopy's
# zero requests, allocating the whole new disk. Ours writes zeroes only
# where the disk is allocated (plugin/handle.go), so it stays thin.
[ $(stat -c %b $tmp/new-flat.vmdk) -lt $((4*1024*1024/512)) ] ||
    fail "our plugin allocated $(du -h $tmp/new-flat.vmdk) for 1088 KiB of data"

