#!/usr/bin/env bash
# Debug flags: -D sendense.stats=1 prints, when the plugin unloads, one line
# per VixDiskLib function called (calls, errors, bytes, total and mean µs),
# the most time first; -v shows every call but the data path, which
# -D sendense.datapath=1 adds.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdcopy --version

disk=$tmp/disk.img
make_disk "$disk" $((8*1024*1024)) 0 $((2*1024*1024))
cp "$disk" $tmp/target.img

nbdkit -v -D sendense.stats=1 -U - $plugin libdir=$fakevddk file=$tmp/target.img \
    --run 'nbdcopy '$disk' "$uri" && nbdcopy "$uri" '$tmp/out.raw 2>$tmp/log
cmp "$disk" $tmp/out.raw
grep -A40 'VixDiskLib call statistics (-D sendense.stats=1):' $tmp/log > $tmp/stats
cat $tmp/stats
grep -E 'function +calls +errors +bytes +total µs +mean µs' $tmp/stats
# nbdcopy wrote and read 2 MiB of data at least, through the async calls.
for fn in ReadAsync WriteAsync; do
    line=$(grep -E " VixDiskLib_$fn +[0-9]" $tmp/stats)
    set -- $line
    [ "$4" -ge 1 ] && [ "$5" -eq 0 ] && [ "$6" -ge $((2*1024*1024)) ] && [ "$7" -ge "$8" ] ||
        fail "bad $fn line: $line"
done
grep -E ' VixDiskLib_(ConnectEx|Open|Close|Disconnect|GetInfo|QueryAllocatedBlocks) +[0-9]' $tmp/stats
# Sorted by total time, the most first.
awk '/debug:   VixDiskLib_/ { print $(NF-1) }' $tmp/stats > $tmp/totals
sort -rn $tmp/totals | diff - $tmp/totals

# -v traces every call but the data path...
grep 'call VixDiskLib_Open(path=' $tmp/log
if grep -E 'call VixDiskLib_(Read|Write)Async\(' $tmp/log; then fail "data path traced without -D sendense.datapath=1"; fi
if grep 'call statistics' <(nbdkit -v -U - $plugin libdir=$fakevddk file=$disk --run true 2>&1); then
    fail "statistics without -D sendense.stats=1"
fi
# ...which -D sendense.datapath=1 adds.
nbdkit -v -D sendense.datapath=1 -U - -r $plugin libdir=$fakevddk file=$disk --run 'nbdcopy "$uri" null:' 2>$tmp/log2
grep -E 'call VixDiskLib_ReadAsync\(start=[0-9]+ num=[0-9]+\) = ok' $tmp/log2
