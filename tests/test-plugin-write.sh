#!/usr/bin/env bash
# Writes, as with nbdkit-vddk-plugin: a VMDK made with create=true filled
# by nbdcopy and read back through the plugin (cmp) and by qemu-img
# (compare, through the VMDK descriptor); qemu-img convert -n into it; FUA
# and flush reach VixDiskLib_Flush; zeroing writes only where the disk is
# allocated; unaligned writes; -r, readonly=true and snapshot= refuse
# writes; a full datastore is ENOSPC; the remote read-write path a restore
# into vSphere uses (server=, vm=, file=, no snapshot). FAKEVDDK_STRICT
# aborts on overlapping calls on a handle.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdcopy --version
requires nbdsh --version
requires qemu-img --version

export FAKEVDDK_STRICT=1 FAKEVDDK_LOG=$tmp/vddk.log
size=$((64*1024*1024))
make_disk $tmp/src.raw $size 0 $((3*1024*1024)) $((20*1024*1024)) 65536 $((size - 8192)) 8192
uri () { echo "nbd+unix:///?socket=$1"; }

# create=true, then nbdcopy.
vmdk=$tmp/new.vmdk
nbdkit -U $tmp/c.sock $plugin libdir=$fakevddk file=$vmdk create=true create-size=64M \
    --run 'nbdcopy --flush '$tmp/src.raw' "$uri"'
grep -E "VixDiskLib_Create path=$vmdk file=$tmp/new-flat.vmdk type=1 adapter=2 hwVersion=4 capacity=131072 result=0" $tmp/vddk.log
grep -E 'VixDiskLib_Open .*flags=0x0 NONE' $tmp/vddk.log
grep -E 'VixDiskLib_Flush handle=[0-9]+ waited=[0-9]+ result=0' $tmp/vddk.log
# Only about the data was written (3 MiB + 72 KiB, in nbdcopy's requests),
# not 64 MiB: nbdcopy's zeroes of the holes found nothing allocated on the
# new disk, so they wrote nothing.
written=$(awk '/^VixDiskLib_WriteAsync .*result=25000/ { for (i = 1; i <= NF; i++) if ($i ~ /^num=/) s += substr($i, 5) } END { print s * 512 }' $tmp/vddk.log)
test "$written" -ge $((3*1024*1024 + 65536 + 8192)) && test "$written" -le $((4*1024*1024))
# Read back through the plugin, and by qemu-img through the descriptor.
nbdkit -U $tmp/r.sock -r $plugin libdir=$fakevddk file=$vmdk --run 'nbdcopy "$uri" '$tmp/back.raw
cmp $tmp/src.raw $tmp/back.raw
qemu-img compare -f raw -F vmdk $tmp/src.raw $vmdk

# The same command again: create=true never replaces a disk.
rc=0; nbdkit -U $tmp/c2.sock $plugin libdir=$fakevddk file=$vmdk create=true create-size=64M --run true 2>$tmp/err || rc=$?
cat $tmp/err
[ $rc -ne 0 ] && grep "create=true: $vmdk already exists" $tmp/err
cmp $tmp/src.raw $tmp/new-flat.vmdk

# qemu-img convert -n into the existing disk.
make_disk $tmp/src2.raw $size $((1024*1024)) $((5*1024*1024))
nbdkit -U $tmp/q.sock $plugin libdir=$fakevddk file=$vmdk --run 'qemu-img convert -n -f raw -O raw '$tmp/src2.raw' "$uri"'
cmp $tmp/src2.raw $tmp/new-flat.vmdk

