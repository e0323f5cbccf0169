#!/usr/bin/env bash
# How VDDK is driven, from the fake's log: ConnectEx read-only with the VM
# and snapshot morefs, the transports and the thumbprint; Open read-only;
# the password never logged.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version

mkdir -p $tmp/root/datastore1/vm7
make_disk $tmp/root/datastore1/vm7/vm7-flat.vmdk $((8*1024*1024)) 0 65536
export FAKEVDDK_ROOT=$tmp/root FAKEVDDK_LOG=$tmp/vddk.log
echo s3cret-pw > $tmp/pw
thumb=9B:5F:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:21
nbdkit -U - $plugin libdir=$fakevddk server=vcenter.example.com port=4443 user=backup@vsphere.local \
    password=+$tmp/pw thumbprint=$thumb vm=moref=vm-42 snapshot=snapshot-99 transports=nbdssl:nbd \
    compression=zlib "file=[datastore1] vm7/vm7.vmdk" --run 'nbdinfo "$uri"' > $tmp/info
cat $tmp/info
cat $tmp/vddk.log
grep -E 'description: .*\[datastore1\] vm7/vm7.vmdk at snapshot-99, full' $tmp/info
grep 'VixDiskLib_InitEx' $tmp/vddk.log
connect=$(grep 'VixDiskLib_ConnectEx' $tmp/vddk.log | head -1)
for want in 'moref=vm-42' 'snapshotRef=snapshot-99' 'transports=nbdssl:nbd' 'readOnly=1' \
            'server=vcenter.example.com' 'port=4443' "thumbprint=$thumb" 'user=backup@vsphere.local'; do
    echo "$connect" | grep -F -- "$want" || fail "ConnectEx line lacks $want"
done
open=$(grep 'VixDiskLib_Open ' $tmp/vddk.log | head -1)
echo "$open" | grep -F '[datastore1] vm7/vm7.vmdk'
echo "$open" | grep 'READ_ONLY'
echo "$open" | grep 'COMPRESSION_ZLIB'
grep -E 'VixDiskLib_Close' $tmp/vddk.log
grep -E 'VixDiskLib_Disconnect' $tmp/vddk.log
if grep -q s3cret-pw $tmp/vddk.log; then fail "password in the VDDK log"; fi
