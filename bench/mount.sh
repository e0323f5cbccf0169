#!/usr/bin/env bash
# Instant access: time from starting `sendense mount` on a 16 GiB restore
# point (a full with 2 GiB of data and an incremental on top) to the first
# answer of `nbdinfo` on its export — which includes finding the point,
# checking its chain (every image's header against the manifests) and
# starting qemu-storage-daemon with the chain pinned — side by side with
# the peer: `qemu-nbd --read-only` started on the top image (its header
# choosing the backing file, nothing checked) until nbdinfo answers. Runs
# alternate (RUNS each, default 5); medians and their ratio
# sendense / qemu-nbd. The goal is an absolute one: first byte within 1 s
# whatever the point's size.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-5}
start_lab --vm bench:16G+2G
export SENDENSE_REPOSITORY=$benchdir/repo
"$sendense" backup bench > /dev/null
"$sendense" lab write bench 2000 $((8 << 30)) $((64 << 20)) --seed 7 > /dev/null
"$sendense" backup bench > /dev/null
top=$(ls "$benchdir"/repo/bench/*-disk2000.qcow2 | sort | tail -1)
now () { date +%s.%N; }

# sendense_once: seconds from starting mount to nbdinfo's first answer.
sendense_once () {
    local out=$benchdir/mount.out t0 uri
    rm -f "$out"
    t0=$(now)
    "$sendense" mount --json bench > "$out" 2> "$benchdir/mount.err" &
    local pid=$!
    until grep -q '"ready"' "$out" 2>/dev/null; do
        kill -0 $pid 2>/dev/null || { cat "$benchdir/mount.err" >&2; exit 1; }
        sleep 0.005
    done
    uri=$(python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["uri"])' < "$out")
    nbdinfo --size "$uri" > /dev/null
    echo "$(now) - $t0" | bc -l
    kill -INT $pid; wait $pid
}

# qemu_nbd_once: the same for qemu-nbd on the top image.
qemu_nbd_once () {
    local sock=$benchdir/q.sock t0
    t0=$(now)
    qemu-nbd --read-only --persistent --socket="$sock" -f qcow2 "$top" &
    local pid=$!
    until nbdinfo --size "nbd+unix:///?socket=$sock" > /dev/null 2>&1; do sleep 0.005; done
    echo "$(now) - $t0" | bc -l
    kill $pid; wait $pid || true
}

sendense_once > /dev/null; qemu_nbd_once > /dev/null # warm the page cache
s=() q=()
for r in $(seq "$runs"); do
    s+=("$(sendense_once)"); q+=("$(qemu_nbd_once)")
    printf 'run %d: sendense mount %.3f s, qemu-nbd %.3f s\n' "$r" "${s[-1]}" "${q[-1]}"
done
ms=$(median "${s[@]}") mq=$(median "${q[@]}")
printf 'median time to first nbdinfo answer (16 GiB point): sendense mount %.3f s, qemu-nbd %.3f s\n' "$ms" "$mq"
printf 'ratio %.3f\n' "$(echo "$ms / $mq" | bc -l)"
