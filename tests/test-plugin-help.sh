#!/usr/bin/env bash
# --help lists every parameter; --dump-plugin prints the version and
# whether a VDDK is found under libdir.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version

nbdkit $plugin --help > $tmp/help
for p in file libdir server port user password thumbprint vm snapshot transports \
         compression config nfchostport changeid disk-key changed-areas; do
    grep -E "^$p=" $tmp/help || fail "--help does not list $p="
done
nbdkit $plugin --dump-plugin > $tmp/dump
cat $tmp/dump
grep "^name=sendense$" $tmp/dump
grep "^sendense_version=$(cat $top_srcdir/VERSION)$" $tmp/dump
grep "^vddk_found=" $tmp/dump
grep "^sendense_go_library_found=yes$" $tmp/dump
grep "^thread_model=parallel$" $tmp/dump
# With libdir= (nbdkit passes parameters before --dump-plugin output).
nbdkit $plugin --dump-plugin libdir=$fakevddk > $tmp/dump2 2>&1 || true
cat $tmp/dump2
