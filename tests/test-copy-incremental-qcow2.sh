#!/usr/bin/env bash
# A full copy into a qcow2, then an incremental into a qcow2 overlay whose
# backing is that full, from a source whose extents follow the CBT contract
# (changed+allocated = data, changed+unallocated = hole+zero, unchanged =
# hole only; here through nbdkit's extentlist filter). The overlay must equal
# the new snapshot, including a changed block that became all zeroes and one
# that became unallocated, and only the changed blocks may be allocated in
# the overlay (as zero clusters for those two).
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdkit --filter=extentlist null --version
requires qemu-img --version
requires qemu-nbd --version
requires python3 --version

K=1024 M=$((1024*1024))
size=$((16*M))

# Snapshot 1 and its full backup.
make_disk $tmp/snap1.raw $size 0 $((2*M)) $((8*M)) $((2*M))
serve src1 -r file $tmp/snap1.raw
qemu-img create -q -f qcow2 $tmp/full.qcow2 $size
qserve full $tmp/full.qcow2
$sendense copy "$(uri src1)" "$(uri full)"
qstop full
qemu-img compare -f raw -F qcow2 $tmp/snap1.raw $tmp/full.qcow2

# Snapshot 2: A rewritten, B now all zeroes (allocated), C now unallocated,
# D new data where snapshot 1 had a hole. Each is one 64 KiB block.
A=$((128*K)) B=$((320*K)) C=$((8*M + 64*K)) D=$((4*M))
cp --sparse=always $tmp/snap1.raw $tmp/snap2.raw
head -c 65536 /dev/urandom | dd of=$tmp/snap2.raw bs=64K seek=$((A/65536)) conv=notrunc status=none
dd if=/dev/zero of=$tmp/snap2.raw bs=64K seek=$((B/65536)) count=1 conv=notrunc status=none
fallocate -p -o $C -l 65536 $tmp/snap2.raw
head -c 65536 /dev/urandom | dd of=$tmp/snap2.raw bs=64K seek=$((D/65536)) conv=notrunc status=none
cmp -s $tmp/snap1.raw $tmp/snap2.raw && fail "snapshot 2 does not differ"

# Its extents as the plugin reports them for this incremental.
python3 - $size $A $B $D $C > $tmp/extents <<'PY'
import sys
size, a, b, d, c = map(int, sys.argv[1:])
changed = sorted([(a, ""), (b, ""), (d, ""), (c, "hole,zero")])
pos = 0
for off, typ in changed:
    if off > pos:
        print(pos, off - pos, "hole")
    print(off, 65536, typ)
    pos = off + 65536
print(pos, size - pos, "hole")
PY
cat $tmp/extents
serve src2 -r --filter=extentlist file $tmp/snap2.raw extentlist=$tmp/extents
nbdinfo --map "$(uri src2)"

qemu-img create -q -f qcow2 -b $tmp/full.qcow2 -F qcow2 $tmp/inc.qcow2
qserve inc $tmp/inc.qcow2
$sendense copy --json --incremental --checksum "$(uri src2)" "$(uri inc)" | tee $tmp/inc.json
qstop inc

# The overlay reads as snapshot 2 (and the checksum says so too).
qemu-img compare -f raw -F qcow2 $tmp/snap2.raw $tmp/inc.qcow2
grep "\"sha256\":\"$(sha256sum < $tmp/snap2.raw | cut -d' ' -f1)\"" $tmp/inc.json
# 4 blocks changed: 2 written, 2 zeroed, everything else skipped.
grep '"bytes_written":131072,"bytes_zeroed":131072,"bytes_skipped":'$((size - 4*65536))',' $tmp/inc.json

# Only the changed blocks are in the overlay; B and C as zero clusters.
qemu-img map --output=json $tmp/inc.qcow2 > $tmp/inc.map
python3 - $tmp/inc.map $A $B $C $D <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
a, b, c, d = map(int, sys.argv[2:])
top = {}
for e in m:
    if e["depth"] == 0 and e["present"]:
        for off in range(e["start"], e["start"] + e["length"], 65536):
            top[off] = (e["data"], e["zero"])
want = {a: (True, False), d: (True, False), b: (False, True), c: (False, True)}
assert top == want, "overlay clusters %r, want %r" % (top, want)
PY

# An incremental into an overlay with --destination-is-zero is refused.
set +e
$sendense copy --incremental --destination-is-zero "$(uri src2)" "$(uri src2)" 2> $tmp/err
test $? -eq 2 || fail "wrong exit status"
set -e
grep -- "--destination-is-zero cannot be used with --incremental" $tmp/err