# FUA, flush, zero, unaligned writes and errors, through nbdsh.
: > $tmp/vddk.log
export vmdk
nbdkit -U $tmp/n.sock $plugin libdir=$fakevddk file=$vmdk --run 'nbdsh -u "$uri" -c - <<PY
import errno, nbd, os
h.set_strict_mode(0)
assert not h.is_read_only() and h.can_fua() and h.can_flush() and h.can_zero()
assert h.can_multi_conn()
h.pwrite(b"F" * 4096, 8192, nbd.CMD_FLAG_FUA)
log = open(os.environ["FAKEVDDK_LOG"]).read()
assert log.rindex("VixDiskLib_Flush") > log.rindex("VixDiskLib_WriteAsync"), log
h.pwrite(b"a" * 100, 1000)
h.pwrite(b"b" * 1000, 2047)
h.pwrite(b"c", 65535)
h.flush()
data = h.pread(70000, 0)
exp = bytearray(open(os.environ["vmdk"].replace(".vmdk", "-flat.vmdk"), "rb").read(70000))
assert data == bytes(exp), "read back differs from the file"
assert data[1000:1100] == b"a" * 100 and data[2047:3047] == b"b" * 1000 and data[65535:65536] == b"c"
assert data[8192:12288] == b"F" * 4096
# Zero over data and over a hole.
h.zero(2 * 1024 * 1024, 0)
assert h.pread(2 * 1024 * 1024, 0) == bytes(2 * 1024 * 1024)
n = open(os.environ["FAKEVDDK_LOG"]).read().count("\n")
h.zero(4 * 1024 * 1024, 40 * 1024 * 1024)
tail = open(os.environ["FAKEVDDK_LOG"]).read().splitlines()[n:]
assert not [l for l in tail if "Write" in l], tail
print("nbdsh writes ok")
PY'

# A full datastore: the client gets ENOSPC; the disk keeps its data.
cp $tmp/new-flat.vmdk $tmp/before.raw
FAKEVDDK_FAIL_WRITE_AFTER=0 nbdkit -U $tmp/f.sock $plugin libdir=$fakevddk file=$vmdk --run 'nbdsh -u "$uri" -c - <<PY
import errno, nbd
try:
    h.pwrite(b"x" * 4096, 0)
    raise SystemExit("the write succeeded")
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
print("ENOSPC ok")
PY' 2>$tmp/err
cat $tmp/err
grep 'no space left on the datastore' $tmp/err
cmp $tmp/before.raw $tmp/new-flat.vmdk

# Read-only exports refuse writes: -r, readonly=true, snapshot=.
mkdir -p $tmp/root/ds1/vm1
cp $tmp/src.raw $tmp/root/ds1/vm1/disk-flat.vmdk
export FAKEVDDK_ROOT=$tmp/root
remote=(server=vc.example.com user=backup password=pw vm=moref=vm-42 "file=[ds1] vm1/disk.vmdk")
for ro in "-r file=$vmdk" "file=$vmdk readonly=true" "snapshot=snapshot-9 ${remote[*]::4}"; do
    : > $tmp/vddk.log
    extra=()
    case $ro in snapshot*) extra=("file=[ds1] vm1/disk.vmdk") ;; esac
    nbdkit -U $tmp/ro$RANDOM.sock $plugin libdir=$fakevddk $ro "${extra[@]}" --run 'nbdsh -u "$uri" -c - <<PY
import errno, nbd
assert h.is_read_only() and h.can_multi_conn()
try:
    h.pwrite(b"x" * 512, 0)
    raise SystemExit("the write succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EPERM, e
PY'
    grep -E 'VixDiskLib_ConnectEx .*readOnly=1' $tmp/vddk.log
    grep -E 'VixDiskLib_Open .*READ_ONLY' $tmp/vddk.log
done
cmp $tmp/before.raw $tmp/new-flat.vmdk
cmp $tmp/src.raw $tmp/root/ds1/vm1/disk-flat.vmdk

# The restore path: a remote disk without a snapshot is written, by four
# connections at once (multi-conn) through the one handle they share.
: > $tmp/vddk.log
nbdkit -U $tmp/rw.sock $plugin libdir=$fakevddk "${remote[@]}" \
    --run 'nbdcopy --flush --connections=4 '$tmp/src2.raw' "$uri"'
cmp $tmp/src2.raw $tmp/root/ds1/vm1/disk-flat.vmdk
test "$(grep -c 'VixDiskLib_Open ' $tmp/vddk.log)" -eq 1
test "$(grep -c 'VixDiskLib_Close ' $tmp/vddk.log)" -eq 1
grep -E 'VixDiskLib_ConnectEx vmxSpec=moref=vm-42 server=vc.example.com .*readOnly=0 snapshotRef=\(null\)' $tmp/vddk.log
grep -E 'VixDiskLib_Open path=\[ds1\] vm1/disk.vmdk .*flags=0x0 NONE' $tmp/vddk.log
grep -E 'VixDiskLib_Flush' $tmp/vddk.log
if grep VIOLATION $tmp/vddk.log; then fail "overlapping calls on a handle"; fi
