#!/usr/bin/env bash
# A client that disappears mid-read (broken pipe) does not kill the server:
# once Go is loaded it owns SIGPIPE, and nbdkit must keep serving.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdsh --version

disk=$tmp/disk.img
make_disk "$disk" $((64*1024*1024)) 0 $((64*1024*1024))
sock=$tmp/sock
nbdkit -f -U $sock $(plugin_args) file="$disk" &
pid=$!
cleanup_fn kill $pid
wait_for_socket $sock
uri="nbd+unix:///?socket=$sock"
# Clients that send large reads and vanish without waiting for replies.
for i in 1 2 3; do
    timeout 20 nbdsh -u "$uri" -c '
import os
for i in range(16):
    h.aio_pread(32*1024*1024, 0)
os._exit(0)
' || true
done
sleep 1
kill -0 $pid || fail "nbdkit died after clients vanished"
nbdcopy "$uri" $tmp/out.raw
cmp "$disk" $tmp/out.raw
