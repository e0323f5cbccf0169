#!/usr/bin/env bash
# libdir= layouts, found in nbdkit-vddk-plugin's order: for each VDDK major,
# newest first (9, 8, 7, 6), libdir/lib64/libvixDiskLib.so.N (VDDK's own
# layout) then libdir/libvixDiskLib.so.N; symlinks followed (vddk_dll is the
# real file); directories skipped; relative paths resolved before nbdkit
# changes directory; a libdir without any names every path tried.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version

disk=$tmp/disk.img
make_disk "$disk" $((1024*1024)) 0 4096
lib=$fakevddk/lib64/libvixDiskLib.so.8

# layout DIR FILE...: copies of the fake at DIR/FILE (FILE@TARGET: a
# symlink to TARGET).
layout () {
    local dir=$tmp/$1 f
    shift
    mkdir -p $dir/lib64
    for f in "$@"; do
        case $f in
            */) mkdir -p $dir/$f ;;
            *@*) ln -s "${f#*@}" $dir/${f%@*} ;;
            *) cp $lib $dir/$f ;;
        esac
    done
}

# uses DIR FILE: nbdkit serves through DIR/FILE, and says so.
uses () {
    nbdkit $plugin --dump-plugin libdir=$tmp/$1 > $tmp/dump
    grep -x "vddk_library=$tmp/$1/$2" $tmp/dump || { cat $tmp/dump; fail "libdir=$1 does not use $2"; }
    grep -x "vddk_library_version=${2##*.}" $tmp/dump
    : > $tmp/vddk.log
    FAKEVDDK_LOG=$tmp/vddk.log nbdkit -U $tmp/$1.sock -r $plugin libdir=$tmp/$1 file=$disk --run 'nbdinfo --size "$uri"' >/dev/null
    grep "VixDiskLib_InitEx version=6.5 libDir=$tmp/$1 " $tmp/vddk.log
}

layout lib64 lib64/libvixDiskLib.so.8
uses lib64 lib64/libvixDiskLib.so.8
layout flat libvixDiskLib.so.8
uses flat libvixDiskLib.so.8
layout newest lib64/libvixDiskLib.so.6 lib64/libvixDiskLib.so.9 lib64/libvixDiskLib.so.7
uses newest lib64/libvixDiskLib.so.9
layout lib64first libvixDiskLib.so.8 lib64/libvixDiskLib.so.8
uses lib64first lib64/libvixDiskLib.so.8
layout major libvixDiskLib.so.8 lib64/libvixDiskLib.so.7
uses major libvixDiskLib.so.8
layout dirskipped lib64/libvixDiskLib.so.9/ lib64/libvixDiskLib.so.7
uses dirskipped lib64/libvixDiskLib.so.7
# VDDK's own symlinks: vddk_dll is the file they lead to.
layout links lib64/libvixDiskLib.so.8.0.3 lib64/libvixDiskLib.so.8@libvixDiskLib.so.8.0.3
uses links lib64/libvixDiskLib.so.8
grep -x "vddk_dll=$tmp/links/lib64/libvixDiskLib.so.8.0.3" $tmp/dump

# Relative libdir= in background mode (nbdkit changes directory to /).
(cd $tmp && nbdkit -r -P $tmp/bg.pid -U $tmp/bg.sock $plugin libdir=flat file=disk.img)
cleanup_fn sh -c "kill \$(cat $tmp/bg.pid) 2>/dev/null"
wait_for test -s $tmp/bg.pid
test "$(nbdinfo --size "nbd+unix:///?socket=$tmp/bg.sock")" -eq $((1024*1024))
kill "$(cat $tmp/bg.pid)"

# No library: every path tried is named.
mkdir -p $tmp/empty/lib64
rc=0; timeout 60 nbdkit -U - $plugin libdir=$tmp/empty file=$disk --run true 2>$tmp/err || rc=$?
cat $tmp/err
[ $rc -ne 0 ]
for n in 9 8 7 6; do
    grep -F "$tmp/empty/lib64/libvixDiskLib.so.$n, $tmp/empty/libvixDiskLib.so.$n" $tmp/err
done
