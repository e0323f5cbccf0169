#!/usr/bin/env bash
# Bad input fails clearly: nbdkit exits non-zero (before forking or
# serving) or the NBD open fails, with a message naming the problem and the
# VixError text. Never a hang (every command runs under timeout) and never
# a silent empty disk.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version

disk=$tmp/disk.img
make_disk "$disk" $((1024*1024)) 0 4096

# expect_fail PATTERN NBDKIT-ARGS...: nbdkit --run fails, stderr matches.
expect_fail () {
    local pattern=$1 rc=0
    shift
    timeout 60 nbdkit -U - "$@" --run 'nbdinfo "$uri"' >$tmp/out 2>$tmp/err || rc=$?
    cat $tmp/err
    [ $rc -ne 0 ] || fail "nbdkit $* succeeded"
    [ $rc -ne 124 ] || fail "nbdkit $* hung"
    grep -E -- "$pattern" $tmp/err || fail "error for '$*' does not match '$pattern'"
}

expect_fail 'missing parameter: file' $plugin libdir=$fakevddk
expect_fail 'unknown parameter "colour"' $plugin libdir=$fakevddk file=$disk colour=blue
expect_fail "libdir=$tmp/novddk.*libvixDiskLib" $plugin libdir=$tmp/novddk file=$disk
expect_fail 'VixError' $plugin libdir=$fakevddk file=$tmp/missing.vmdk
expect_fail 'missing.vmdk' $plugin libdir=$fakevddk file=$tmp/missing.vmdk
expect_fail 'port: "99999" is not a TCP port' $plugin libdir=$fakevddk file=$disk port=99999
# As in nbdkit-vddk-plugin, a remote parameter asks for a remote connection.
expect_fail 'remote connection requested \(by thumbprint=\), missing parameter: server' $plugin libdir=$fakevddk file=$disk thumbprint=xyz
expect_fail 'changed-areas: .*line 2' $plugin libdir=$fakevddk file=$disk changed-areas=<(printf '0 512\nbogus\n')

# Remote mode against the fake: wrong password and wrong thumbprint are
# reported by VDDK at open.
mkdir -p $tmp/root/ds1/vm1
cp $disk $tmp/root/ds1/vm1/disk-flat.vmdk
export FAKEVDDK_ROOT=$tmp/root
export FAKEVDDK_PASSWORD=right-password
export FAKEVDDK_THUMBPRINT=AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD
echo wrong-password > $tmp/pw
remote=(server=vc.example.com user=backup password=+$tmp/pw vm=moref=vm-42 snapshot=snapshot-7 "file=[ds1] vm1/disk.vmdk")
expect_fail 'VixError' $plugin libdir=$fakevddk thumbprint=$FAKEVDDK_THUMBPRINT "${remote[@]}"
if grep -q wrong-password $tmp/err; then fail "the password leaked into an error message"; fi
echo right-password > $tmp/pw
expect_fail 'VixError' $plugin libdir=$fakevddk thumbprint=11:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD "${remote[@]}"
# ...and the right ones work.
timeout 60 nbdkit -U - $plugin libdir=$fakevddk thumbprint=$FAKEVDDK_THUMBPRINT "${remote[@]}" --run 'nbdcopy "$uri" '$tmp/out.raw
cmp $disk $tmp/out.raw

# Background mode: a bad parameter makes nbdkit exit non-zero before it
# daemonizes, instead of exiting 0 silently.
rc=0
timeout 60 nbdkit -P $tmp/pid -U $tmp/sock $plugin libdir=$fakevddk file=$disk colour=blue 2>$tmp/err || rc=$?
cat $tmp/err
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "background nbdkit with a bad parameter exited $rc"
grep 'unknown parameter "colour"' $tmp/err
[ ! -e $tmp/sock ] || fail "nbdkit served despite a bad parameter"
