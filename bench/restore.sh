#!/usr/bin/env bash
# Restore cost: a 16 GiB disk with 4 GiB of data, backed up in the lab (a
# full), then 64 MiB of it changed in scattered writes and backed up again
# (an incremental). Each point is restored as raw by `sendense restore` —
# which checks the chain, reads it pinned, and checks every byte against
# the manifests' SHA-256s: each chunk, and for the full the whole disk —
# and by what restore did before those checks: `qemu-img convert -f qcow2
# -O raw -W` of the image, then an fsync of the output. Runs alternate
# (RUNS each, default 3), the output is removed after each; medians of the
# wall time, and of the CPU time (user + system, children included), which
# a loaded machine disturbs less. The last line is the ratio of the wall
# times sendense / qemu-img convert for the full (goal: <= 1.15).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
start_lab --snapshot-links --vm bench:16G+4G
export SENDENSE_REPOSITORY=$benchdir/repo
"$sendense" backup bench > /dev/null
for i in $(seq 64); do
    "$sendense" lab write bench 2000 $(( (i * 7919 % 16000) << 20 )) $((1 << 20)) --seed "$i" > /dev/null
done
"$sendense" backup bench > /dev/null
mapfile -t ids < <("$sendense" list bench --json | python3 -c 'import json,sys; [print(m["id"]) for m in map(json.loads, sys.stdin) if m.get("message_type") == "backup"]')
out=$benchdir/out
mkdir -p "$out"
export sendense out

# measure CMD: "wall cpu" seconds of one run of CMD (a bash command line).
measure () {
    /usr/bin/time -f '%e %U %S' -o "$benchdir/time" bash -c "$1" > /dev/null
    awk '{printf "%.3f %.3f\n", $1, $2 + $3}' "$benchdir/time"
}

# compare NAME ID: the two restores of backup ID, alternating.
compare () {
    local name=$1 id=$2 image
    image=$(ls "$benchdir"/repo/bench/"$id"-disk2000.qcow2)
    local s="\"\$sendense\" restore -q bench --backup $id --to \"\$out\" --force && rm -f \"\$out\"/bench-disk2000.raw"
    local c="qemu-img convert -q -f qcow2 -O raw -W $image \"\$out\"/c.raw && python3 -c 'import os, sys; os.fsync(os.open(sys.argv[1], os.O_RDWR))' \"\$out\"/c.raw && rm -f \"\$out\"/c.raw"
    # One of each first, untimed: both then read the images from the page cache.
    bash -c "$s"; bash -c "$c"
    local sw=() sc=() cw=() cc=() w u
    for r in $(seq "$runs"); do
        read -r w u < <(measure "$s"); sw+=("$w") sc+=("$u")
        read -r w u < <(measure "$c"); cw+=("$w") cc+=("$u")
        echo "$name run $r: sendense restore ${sw[-1]} s (cpu ${sc[-1]} s), qemu-img convert ${cw[-1]} s (cpu ${cc[-1]} s)"
    done
    msw=$(median "${sw[@]}") msc=$(median "${sc[@]}") mcw=$(median "${cw[@]}") mcc=$(median "${cc[@]}")
    printf '%s median: sendense restore (checked) %.3f s, cpu %.3f s; qemu-img convert %.3f s, cpu %.3f s; ratio %.3f, cpu ratio %.3f\n' \
        "$name" "$msw" "$msc" "$mcw" "$mcc" "$(echo "$msw / $mcw" | bc -l)" "$(echo "$msc / $mcc" | bc -l)"
}

compare incremental "${ids[1]}"
compare full "${ids[0]}"
printf 'ratio %.3f\n' "$(echo "$msw / $mcw" | bc -l)"
