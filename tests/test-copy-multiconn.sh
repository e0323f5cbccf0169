#!/usr/bin/env bash
# Multi-conn on and off: --connections N is used only when both servers
# allow multi-conn; the content is right either way.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdkit --filter=multi-conn null --version
requires nbdcopy --version

size=$((96*1024*1024))
serve src -r sparse-random size=$size seed=3 percent=50
nbdcopy "$(uri src)" $tmp/src.img

n=0
for case in "on 4 4" "on 2 2" "on 1 1" "src-off 4 1" "dst-off 4 1"; do
    set -- $case
    n=$((n+1))
    srcuri=$(uri src) sfilter= dfilter=
    case $1 in
        src-off) serve src$n -r --filter=multi-conn sparse-random size=$size seed=3 percent=50 multi-conn-mode=disable
                 srcuri=$(uri src$n) ;;
        dst-off) dfilter="--filter=multi-conn" ;;
    esac
    # The log filter counts the connections the destination really saw.
    if [ $1 = dst-off ]; then
        serve dst$n --filter=log $dfilter memory size=$size multi-conn-mode=disable logfile=$tmp/log$n
    else
        serve dst$n --filter=log memory size=$size logfile=$tmp/log$n
    fi
    nbdinfo --can multi-conn "$(uri dst$n)" || test $1 = dst-off
    before=$(grep -c ' Connect ' $tmp/log$n)
    $sendense copy --json --connections $2 "$srcuri" "$(uri dst$n)" | tee $tmp/out$n.json
    grep "\"connections\":$3," $tmp/out$n.json
    test "$(grep -c ' Connect ' $tmp/log$n)" -eq $((before + $3))
    nbdcopy "$(uri dst$n)" $tmp/dst$n.img
    cmp $tmp/src.img $tmp/dst$n.img
    rm $tmp/dst$n.img
done
