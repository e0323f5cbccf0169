#!/usr/bin/env bash
# Full backup vs the same parts assembled by hand. In the lab
# (--snapshot-links), `sendense backup --full` of
#   bench   one 16 GiB disk holding 4 GiB of data, and
#   bench4  four 4 GiB disks holding 1 GiB each,
# against the hand pipeline on the same flat files: `nbdkit file` ->
# `nbdcopy --flush` -> `qemu-nbd` on a fresh qcow2 (64 KiB clusters), then
# `sync` (for bench4: four such pipelines at once). Both are timed from
# start to durable data, alternating who goes first, RUNS (default 3) runs
# each. Prints each run's wall and CPU seconds (user+sys of every process
# of the pipeline: less sensitive to other jobs on the machine), the
# medians with MiB/s of data (the disks' data over the wall time), the
# 4-disk ratio, and last the single-disk median wall-time ratio ours/hand
# (goal: both ratios <= 1.05). SENDENSE=path benchmarks another build
# (its plugin next to it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
ours_bin=${SENDENSE:-$sendense}
for tool in nbdcopy qemu-nbd qemu-img nbdkit /usr/bin/time; do
    command -v $tool > /dev/null || { echo "$tool is missing (make deps)" >&2; exit 1; }
done
start_lab --snapshot-links --vm bench:16G+4G --vm bench4:4G+1G,4G+1G,4G+1G,4G+1G
export SENDENSE_REPOSITORY=$benchdir/repo
flat=$FAKEVDDK_ROOT/LocalDS_0
data_mib=4096 # data copied, in MiB, for either VM

# The hand pipelines: one per flat file, all at once, then sync. Every
# process is waited for, so /usr/bin/time counts its CPU.
cat > $benchdir/hand.sh <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
dir=$1; shift
i=0
for f in "$@"; do
    i=$((i + 1))
    (
        d=$dir/$i
        nbdkit -f -r -U $d.src file file=$f & n=$!
        qemu-nbd -f qcow2 -t -k $d.dst $d.qcow2 & q=$!
        while [ ! -S $d.src ] || [ ! -S $d.dst ]; do sleep 0.01; done
        nbdcopy --flush "nbd+unix:///?socket=$d.src" "nbd+unix:///?socket=$d.dst"
        kill $n $q
        wait $n $q || true
    ) &
done
wait
sync
EOF
chmod +x $benchdir/hand.sh

# measure CMD...: run CMD, print "WALL CPU" in seconds.
measure () {
    /usr/bin/time -f '%e %U %S' -o $benchdir/time "$@" > /dev/null
    awk '{printf "%s %.2f\n", $1, $2 + $3}' $benchdir/time
}

# ours VM: a full backup of VM into a fresh repository.
ours () {
    rm -rf $benchdir/repo
    measure "$ours_bin" backup --full -q "$1"
}

# hand FLAT...: the hand pipelines into fresh qcow2 images.
hand () {
    local i=0 f
    rm -rf $benchdir/hand; mkdir $benchdir/hand
    for f in "$@"; do
        i=$((i + 1))
        qemu-img create -q -f qcow2 -o cluster_size=64k $benchdir/hand/$i.qcow2 $(stat -c %s $f)
    done
    measure $benchdir/hand.sh $benchdir/hand "$@"
}

cat $flat/bench/*-flat.vmdk $flat/bench4/*-flat.vmdk > /dev/null # page cache, for both
load () { cut -d' ' -f1 /proc/loadavg; }
echo "bench: 16 GiB disk, 4 GiB data; bench4: 4 x 4 GiB disks, 1 GiB data each; $runs runs each, alternating; load $(load)"
o1=() h1=() o4=() h4=() co1=() ch1=() co4=() ch4=()
for r in $(seq $runs); do
    for t in $( ((r % 2)) && echo ours hand || echo hand ours); do
        if [ $t = ours ]; then
            read -r w c < <(ours bench); o1+=($w) co1+=($c)
            read -r w c < <(ours bench4); o4+=($w) co4+=($c)
        else
            read -r w c < <(hand $flat/bench/disk1-flat.vmdk); h1+=($w) ch1+=($c)
            read -r w c < <(hand $flat/bench4/disk{1,2,3,4}-flat.vmdk); h4+=($w) ch4+=($c)
        fi
    done
    printf 'run %d: 1 disk: ours %.2f s (%.1f s CPU), hand %.2f s (%.1f s CPU) | 4 disks: ours %.2f s (%.1f s CPU), hand %.2f s (%.1f s CPU) | load %s\n' \
        $r ${o1[-1]} ${co1[-1]} ${h1[-1]} ${ch1[-1]} ${o4[-1]} ${co4[-1]} ${h4[-1]} ${ch4[-1]} $(load)
done
rm -rf $benchdir/repo $benchdir/hand
mo1=$(median "${o1[@]}") mh1=$(median "${h1[@]}") mo4=$(median "${o4[@]}") mh4=$(median "${h4[@]}")
printf 'median 1 disk:  ours %.2f s (%.0f MiB/s, %.1f s CPU), hand %.2f s (%.0f MiB/s, %.1f s CPU)\n' \
    $mo1 $(echo "$data_mib / $mo1" | bc -l) $(median "${co1[@]}") $mh1 $(echo "$data_mib / $mh1" | bc -l) $(median "${ch1[@]}")
printf 'median 4 disks: ours %.2f s (%.0f MiB/s, %.1f s CPU), hand %.2f s (%.0f MiB/s, %.1f s CPU)\n' \
    $mo4 $(echo "$data_mib / $mo4" | bc -l) $(median "${co4[@]}") $mh4 $(echo "$data_mib / $mh4" | bc -l) $(median "${ch4[@]}")
printf '4-disk ratio %.3f\n' $(echo "$mo4 / $mh4" | bc -l)
printf 'ratio %.3f\n' $(echo "$mo1 / $mh1" | bc -l)
