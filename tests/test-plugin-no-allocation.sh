#!/usr/bin/env bash
# A VDDK without QueryAllocatedBlocks: every block is reported as data,
# and reads are unchanged.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version

disk=$tmp/disk.img
make_disk "$disk" $((8*1024*1024)) 0 65536
FAKEVDDK_NO_QUERY_ALLOCATED=1 nbdkit -U - $(plugin_args) file="$disk" --run 'nbdinfo --map "$uri"' > $tmp/map
cat $tmp/map
test "$(wc -l < $tmp/map)" -eq 1
grep -E '^ +0 +8388608 +0 +data$' $tmp/map
FAKEVDDK_NO_QUERY_ALLOCATED=1 nbdkit -U - $(plugin_args) file="$disk" --run "nbdcopy \"\$uri\" $tmp/out.raw"
cmp "$disk" $tmp/out.raw
