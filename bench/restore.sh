#!/usr/bin/env bash
# Restore cost: a 16 GiB disk with 4 GiB of data, backed up in the lab
# (a full), restored as raw by `sendense restore` — which reads the chain
# pinned through qemu-nbd and checks every byte against the manifest's
# SHA-256s (each chunk, and the whole disk) — and by what restore did
# before those checks: `qemu-img convert -f qcow2 -O raw -W` of the image,
# then an fsync of the output. Runs alternate (RUNS each, default 3), the
# output is removed after each; medians. The last line is the ratio
# sendense / qemu-img convert (goal: <= 1.15).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
start_lab --snapshot-links --vm bench:16G+4G
export SENDENSE_REPOSITORY=$benchdir/repo
"$sendense" backup bench > /dev/null
image=$(ls "$benchdir"/repo/bench/*-disk2000.qcow2)
out=$benchdir/out

restore_sendense () {
    "$sendense" restore -q bench --to "$out" --force
    rm -f "$out"/bench-disk2000.raw
}
restore_convert () {
    mkdir -p "$out"
    qemu-img convert -q -f qcow2 -O raw -W "$image" "$out/convert.raw"
    python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)' "$out/convert.raw"
    rm -f "$out/convert.raw"
}

# One of each first, untimed: both then read the image from the page cache.
restore_sendense; restore_convert
s=() c=()
for r in $(seq "$runs"); do
    s+=("$(timeit restore_sendense)")
    c+=("$(timeit restore_convert)")
    echo "run $r: sendense restore ${s[-1]} s, qemu-img convert ${c[-1]} s"
done
ms=$(median "${s[@]}") mc=$(median "${c[@]}")
printf 'median: sendense restore (checked) %.3f s, qemu-img convert %.3f s\n' "$ms" "$mc"
printf 'ratio %.3f\n' "$(echo "$ms / $mc" | bc -l)"
