#!/usr/bin/env bash
# Foreground mode (-f) on a unix socket, with a separate client.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdcopy --version

disk=$tmp/disk.img
make_disk "$disk" $((64*1024*1024)) 0 65536 $((32*1024*1024)) $((1024*1024))
sock=$tmp/sock
nbdkit -f -U $sock $(plugin_args) file="$disk" &
pid=$!
cleanup_fn kill $pid
wait_for_socket $sock
nbdcopy "nbd+unix:///?socket=$sock" $tmp/out.raw
cmp "$disk" $tmp/out.raw
nbdinfo --map "nbd+unix:///?socket=$sock" | grep -E '^ +0 +65536 +0 +data$'
kill $pid
wait $pid || true
