#!/usr/bin/env bash
# changed-areas=FILE: unsorted and overlapping lines are merged; changed
# and allocated areas are data, changed and unallocated ones hole+zero,
# the rest hole (not zero); reads return the true data regardless.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires nbdcopy --version

disk=$tmp/disk.img
# Data in [0,1M) and [4M,5M) of an 8 MiB disk.
make_disk "$disk" $((8*1024*1024)) 0 $((1024*1024)) $((4*1024*1024)) $((1024*1024))
cat > $tmp/areas <<'AREAS'
# unsorted, overlapping, comments and blank lines

4194304 65536      # inside data
0x10000 0x10000    # [64K,128K) inside data
65536 131072       # overlaps the previous line: [64K,192K)
2097152 4096       # unallocated: hole+zero
4194304 100        # inside the first area
8388096 512        # the last sector (unallocated)
AREAS
nbdkit -U - $(plugin_args) file="$disk" changed-areas=$tmp/areas --run 'nbdinfo --map "$uri"' > $tmp/map
cat $tmp/map
cat > $tmp/expected <<'MAP'
         0       65536    1  hole
     65536      131072    0  data
    196608     1900544    1  hole
   2097152        4096    3  hole,zero
   2101248     2093056    1  hole
   4194304       65536    0  data
   4259840     4128256    1  hole
   8388096         512    3  hole,zero
MAP
diff -u $tmp/expected $tmp/map

# The export still reads as the whole disk.
nbdkit -U - $(plugin_args) file="$disk" changed-areas=$tmp/areas --run "nbdcopy \"\$uri\" $tmp/out.raw"
cmp "$disk" $tmp/out.raw

# An area past the end of the disk fails the open, naming it.
echo "8388608 512" > $tmp/past
if nbdkit -U - $(plugin_args) file="$disk" changed-areas=$tmp/past --run 'nbdinfo "$uri"' 2>$tmp/err; then
    fail "an area past the end was accepted"
fi
grep 'extends past the end' $tmp/err
