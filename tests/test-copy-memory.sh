#!/usr/bin/env bash
# sendense copy between nbdkit servers: memory -> file and data -> memory,
# checked byte for byte with cmp; the JSON summary and --checksum.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdcopy --version
requires python3 --version

# 1. memory (filled with a disk of data and holes) -> file.
size=$((64*1024*1024 + 4096))
make_disk $tmp/disk.img $size 0 1048576 $((5*1048576)) 65536 $((40*1048576)) 3145728 $((size - 8192)) 8192
serve mem memory size=$size
nbdcopy $tmp/disk.img "$(uri mem)"
truncate -s $size $tmp/out.img
serve file file $tmp/out.img
$sendense copy --json --checksum --connections 4 "$(uri mem)" "$(uri file)" > $tmp/summary.json
cat $tmp/summary.json
cmp $tmp/disk.img $tmp/out.img
python3 - $tmp/summary.json $size $(sha256sum < $tmp/disk.img | cut -d' ' -f1) <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 1, lines
s = lines[0]
size = int(sys.argv[2])
assert s["message_type"] == "summary", s
for k in ("bytes_read", "bytes_written", "bytes_zeroed", "bytes_skipped", "seconds", "mib_per_sec",
          "connections", "requests", "request_size"):
    assert k in s, k
assert s["bytes_written"] + s["bytes_zeroed"] + s["bytes_skipped"] == size, s
data = (1 + 3) * 1048576 + 65536 + 8192   # the data only (memory pages round up a little)
assert data <= s["bytes_written"] <= data + 65536, s
assert s["bytes_read"] >= s["bytes_written"], s
assert s["sha256"] == sys.argv[3], s
assert s["connections"] == 4, s   # memory and file both allow multi-conn
PY

# 2. data plugin (a pattern, zeroes and a hole) -> memory, read back.
serve data data data="@0 ( 0x55 0xaa 1 2 3 )*20000 @2097152 ( 7 )*65536 @8388608 ( 0 )*131072 @12582912 9" size=16M
serve mem2 memory size=16M
$sendense copy --request-size 64K --requests 4 "$(uri data)" "$(uri mem2)" > $tmp/text.out
cat $tmp/text.out
grep '^copied 16.0 MiB in ' $tmp/text.out
nbdcopy "$(uri data)" $tmp/data.img
nbdcopy "$(uri mem2)" $tmp/mem2.img
cmp $tmp/data.img $tmp/mem2.img

# -q prints nothing on success.
serve mem3 memory size=16M
test -z "$($sendense copy -q "$(uri data)" "$(uri mem3)")"
