#!/usr/bin/env bash
# The fake VDDK stands in for a real one in the real nbdkit-vddk-plugin:
# it loads (every function nbdkit-vddk requires is there), reads, writes
# and creates; and the same command lines work with our plugin. Runs when
# nbdkit has a vddk plugin (Debian does not ship one): NBDKIT_VDDK=PATH of
# nbdkit-vddk-plugin.so, or `nbdkit vddk` when it is installed.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdcopy --version
requires qemu-img --version
vddk=${NBDKIT_VDDK:-vddk}
requires nbdkit "$vddk" --dump-plugin

# Its --dump-plugin names our fake's functions, and loads it.
nbdkit "$vddk" --dump-plugin libdir=$fakevddk > $tmp/dump
cat $tmp/dump
grep '^vddk_library_version=8$' $tmp/dump
grep '^VixDiskLib_Create=1$' $tmp/dump
grep '^VixDiskLib_WriteAsync=1$' $tmp/dump
grep '^VixDiskLib_AllocateConnectParams=1$' $tmp/dump

size=$((32*1024*1024))
make_disk $tmp/src.raw $size 0 $((1024*1024)) $((16*1024*1024)) 65536
for p in "$vddk" $plugin; do
    rm -f $tmp/new.vmdk $tmp/new-flat.vmdk
    # The same command lines for both: create, write, read back.
    nbdkit -U - "$p" libdir=$fakevddk $tmp/new.vmdk create=true create-size=32M \
        --run 'nbdcopy --flush '$tmp/src.raw' "$uri"'
    qemu-img compare -f raw -F vmdk $tmp/src.raw $tmp/new.vmdk
    nbdkit -U - -r "$p" libdir=$fakevddk $tmp/new.vmdk --run 'nbdcopy "$uri" '$tmp/back.raw
    cmp $tmp/src.raw $tmp/back.raw
    nbdkit -U - -r "$p" libdir=$fakevddk $tmp/new.vmdk --run 'nbdinfo --map "$uri"' > $tmp/map
    grep -E '^ +0 +1048576 +0 +data$' $tmp/map
done
