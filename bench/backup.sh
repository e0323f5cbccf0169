#!/usr/bin/env bash
# Backup cost in the lab: a 16 GiB disk with 4 GiB of data. A full backup;
# then, RUNS times, 1% of the disk changed in scattered 64 KiB-1 MiB writes
# and an incremental backup, and an incremental with nothing changed (the
# fixed cost: login, snapshot, process start). Prints time and bytes copied
# of each. Goals: (incremental - fixed) <= 3% of the full's time, and the
# incremental copies <= changed bytes + 1% of the disk. The last line is
# the ratio (incremental - fixed) / full.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
size=$((16 << 30))
# --snapshot-links: the lab's snapshots cost next to nothing, as vSphere's do
# (a redo log, no copy); without it the lab copies the 4 GiB of data at
# every snapshot, 2-6 s that would swamp the fixed cost. Guest writes go
# through the lab, so the snapshots stay frozen.
start_lab --snapshot-links --vm bench:16G+4G
export SENDENSE_REPOSITORY=$benchdir/repo

# backup: prints "seconds bytes_copied" of one backup of the bench VM.
backup () {
    local t0 t1
    t0=$(date +%s.%N)
    "$sendense" backup --json bench > $benchdir/out
    t1=$(date +%s.%N)
    python3 - "$(echo "$t1 - $t0" | bc -l)" $benchdir/out <<'PY'
import json, sys
for line in open(sys.argv[2]):
    m = json.loads(line)
    if m.get("message_type") == "summary":
        print(f"{float(sys.argv[1]):.3f} {m['bytes_copied']} {m['level']}")
PY
}

read -r tf bf lf < <(backup)
echo "full:        ${tf} s, $(( bf >> 20 )) MiB copied ($lf)"
incr=() fixed=() changed_total=0 worst_extra=0
for r in $(seq $runs); do
    # 1% of the disk in scattered 64 KiB..1 MiB writes (sector aligned).
    python3 - $r $size > $benchdir/writes <<'PY'
import random, sys
random.seed(int(sys.argv[1])); size = int(sys.argv[2]); target = size // 100; done = 0
while done < target:
    n = min(random.randrange(128, 2049) * 512, target - done)
    print(random.randrange(0, (size - n) // 512) * 512, n)
    done += n
PY
    changed=0
    while read -r off len; do
        "$sendense" lab write bench 2000 $off $len --seed $((off % 1000)) > /dev/null
        changed=$((changed + len))
    done < $benchdir/writes
    read -r ti bi li < <(backup)
    read -r t0 b0 l0 < <(backup)
    incr+=($ti) fixed+=($t0)
    extra=$(( bi - changed ))
    echo "run $r: changed $(( changed >> 20 )) MiB in $(wc -l < $benchdir/writes) writes; incremental ${ti} s, $(( bi >> 20 )) MiB copied ($li); nothing changed ${t0} s, $b0 bytes copied ($l0)"
    (( extra > worst_extra )) && worst_extra=$extra
    [ "$li" = incremental ] || { echo "expected an incremental, got $li" >&2; exit 1; }
done
mi=$(median "${incr[@]}") m0=$(median "${fixed[@]}")
printf 'median incremental %.3f s, fixed cost %.3f s, full %.3f s\n' $mi $m0 $tf
printf 'bytes copied beyond the changed bytes: at most %d KiB (budget: 1%% of the disk = %d MiB)\n' $((worst_extra >> 10)) $((size / 100 >> 20))
printf 'ratio %.3f\n' $(echo "($mi - $m0) / $tf" | bc -l)
