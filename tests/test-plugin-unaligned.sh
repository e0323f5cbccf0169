#!/usr/bin/env bash
# Unaligned reads through nbdsh: the plugin reads whole sectors and returns
# exactly the bytes asked for.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdsh --version

disk=$tmp/disk.img
make_disk "$disk" $((4*1024*1024 + 1024)) 0 $((4*1024*1024 + 1024))
export disk
nbdkit -U - $(plugin_args) file="$disk" --run 'nbdsh -u "$uri" -c - <<PY
import os
h.set_strict_mode(0)  # let unaligned requests reach the server
data = open(os.environ["disk"], "rb").read()
size = len(data)
assert h.get_size() == size
for off, n in [(1, 1), (511, 2), (100, 1000), (4095, 4097), (65535, 3),
               (size - 1, 1), (size - 513, 513), (size - 700, 700), (12345, 777777)]:
    got = h.pread(n, off)
    assert got == data[off:off+n], (off, n)
print("unaligned reads ok")
PY'
