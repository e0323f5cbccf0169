# Shared helpers for bench/*.sh (side-by-side benchmarks that print ratios).
top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
builddir=$top_srcdir/build
plugin=$builddir/nbdkit-sendense-plugin.so
fakevddk=$builddir/fakevddk
sendense=$builddir/sendense
export PATH="$builddir:/usr/bin:$PATH" LC_ALL=C
# As sendense runs it: VDDK's directory in LD_LIBRARY_PATH (no re-execution).
export LD_LIBRARY_PATH="$fakevddk/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for f in "$plugin" "$fakevddk/lib64/libvixDiskLib.so.8" "$sendense"; do
    [ -e "$f" ] || { echo "$f is missing: run make first" >&2; exit 1; }
done
benchdir=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/sendense-bench.XXXXXX")
trap 'rm -rf "$benchdir"' EXIT

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

# start_lab ARGS...: start `sendense lab ARGS...` in the background (its
# files in $benchdir/lab), wait until it serves and export its settings
# (SENDENSE_*, FAKEVDDK_ROOT); the lab is stopped on exit.
start_lab () {
    "$sendense" lab --dir $benchdir/lab --env $benchdir/lab.env "$@" > $benchdir/lab.out 2>&1 &
    lab_pid=$!
    trap 'kill $lab_pid 2>/dev/null; wait $lab_pid 2>/dev/null; rm -rf "$benchdir"' EXIT
    for _ in $(seq 600); do [ -s $benchdir/lab.env ] && break; sleep 0.1; done
    [ -s $benchdir/lab.env ] || { cat $benchdir/lab.out; exit 1; }
    set -a; source $benchdir/lab.env; set +a
}
