#!/usr/bin/env bash
# Every parameter of nbdkit-vddk-plugin 1.32 is accepted with its meaning,
# as the fake VDDK's call log shows: cookie= (session login), port=,
# nfchostport=, thumbprint= and vm= passed as given, single-link= and
# unbuffered= (open flags; single-link holes are not zero), compression=,
# transports=, snapshot=, config= (must exist), vimapiver= (ignored), and
# nbdkit-vddk's rules: any remote parameter asks for a remote connection,
# which needs server=, user=, password= and vm=; create= is local only.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version

mkdir -p $tmp/root/ds1/vm1
make_disk $tmp/root/ds1/vm1/disk-flat.vmdk $((4*1024*1024)) 0 65536
export FAKEVDDK_ROOT=$tmp/root FAKEVDDK_LOG=$tmp/vddk.log
file="file=[ds1] vm1/disk.vmdk"
echo 'vixDiskLib.transport.LogLevel = "1"' > $tmp/vddk.conf

# A session cookie instead of a password login; the rest as given.
export FAKEVDDK_COOKIE=vmware_soap_session=52ab
nbdkit -U - $plugin libdir=$fakevddk server=vc.example.com port=4443 nfchostport=9020 \
    user=backup@vsphere.local password= cookie=$FAKEVDDK_COOKIE thumbprint=ab \
    "vm=[ds1] vm1/vm1.vmx?dcPath=DC&dsName=ds1" snapshot=snapshot-3 transports=hotadd:nbd \
    compression=fastlz single-link=true unbuffered=on vimapiver=6.7 config=$tmp/vddk.conf "$file" \
    --run 'nbdinfo --map "$uri"' > $tmp/map
cat $tmp/map $tmp/vddk.log
grep -E "^VixDiskLib_InitEx version=6.5 libDir=$fakevddk configFile=$tmp/vddk.conf " $tmp/vddk.log
connect=$(grep 'VixDiskLib_ConnectEx' $tmp/vddk.log)
for want in 'vmxSpec=[ds1] vm1/vm1.vmx?dcPath=DC&dsName=ds1 ' 'server=vc.example.com ' 'port=4443 ' 'nfcHostPort=9020 ' \
            'thumbprint=ab ' 'credType=2 user=backup@vsphere.local password=<hidden> cookie=<hidden> ' \
            'readOnly=1 snapshotRef=snapshot-3 transports=hotadd:nbd '; do
    echo "$connect" | grep -F -- "$want" || fail "ConnectEx lacks '$want'"
done
grep -E 'VixDiskLib_Open path=\[ds1\] vm1/disk.vmdk .*flags=0x27 UNBUFFERED\|SINGLE_LINK\|READ_ONLY\|COMPRESSION_FASTLZ ' $tmp/vddk.log
if grep -e 52ab $tmp/vddk.log; then fail "the cookie is in the call log"; fi
# single-link: unallocated blocks may show a parent's data, so they are
# holes, not zeroes.
grep -E '^ +65536 +4128768 +1 +hole$' $tmp/map

# A wrong cookie is refused by VDDK.
rc=0
timeout 60 nbdkit -U - $plugin libdir=$fakevddk server=vc user=u password=p vm=moref=vm-1 cookie=bad "$file" \
    --run 'nbdinfo --size "$uri"' 2>$tmp/err || rc=$?
[ $rc -ne 0 ] && grep 'session cookie not valid' $tmp/err

# expect_fail PATTERN PARAMS...: nbdkit refuses at start-up.
expect_fail () {
    local pattern=$1 rc=0
    shift
    timeout 60 nbdkit -U - $plugin libdir=$fakevddk "$@" --run 'touch '$tmp/ran 2>$tmp/err || rc=$?
    cat $tmp/err
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "nbdkit $* exited $rc"
    [ ! -e $tmp/ran ] || fail "nbdkit $* ran its command"
    grep -E -- "$pattern" $tmp/err || fail "error for '$*' does not match '$pattern'"
}
disk=/var/tmp/sendense-no-such-disk.vmdk
for p in vm=moref=vm-1 server=vc user=u password= cookie=c thumbprint=ab port=443 nfchostport=902; do
    expect_fail "remote connection requested \(by ${p%%=*}=\), missing parameter: " file=$disk $p
done
expect_fail 'missing parameter: vm' "$file" server=vc user=u password=p
expect_fail 'missing parameter: password' "$file" server=vc user=u vm=moref=vm-1
expect_fail 'could not decipher boolean \(maybe\)' file=$disk single-link=maybe
expect_fail "$tmp/no-such.conf" file=$disk config=$tmp/no-such.conf
expect_fail 'create=true can only create local VMDK files' "$file" server=vc user=u password=p vm=moref=vm-1 create=true create-size=1M
expect_fail 'create=true needs create-size=' file=$tmp/new.vmdk create=true
expect_fail 'create-size: .* multiple of 512' file=$tmp/new.vmdk create=true create-size=1000
expect_fail 'create-type: "qcow2" is not one of' file=$tmp/new.vmdk create=true create-size=1M create-type=qcow2
expect_fail 'create-adapter-type: "nvme" is not one of ide, scsi-buslogic, scsi-lsilogic' file=$tmp/new.vmdk create=true create-size=1M create-adapter-type=nvme
expect_fail 'single-link=true cannot serve an incremental export' file=$disk single-link=true changed-areas=/dev/null
expect_fail 'unknown parameter "colour"' file=$disk colour=blue
[ ! -e $tmp/new.vmdk ] || fail "a refused create= made a file"

# The create family with every option, read back by qemu-img.
if qemu-img --version >/dev/null 2>&1; then
    nbdkit -U - $plugin libdir=$fakevddk file=$tmp/new.vmdk create=1 create-size=2M create-type=vmfs-thin \
        create-adapter-type=scsi-lsilogic create-hwversion=esx65 --run 'nbdinfo --size "$uri"'
    grep -E "VixDiskLib_Create path=$tmp/new.vmdk .*type=7 adapter=3 hwVersion=13 capacity=4096 result=0" $tmp/vddk.log
    grep 'ddb.adapterType = "lsilogic"' $tmp/new.vmdk
    qemu-img info $tmp/new.vmdk | grep -E 'virtual size: 2 MiB'
fi
