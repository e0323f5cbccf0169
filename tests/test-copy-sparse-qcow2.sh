#!/usr/bin/env bash
# sendense copy from nbdkit sparse-random (data and holes) into a fresh
# qcow2 served by qemu-nbd: same content (qemu-img compare), and the zero
# regions of the source allocate no data clusters (qemu-img map), with and
# without --destination-is-zero.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires qemu-img --version
requires qemu-nbd --version
requires python3 --version

size=$((512*1024*1024))
serve src -r sparse-random size=$size seed=7 percent=20 runlength=262144
nbdinfo --map --json "$(uri src)" > $tmp/src.map

for mode in "" --destination-is-zero; do
    name=dst${mode:+z}
    qemu-img create -q -f qcow2 $tmp/$name.qcow2 $size
    qserve $name $tmp/$name.qcow2
    $sendense copy --json $mode "$(uri src)" "$(uri $name)" | tee $tmp/$name.json
    grep '"connections":1,' $tmp/$name.json   # qemu-nbd does not allow multi-conn here
    qstop $name
    qemu-img compare -f raw -F qcow2 "$(uri src)" $tmp/$name.qcow2
    qemu-img map --output=json $tmp/$name.qcow2 > $tmp/$name.map
    python3 - $tmp/src.map $tmp/$name.map "$mode" <<'PY'
import json, sys
src = json.load(open(sys.argv[1]))
dst = json.load(open(sys.argv[2]))
dest_is_zero = sys.argv[3] != ""
# Source data rounded out to the 64 KiB qcow2 clusters that hold it.
C = 65536
data = []
for e in src:
    if e["type"] & 2 == 0:
        a, b = e["offset"] // C * C, (e["offset"] + e["length"] + C - 1) // C * C
        if data and data[-1][1] >= a:
            data[-1] = (data[-1][0], max(b, data[-1][1]))
        else:
            data.append((a, b))
def inside(s, t):
    return any(a <= s and t <= b for a, b in data)
src_data = sum(b - a for a, b in data)
alloc = 0
for e in dst:
    s, t = e["start"], e["start"] + e["length"]
    if e["data"]:
        alloc += t - s
        assert inside(s, t), "data cluster outside the source's data: %r" % e
    else:
        assert e["zero"], e
        if dest_is_zero:
            assert not e["present"] or e["depth"] == 0, e
print("source data %d, allocated %d" % (src_data, alloc))
assert 0 < alloc <= src_data
PY
done
