#!/usr/bin/env bash
# A VDDK that exists but cannot be loaded fails nbdkit at start-up, before
# it forks, in every mode (-f, background, --run, socket activation): exit
# status non-zero, dlerror's text on stderr, nothing served, no pidfile,
# nothing hangs. Three such libraries: one whose dependency is missing, one
# lacking a required function (VixDiskLib_Write), one for another
# architecture (aarch64 and 32-bit ELF headers).
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires gcc --version

disk=$tmp/disk.img
make_disk "$disk" $((1024*1024)) 0 4096

# A dependency that is gone at run time.
mkdir -p $tmp/deps
echo 'int sendense_test_dep (void) { return 1; }' > $tmp/deps/dep.c
gcc -fPIC -shared -o $tmp/deps/libsendensedep.so $tmp/deps/dep.c
build_fake $tmp/nodep -L$tmp/deps -Wl,--no-as-needed -lsendensedep
rm $tmp/deps/libsendensedep.so
# A required function hidden.
echo '{ global: VixDiskLib_*; local: VixDiskLib_Write; *; };' > $tmp/hide.map
build_fake $tmp/nowrite -Wl,--version-script=$tmp/hide.map
nm -D --defined-only $tmp/nowrite/lib64/libvixDiskLib.so.8 > $tmp/syms
grep ' VixDiskLib_WriteAsync$' $tmp/syms
if grep ' VixDiskLib_Write$' $tmp/syms; then fail "VixDiskLib_Write is not hidden"; fi
# Another architecture: the real fake with its ELF header's e_machine set
# to AArch64 (183), and with its class set to 32-bit.
mkdir -p $tmp/arm64/lib64 $tmp/elf32/lib64
cp $fakevddk/lib64/libvixDiskLib.so.8 $tmp/arm64/lib64/
printf '\xb7\x00' | dd of=$tmp/arm64/lib64/libvixDiskLib.so.8 bs=1 seek=18 conv=notrunc status=none
cp $fakevddk/lib64/libvixDiskLib.so.8 $tmp/elf32/lib64/
printf '\x01' | dd of=$tmp/elf32/lib64/libvixDiskLib.so.8 bs=1 seek=4 conv=notrunc status=none

cases=(
    "nodep|libsendensedep.so: cannot open shared object file"
    "nowrite|lacks the required function\(s\) VixDiskLib_Write: this is not a usable VDDK"
    "arm64|cannot load VDDK: .*libvixDiskLib.so.8 is an ELF file for machine 183 \\(aarch64\\), not x86-64"
    "elf32|cannot load VDDK: .*wrong ELF class: ELFCLASS32"
)

# check NAME PATTERN STATUS: nbdkit failed (not 0, not timeout's 124) and
# said PATTERN.
check () {
    cat $tmp/err
    [ "$3" -ne 0 ] || fail "$1: nbdkit exited 0"
    [ "$3" -ne 124 ] || fail "$1: nbdkit hung"
    grep -E -- "$2" $tmp/err || fail "$1: no '$2' in the error"
    grep -E -- "libdir=$tmp/$1" $tmp/err || fail "$1: the error does not name libdir="
}

for c in "${cases[@]}"; do
    name=${c%%|*} pattern=${c#*|}
    args=($plugin libdir=$tmp/$name file=$disk)

    # Foreground.
    rc=0; timeout 60 nbdkit -f -U $tmp/fg.sock "${args[@]}" 2>$tmp/err || rc=$?
    check $name "$pattern" $rc
    [ ! -e $tmp/fg.sock ] || fail "$name: -f served"

    # Background: no socket, no pidfile, nothing left running.
    rc=0; timeout 60 nbdkit -P $tmp/bg.pid -U $tmp/bg.sock "${args[@]}" 2>$tmp/err || rc=$?
    check $name "$pattern" $rc
    [ ! -e $tmp/bg.sock ] && [ ! -e $tmp/bg.pid ] || fail "$name: background nbdkit left a socket or pidfile"

    # Captive: the command never runs.
    rc=0; timeout 60 nbdkit -U $tmp/run.sock "${args[@]}" --run "touch $tmp/ran" 2>$tmp/err || rc=$?
    check $name "$pattern" $rc
    [ ! -e $tmp/ran ] || fail "$name: --run ran its command"

    # Socket activation: the client sees the failure at once.
    rc=0; timeout 60 nbdinfo --size -- [ nbdkit "${args[@]}" ] 2>$tmp/err || rc=$?
    check $name "$pattern" $rc

    # Same without re-executing nbdkit.
    rc=0; timeout 60 nbdkit -U $tmp/run.sock "${args[@]}" noreexec=true --run "touch $tmp/ran" 2>$tmp/err || rc=$?
    check $name "$pattern" $rc
done
