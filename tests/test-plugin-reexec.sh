#!/usr/bin/env bash
# Without VDDK's directory in LD_LIBRARY_PATH the plugin re-executes nbdkit
# with it prepended, as nbdkit-vddk-plugin does, so that a VDDK whose own
# libraries sit beside it loads: in -f, background, --run, -s and socket
# activation modes. What nbdkit starts (--run) sees the environment and
# file descriptors it would have seen without it. noreexec=true turns it
# off.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires nbdsh --version
requires gcc --version

disk=$tmp/disk.img
make_disk "$disk" $((4*1024*1024)) 0 65536
unset LD_LIBRARY_PATH

# A VDDK that needs a library of its own directory.
libdir=$tmp/vddk
mkdir -p $libdir/lib64
echo 'int sendense_test_dep (void) { return 1; }' > $tmp/dep.c
gcc -fPIC -shared -o $libdir/lib64/libsendensedep.so $tmp/dep.c
build_fake $libdir -L$libdir/lib64 -Wl,--no-as-needed -lsendensedep
args=($plugin libdir=$libdir file=$disk)

# --run: the command's environment is the original one.
nbdkit -v -U $tmp/run1.sock "${args[@]}" --run 'nbdinfo --size "$uri" && env > '$tmp/env' && ls -l /proc/self/fd > '$tmp/fds 2>$tmp/log
grep 're-executing nbdkit with LD_LIBRARY_PATH='$libdir/lib64 $tmp/log
if grep -E '^(LD_LIBRARY_PATH|SENDENSE_|LISTEN_)' $tmp/env; then fail "the --run command sees a changed environment"; fi
if grep 'memfd:' $tmp/fds; then fail "the --run command inherited a descriptor of ours"; fi
LD_LIBRARY_PATH=/opt/other nbdkit -U $tmp/run2.sock "${args[@]}" --run 'env > '$tmp/env
grep -x 'LD_LIBRARY_PATH=/opt/other' $tmp/env

# Foreground.
nbdkit -f -U $tmp/fg.sock "${args[@]}" &
pid=$!
cleanup_fn kill $pid
wait_for_socket $tmp/fg.sock
test "$(nbdinfo --size "nbd+unix:///?socket=$tmp/fg.sock")" -eq $((4*1024*1024))
kill $pid

# Background: the pidfile names the re-executed (same) process.
nbdkit -P $tmp/bg.pid -U $tmp/bg.sock "${args[@]}"
cleanup_fn sh -c "kill \$(cat $tmp/bg.pid) 2>/dev/null"
wait_for test -s $tmp/bg.pid
timeout 60 nbdcopy "nbd+unix:///?socket=$tmp/bg.sock" $tmp/out.raw
cmp "$disk" $tmp/out.raw
kill "$(cat $tmp/bg.pid)"

# Socket activation: the sockets nbdkit was given survive the re-execution.
test "$(timeout 60 nbdinfo --size -- [ nbdkit -v "${args[@]}" ] 2>$tmp/log)" -eq $((4*1024*1024))
grep 're-executing nbdkit .*(socket activation)' $tmp/log

# -s: the NBD connection on stdin/stdout.
disk=$disk args="${args[*]}" timeout 60 nbdsh -c '
import os
h.connect_command(["nbdkit", "-s"] + os.environ["args"].split())
assert h.get_size() == 4 * 1024 * 1024
assert h.pread(512, 0) == open(os.environ["disk"], "rb").read(512)
'

# noreexec=true: the dependency is not found.
rc=0; timeout 60 nbdkit -U $tmp/run3.sock "${args[@]}" noreexec=true --run true 2>$tmp/err || rc=$?
cat $tmp/err
[ $rc -ne 0 ] && [ $rc -ne 124 ]
grep 'libsendensedep.so: cannot open shared object file' $tmp/err
# ...unless LD_LIBRARY_PATH has it.
LD_LIBRARY_PATH=$libdir/lib64 nbdkit -v -U $tmp/run4.sock "${args[@]}" --run 'nbdinfo --size "$uri"' 2>$tmp/log
if grep 're-executing' $tmp/log; then fail "re-executed with LD_LIBRARY_PATH set"; fi
