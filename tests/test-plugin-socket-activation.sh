#!/usr/bin/env bash
# Socket activation: the client starts nbdkit itself (LISTEN_FDS).
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires nbdcopy --version

disk=$tmp/disk.img
make_disk "$disk" $((16*1024*1024)) $((1024*1024)) $((1024*1024))
timeout 60 nbdinfo --map -- [ nbdkit $(plugin_args) file="$disk" ] > $tmp/map
cat $tmp/map
grep -E '^ +1048576 +1048576 +0 +data$' $tmp/map
timeout 60 nbdcopy -- [ nbdkit $(plugin_args) file="$disk" ] $tmp/out.raw
cmp "$disk" $tmp/out.raw
