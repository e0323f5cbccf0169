#!/usr/bin/env bash
# Plugin read throughput: nbdcopy $uri null: through our plugin and the
# fake VDDK vs nbdkit's own C file plugin on the same 4 GiB file (2 GiB of
# random data in 64 MiB stripes), alternating; the last line is the median
# time ratio ours/file (goal: <= 1.10). Both read-only (-r), as backups read.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-5}
disk=$benchdir/disk.img
truncate -s 4G $disk
for i in $(seq 0 2 63); do
    head -c 64M /dev/urandom | dd of=$disk bs=1M seek=$((i*64)) conv=notrunc status=none
done
echo "4 GiB disk, $(du -h $disk | cut -f1) allocated; $runs runs each, alternating"
cat $disk > /dev/null   # warm the page cache for both
ours=() file=()
for r in $(seq $runs); do
    file+=($(timeit nbdkit -U - -r file $disk --run 'nbdcopy "$uri" null:'))
    ours+=($(timeit nbdkit -U - -r $plugin libdir=$fakevddk file=$disk --run 'nbdcopy "$uri" null:'))
    echo "run $r: file ${file[-1]} s, sendense ${ours[-1]} s"
done
mo=$(median "${ours[@]}") mf=$(median "${file[@]}")
printf 'median: file %.3f s (%.0f MiB/s), sendense %.3f s (%.0f MiB/s)\n' $mf $(echo "4096/$mf" | bc -l) $mo $(echo "4096/$mo" | bc -l)
printf 'ratio %.2f\n' $(echo "$mo/$mf" | bc -l)
