#!/usr/bin/env bash
# SSH tunnel throughput: internal/tunnel vs OpenSSH, same sshd, same
# bytes, on this machine.
#   ours     a 2 GiB file of random data written as NBD requests through our
#            tunnel (an SSH connection to sshd on a loopback port, a forward
#            to `nbdkit null` on the "control plane" side) by
#            `tunnelbench nbdwrite`, a minimal NBD client that hands the
#            file's pages to the socket with sendfile(2), so that the data
#            enters user space once, in the tunnel, as it does in ssh
#   openssh  ssh -c aes128-gcm@openssh.com host 'cat >/dev/null' < file
# Both against the same sshd (internal/sshtest), alternating who goes
# first, RUNS (default 7) runs each; the times include the SSH handshake.
# Also measured, not in the ratio: nbdcopy as the NBD client through the
# tunnel, over 1 and 4 SSH connections (NBDCOPY=0 skips these).
# The last line is the median throughput ratio ours/OpenSSH (goal >= 0.90).
set -euo pipefail
top_srcdir=$(cd "$(dirname "$0")/.." && pwd)
export LC_ALL=C
runs=${RUNS:-7}
size=$((2 << 30))
for tool in sshd ssh nbdkit go bc; do
    command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "$tool is missing" >&2; exit 1; }
done

# The helpers below are those of bench/lib.sh, which also insists on the
# plugin build this benchmark does not need.
benchdir=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/sendense-bench.XXXXXX")
pids=()
cleanup () {
    for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done
    for p in "${pids[@]}"; do while kill -0 $p 2>/dev/null; do sleep 0.05; done; done
    rm -rf "$benchdir"
}
trap cleanup EXIT
# timeit CMD...: run CMD, print its wall time in seconds.
timeit () {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
# median N...: the median of the numbers.
median () { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2}'; }
mibs () { echo "$size / 1048576 / $1" | bc -l; }

tb=$benchdir/tunnelbench
(cd "$top_srcdir" && go build -o "$tb" ./bench/tunnelbench)

file=$benchdir/random.img
head -c $size /dev/urandom > $file
cat $file > /dev/null # page cache

# The "control plane": sshd and nbdkit null, both on this machine.
mkdir $benchdir/sshd
$tb sshd $benchdir/sshd > $benchdir/sshd.env &
pids+=($!)
while [ $(wc -l < $benchdir/sshd.env) -lt 4 ]; do
    kill -0 ${pids[-1]} || { echo "sshd did not start" >&2; exit 1; }
    sleep 0.05
done
source $benchdir/sshd.env
sock=$benchdir/null.sock
nbdkit -U $sock -P $benchdir/nbdkit.pid null size=$size
while [ ! -s $benchdir/nbdkit.pid ] || [ ! -S $sock ]; do sleep 0.02; done
pids+=($(cat $benchdir/nbdkit.pid))

# ours [CONNECTIONS [CLIENT...]]: one copy through the tunnel; seconds.
ours () {
    local conns=${1:-0}; shift || true
    local client=("$@")
    [ ${#client[@]} -gt 0 ] || client=($tb nbdwrite $file {})
    timeit $tb copy -connections $conns $port $user $key $known_hosts $sock -- "${client[@]}"
}
openssh () {
    timeit ssh -c aes128-gcm@openssh.com -p $port -i $key -o IdentitiesOnly=yes \
        -o UserKnownHostsFile=$known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes -F none \
        $user@127.0.0.1 'cat >/dev/null' < $file
}

echo "2 GiB of random data; $runs runs each, alternating; sshd on 127.0.0.1:$port, nbdkit null behind it"
o=() s=() c1=() c4=()
for r in $(seq $runs); do
    if ((r % 2)); then a=$(ours); b=$(openssh); else b=$(openssh); a=$(ours); fi
    o+=($a) s+=($b)
    line=$(printf 'run %d: ours %.3f s (%.0f MiB/s), openssh %.3f s (%.0f MiB/s)' $r $a $(mibs $a) $b $(mibs $b))
    if [ "${NBDCOPY:-1}" != 0 ]; then
        x=$(ours 1 nbdcopy $file {}); y=$(ours 4 nbdcopy $file {})
        c1+=($x) c4+=($y)
        line+=$(printf ' | nbdcopy via 1 SSH connection %.3f s, via 4 %.3f s' $x $y)
    fi
    echo "$line"
done
mo=$(median "${o[@]}") ms=$(median "${s[@]}")
printf 'median ours:    %.3f s, %.0f MiB/s (tunnelbench nbdwrite, 1 SSH connection)\n' $mo $(mibs $mo)
printf 'median openssh: %.3f s, %.0f MiB/s (ssh -c aes128-gcm@openssh.com ... cat)\n' $ms $(mibs $ms)
if [ "${NBDCOPY:-1}" != 0 ]; then
    m1=$(median "${c1[@]}") m4=$(median "${c4[@]}")
    printf 'median nbdcopy through the tunnel: 1 SSH connection %.0f MiB/s (ratio %.2f), 4 SSH connections %.0f MiB/s (ratio %.2f)\n' \
        $(mibs $m1) $(echo "$ms / $m1" | bc -l) $(mibs $m4) $(echo "$ms / $m4" | bc -l)
fi
printf 'ratio %.2f\n' $(echo "$ms / $mo" | bc -l)
