#!/usr/bin/env bash
# Background mode: nbdkit daemonizes (forks) after loading the plugin; the
# Go library is loaded in the forked server, so reads must not hang.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdcopy --version

disk=$tmp/disk.img
make_disk "$disk" $((64*1024*1024)) 0 65536 $((64*1024*1024 - 4096)) 4096
sock=$tmp/sock
pidfile=$tmp/nbdkit.pid
# Relative paths must survive nbdkit's chdir to / in background mode.
cd $tmp
nbdkit -P $pidfile -U $sock $(plugin_args) file=disk.img
cleanup_fn sh -c "kill \$(cat $pidfile) 2>/dev/null"
wait_for test -s $pidfile
timeout 60 nbdcopy "nbd+unix:///?socket=$sock" $tmp/out.raw
cmp "$disk" $tmp/out.raw
timeout 60 nbdinfo --map "nbd+unix:///?socket=$sock" > $tmp/map
grep -E '^ +0 +65536 +0 +data$' $tmp/map
kill "$(cat $pidfile)"
