#!/usr/bin/env bash
# Several connections in parallel to a read-only export (multi-conn):
# nbdkit opens one VDDK handle per connection; FAKEVDDK_STRICT=1 makes the
# fake abort on concurrent calls on one handle (VDDK handles are not
# thread-safe).
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdcopy --version
requires nbdsh --version

disk=$tmp/disk.img
make_disk "$disk" $((256*1024*1024)) 0 $((256*1024*1024))
export FAKEVDDK_STRICT=1 FAKEVDDK_LOG=$tmp/vddk.log
sock=$tmp/sock
nbdkit -f -r -U $sock $(plugin_args) file="$disk" &
pid=$!
cleanup_fn kill $pid
wait_for_socket $sock
uri="nbd+unix:///?socket=$sock"
nbdcopy --connections=4 --threads=4 --requests=16 "$uri" $tmp/out.raw
cmp "$disk" $tmp/out.raw
# 4 clients at once, each reading the whole disk.
pids=()
for i in 1 2 3 4; do
    nbdcopy --connections=1 "$uri" $tmp/out$i.raw &
    pids+=($!)
done
for p in "${pids[@]}"; do wait $p; done
for i in 1 2 3 4; do cmp "$disk" $tmp/out$i.raw; done
# One VDDK open per connection: at least 4 concurrent opens happened.
test "$(grep -c 'VixDiskLib_Open ' $tmp/vddk.log)" -ge 8
kill $pid
wait $pid || true
