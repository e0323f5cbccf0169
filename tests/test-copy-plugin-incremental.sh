#!/usr/bin/env bash
# The whole chain on local files: our plugin (fake VDDK) serves snapshot 1
# as a full export and snapshot 2 as an incremental one (changed-areas=);
# sendense copy writes the full into a qcow2 and the incremental into an
# overlay backed by it. The overlay equals snapshot 2, including a changed
# block that became all zeroes and one that became unallocated, and holds
# nothing but the changed blocks.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires qemu-img --version
requires qemu-nbd --version
requires python3 --version

K=1024 M=$((1024*1024))
size=$((16*M))

# Snapshot 1 and its full backup through the plugin (captive mode).
make_disk $tmp/snap1.raw $size 0 $((2*M)) $((8*M)) $((2*M))
qemu-img create -q -f qcow2 $tmp/full.qcow2 $size
qserve full $tmp/full.qcow2
nbdkit -U - $(plugin_args) file=$tmp/snap1.raw --run "$sendense copy --json \"\$uri\" $(uri full)" | tee $tmp/full.json
qstop full
qemu-img compare -f raw -F qcow2 $tmp/snap1.raw $tmp/full.qcow2
# Unallocated areas were not read (hole+zero): 4 MiB of data in snapshot 1.
grep '"bytes_read":4194304,' $tmp/full.json

# Snapshot 2: A rewritten, B now all zeroes (allocated), C now unallocated,
# D new data where snapshot 1 had a hole; E is listed as changed but was
# rewritten with the same data (a CBT false positive).
A=$((128*K)) B=$((320*K)) C=$((8*M + 64*K)) D=$((4*M)) E=$((9*M))
cp --sparse=always $tmp/snap1.raw $tmp/snap2.raw
head -c 65536 /dev/urandom | dd of=$tmp/snap2.raw bs=64K seek=$((A/65536)) conv=notrunc status=none
dd if=/dev/zero of=$tmp/snap2.raw bs=64K seek=$((B/65536)) count=1 conv=notrunc status=none
fallocate -p -o $C -l 65536 $tmp/snap2.raw
head -c 65536 /dev/urandom | dd of=$tmp/snap2.raw bs=64K seek=$((D/65536)) conv=notrunc status=none
printf '# changed areas\n%d 65536\n%d 65536\n%d 65536\n%d 65536\n%d 65536\n' $D $B $A $C $E > $tmp/areas

# The extents follow the contract: changed+allocated 0, changed+unallocated
# 3, unchanged 1.
nbdkit -U - $(plugin_args) file=$tmp/snap2.raw changed-areas=$tmp/areas --run 'nbdinfo --map "$uri"' > $tmp/map
cat $tmp/map
grep -E "^ +$A +65536 +0 " $tmp/map
grep -E "^ +$C +65536 +3 " $tmp/map
grep -E "^ +0 +$A +1 " $tmp/map

qemu-img create -q -f qcow2 -b $tmp/full.qcow2 -F qcow2 $tmp/inc.qcow2
qserve inc $tmp/inc.qcow2
nbdkit -U - $(plugin_args) file=$tmp/snap2.raw changed-areas=$tmp/areas \
    --run "$sendense copy --json --incremental \"\$uri\" $(uri inc)" | tee $tmp/inc.json
qstop inc
qemu-img compare -f raw -F qcow2 $tmp/snap2.raw $tmp/inc.qcow2
grep '"bytes_written":196608,"bytes_zeroed":131072,"bytes_skipped":'$((size - 5*65536))',' $tmp/inc.json

qemu-img map --output=json $tmp/inc.qcow2 > $tmp/inc.map
python3 - $tmp/inc.map $A $B $C $D $E <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
a, b, c, d, e = map(int, sys.argv[2:])
top = {}
for x in m:
    if x["depth"] == 0 and x["present"]:
        for off in range(x["start"], x["start"] + x["length"], 65536):
            top[off] = (x["data"], x["zero"])
want = {a: (True, False), d: (True, False), e: (True, False), b: (False, True), c: (False, True)}
assert top == want, "overlay clusters %r, want %r" % (top, want)
PY
