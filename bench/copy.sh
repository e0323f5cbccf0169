#!/usr/bin/env bash
# Copy engine, NBD to NBD: `sendense copy` vs `nbdcopy --flush` (we always
# flush) from the same source to a fresh nbdkit memory destination,
# alternating, RUNS (default 5) runs each, on two 4 GiB sources:
#   mixed   a file with random data, allocated zeroes and holes (nbdkit file)
#   sparse  nbdkit sparse-random seed=42 (data and holes)
# plus a data-only case (a 4 GiB file of random data) reported in MiB/s.
# The last line is the median time ratio ours/nbdcopy over mixed+sparse
# (goal: <= 1.00).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
sendense=${SENDENSE:-$sendense} # SENDENSE=path: benchmark another build
runs=${RUNS:-5}
size=$((4 << 30))

# mixed: each 64 MiB stripe is 24 MiB random, 8 MiB of written zeroes and
# 32 MiB of hole. data: random throughout (a 256 MiB block repeated).
mixed=$benchdir/mixed.img data=$benchdir/data.img
head -c 256M /dev/urandom > $benchdir/rand256
truncate -s $size $mixed
for i in $(seq 0 63); do
    dd if=$benchdir/rand256 of=$mixed bs=1M seek=$((i*64)) skip=$(( (i*24) % 232 )) count=24 conv=notrunc status=none
    dd if=/dev/zero of=$mixed bs=1M seek=$((i*64+24)) count=8 conv=notrunc status=none
done
for i in $(seq 0 15); do cat $benchdir/rand256; done > $data
rm $benchdir/rand256
cat $mixed $data > /dev/null # page cache

pids=()
stop_servers () { for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; pids=(); }
trap 'stop_servers; rm -rf "$benchdir"' EXIT

# serve NAME ARGS...: start nbdkit on $benchdir/NAME.sock.
serve () {
    local name=$1; shift
    rm -f $benchdir/$name.sock $benchdir/$name.pid
    nbdkit -U $benchdir/$name.sock -P $benchdir/$name.pid "$@"
    while [ ! -s $benchdir/$name.pid ] || [ ! -S $benchdir/$name.sock ]; do sleep 0.02; done
    pids+=($(cat $benchdir/$name.pid))
}
src=nbd+unix:///?socket=$benchdir/src.sock dst=nbd+unix:///?socket=$benchdir/dst.sock

# once TOOL SRC-ARGS...: one copy with TOOL (ours|nbdcopy) to a fresh
# destination; prints the seconds.
once () {
    local tool=$1; shift
    serve src -r "$@"
    serve dst memory size=$size
    case $tool in
        ours) timeit $sendense copy -q $src $dst ;;
        nbdcopy) timeit nbdcopy --flush $src $dst ;;
    esac
    stop_servers
}

echo "sources: mixed $(du -h $mixed | cut -f1) allocated of 4 GiB; sparse-random seed=42; $runs runs each, alternating"
ours=() theirs=() om=() tm=() os=() ts=() od=() td=()
for r in $(seq $runs); do
    # Alternate who goes first.
    for t in $( ((r % 2)) && echo ours nbdcopy || echo nbdcopy ours); do
        m=$(once $t file $mixed)
        s=$(once $t sparse-random size=$size seed=42)
        d=$(once $t file $data)
        if [ $t = ours ]; then om+=($m) os+=($s) od+=($d); ours+=($(echo "$m + $s" | bc -l))
        else tm+=($m) ts+=($s) td+=($d); theirs+=($(echo "$m + $s" | bc -l)); fi
    done
    printf 'run %d: mixed ours %.3f nbdcopy %.3f | sparse ours %.3f nbdcopy %.3f | data ours %.3f nbdcopy %.3f\n' \
        $r ${om[-1]} ${tm[-1]} ${os[-1]} ${ts[-1]} ${od[-1]} ${td[-1]}
done
printf 'median mixed:  ours %.3f s, nbdcopy %.3f s\n' $(median "${om[@]}") $(median "${tm[@]}")
printf 'median sparse: ours %.3f s, nbdcopy %.3f s\n' $(median "${os[@]}") $(median "${ts[@]}")
mo=$(median "${od[@]}") mt=$(median "${td[@]}")
printf 'data-only 4 GiB: ours %.3f s (%.0f MiB/s), nbdcopy %.3f s (%.0f MiB/s)\n' \
    $mo $(echo "4096/$mo" | bc -l) $mt $(echo "4096/$mt" | bc -l)
printf 'ratio %.2f\n' $(echo "$(median "${ours[@]}") / $(median "${theirs[@]}")" | bc -l)
