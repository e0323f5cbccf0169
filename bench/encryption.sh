#!/usr/bin/env bash
# Encryption cost in the lab: full and incremental backups of the same VM
# (a 8 GiB disk with 2 GiB of data) into a plain and an encrypted
# repository (AES-256: LUKS images, sealed manifests, HMAC digests), in
# one run: each round backs up into both, the order alternating, and the
# ratios are of the medians. Goal: encrypted / plain <= 1.15 for both.
# KEY_CACHE=0s measures without the key cache ([repository] key_cache):
# every encrypted backup then pays scrypt.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
size=$((8 << 30))
start_lab --snapshot-links --vm bench:8G+2G
printf 'bench passphrase\n' > $benchdir/pass
if [ -n "${KEY_CACHE:-}" ]; then
    printf '[repository]\nkey_cache = "%s"\n' "$KEY_CACHE" > $benchdir/sendense.toml
    export SENDENSE_CONFIG=$benchdir/sendense.toml
fi
chmod 600 $benchdir/pass

# backup REPO ENCRYPTED: prints the wall seconds of one backup of the
# bench VM into REPO (created encrypted when ENCRYPTED is 1) and its level.
backup () {
    local t0 t1 env=()
    [ "$2" = 1 ] && env=(SENDENSE_REPOSITORY_PASSWORD_FILE=$benchdir/pass)
    [ -e "$1" ] || { [ "$2" = 1 ] && "$sendense" init --repo "$1" --encrypt --password-file $benchdir/pass > /dev/null; } || true
    t0=$(date +%s.%N)
    env "${env[@]}" "$sendense" backup --json --repo "$1" bench > $benchdir/out
    t1=$(date +%s.%N)
    python3 - "$(echo "$t1 - $t0" | bc -l)" $benchdir/out <<'PY'
import json, sys
for line in open(sys.argv[2]):
    m = json.loads(line)
    if m.get("message_type") == "summary":
        print(f"{float(sys.argv[1]):.3f} {m['level']}")
PY
}

# change R: 1% of the disk in scattered 64 KiB..1 MiB writes.
change () {
    python3 - $1 $size <<'PY' | while read -r off len; do "$sendense" lab write bench 2000 $off $len --seed $((off % 1000)) > /dev/null; done
import random, sys
random.seed(int(sys.argv[1])); size = int(sys.argv[2]); target = size // 100; done = 0
while done < target:
    n = min(random.randrange(128, 2049) * 512, target - done)
    print(random.randrange(0, (size - n) // 512) * 512, n)
    done += n
PY
}

fp=() fe=() ip=() ie=()
for r in $(seq $runs); do
    rm -rf $benchdir/plain $benchdir/enc
    # Alternate which repository goes first (page cache, CPU frequency).
    if (( r % 2 )); then order="plain enc"; else order="enc plain"; fi
    for which in $order; do
        read -r t l < <(backup $benchdir/$which $([ $which = enc ] && echo 1 || echo 0))
        [ "$l" = full ] || { echo "expected a full, got $l" >&2; exit 1; }
        if [ $which = enc ]; then fe+=($t); else fp+=($t); fi
    done
    change $r
    for which in $order; do
        read -r t l < <(backup $benchdir/$which $([ $which = enc ] && echo 1 || echo 0))
        [ "$l" = incremental ] || { echo "expected an incremental, got $l" >&2; exit 1; }
        if [ $which = enc ]; then ie+=($t); else ip+=($t); fi
    done
    echo "run $r: full plain ${fp[-1]} s, encrypted ${fe[-1]} s; incremental plain ${ip[-1]} s, encrypted ${ie[-1]} s"
done
mfp=$(median "${fp[@]}") mfe=$(median "${fe[@]}") mip=$(median "${ip[@]}") mie=$(median "${ie[@]}")
printf 'median full: plain %.3f s, encrypted %.3f s: ratio %.3f\n' $mfp $mfe $(echo "$mfe / $mfp" | bc -l)
printf 'median incremental: plain %.3f s, encrypted %.3f s: ratio %.3f\n' $mip $mie $(echo "$mie / $mip" | bc -l)
