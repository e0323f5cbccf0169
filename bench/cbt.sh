#!/usr/bin/env bash
# Extent map of an incremental export: a 2 TiB disk with 100 000 changed
# areas (changed-areas=), mapped by nbdinfo --map through our plugin, side
# by side with nbdkit's extentlist filter serving the same areas over the
# null plugin. Prints time and peak memory (RSS) of each; the last line is
# the time ratio ours/extentlist. Goal: ours under 1 s and 64 MiB.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-5}
disk=$benchdir/disk.img areas=$benchdir/areas extlist=$benchdir/extentlist
truncate -s 2T $disk
# 100 000 areas of 4 KiB..1 MiB at random sector-aligned offsets, unsorted.
python3 - $areas $extlist <<'PY'
import random, sys
random.seed(42)
size = 2 << 40
areas = [(random.randrange(0, size - (1 << 20)) // 512 * 512, random.randrange(8, 2048) * 512) for _ in range(100000)]
with open(sys.argv[1], "w") as f:
    f.write("# 100000 changed areas\n")
    for o, l in areas:
        f.write(f"{o} {l}\n")
with open(sys.argv[2], "w") as f:  # extentlist wants sorted, non-overlapping
    merged = []
    for o, l in sorted(areas):
        if merged and o <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], o + l - merged[-1][0])
        else:
            merged.append([o, l])
    for o, l in merged:
        f.write(f"{o} {l}\n")
PY
# measure CMD...: prints "seconds maxrss_kib" of nbdkit and its children.
measure () {
    /usr/bin/time -f '%e %M' -o $benchdir/time "$@" > $benchdir/map
    cat $benchdir/time
}
ours=() peer=() rss_ours=0 rss_peer=0
for r in $(seq $runs); do
    read -r t m < <(measure nbdkit -U - $plugin libdir=$fakevddk file=$disk changed-areas=$areas --run 'nbdinfo --map "$uri"')
    ours+=($t); rss_ours=$(( m > rss_ours ? m : rss_ours ))
    lines_ours=$(wc -l < $benchdir/map)
    read -r t m < <(measure nbdkit -U - --filter=extentlist null 2T extentlist=$extlist --run 'nbdinfo --map "$uri"')
    peer+=($t); rss_peer=$(( m > rss_peer ? m : rss_peer ))
    echo "run $r: sendense ${ours[-1]} s, extentlist ${peer[-1]} s"
done
mo=$(median "${ours[@]}") mp=$(median "${peer[@]}")
echo "map lines: $lines_ours (sendense)"
printf 'sendense:   %.2f s, peak RSS %d MiB (nbdkit + plugin + nbdinfo, largest process)\n' $mo $((rss_ours/1024))
printf 'extentlist: %.2f s, peak RSS %d MiB\n' $mp $((rss_peer/1024))
printf 'ratio %.2f\n' $(echo "$mo/$mp" | bc -l)
