#!/usr/bin/env bash
# Plugin write throughput: nbdcopy of a 4 GiB file (2 GiB of random data in
# 64 MiB stripes, the rest holes) into a fresh 4 GiB disk through our plugin
# and the fake VDDK vs into a fresh 4 GiB file through nbdkit's own C file
# plugin, alternating; the last line is the median time ratio ours/file
# (goal: <= 1.15). Both targets start sparse (ours made by create=true) and
# are checked against the source after each run; nbdcopy's defaults, no
# --flush (the page cache takes the writes on both sides). 2 GiB per run
# soon exceeds the dirty page limit, so on a disk the writeback dominates
# (and nbdkit-file's hole punching for nbdcopy's zeroes counts against it,
# while the plugin finds nothing allocated to zero on the new disk);
# BENCH_TMPDIR=/dev/shm measures the plugins rather than the disk.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-5}
src=$benchdir/src.img
truncate -s 4G $src
for i in $(seq 0 2 63); do
    head -c 64M /dev/urandom | dd of=$src bs=1M seek=$((i*64)) conv=notrunc status=none
done
echo "4 GiB source, $(du -h $src | cut -f1) allocated; $runs runs each, alternating"
cat $src > /dev/null   # warm the page cache

ours=() file=()
for r in $(seq $runs); do
    rm -f $benchdir/file.img $benchdir/ours.vmdk $benchdir/ours-flat.vmdk
    truncate -s 4G $benchdir/file.img
    sync
    file+=($(timeit nbdkit -U - file $benchdir/file.img --run "nbdcopy $src \"\$uri\""))
    sync
    ours+=($(timeit nbdkit -U - $plugin libdir=$fakevddk file=$benchdir/ours.vmdk create=true create-size=4G \
        --run "nbdcopy $src \"\$uri\""))
    echo "run $r: file ${file[-1]} s, sendense ${ours[-1]} s"
    cmp $src $benchdir/file.img
    cmp $src $benchdir/ours-flat.vmdk
done
mo=$(median "${ours[@]}") mf=$(median "${file[@]}")
printf 'median: file %.3f s (%.0f MiB/s), sendense %.3f s (%.0f MiB/s)\n' $mf $(echo "4096/$mf" | bc -l) $mo $(echo "4096/$mo" | bc -l)
printf 'ratio %.2f\n' $(echo "$mo/$mf" | bc -l)
