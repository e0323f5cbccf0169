#!/usr/bin/env bash
# Captive mode (--run): a 4 GiB sparse disk with data at both ends and a
# size that is not a multiple of the 64 KiB chunk, read by nbdinfo, nbdcopy
# and qemu-img through our plugin and the fake VDDK.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires nbdcopy --version
requires qemu-img --version

disk=$tmp/disk.img
size=$(( 4*1024*1024*1024 - 3*512 ))
# The tail data starts on a 64 KiB boundary and runs to the odd end.
tail_start=$(( (size - 200*1024) / 65536 * 65536 ))
make_disk "$disk" $size 0 $((1024*1024)) $((2*1024*1024*1024)) 65536 $tail_start $((size - tail_start))

# The map equals the file's allocation as nbdkit's own file plugin sees it.
nbdkit -U - file "$disk" --run 'nbdinfo --map "$uri"' > $tmp/map.file
nbdkit -U - $(plugin_args) file="$disk" --run 'nbdinfo --map "$uri"' > $tmp/map.ours
cat $tmp/map.ours
diff -u $tmp/map.file $tmp/map.ours

# Size, read-only (-r), multi-conn and the description; without -r the
# export is writable (as with nbdkit-vddk-plugin), still multi-conn (its
# connections share one VDDK handle).
nbdkit -U - -r $(plugin_args) file="$disk" --run 'nbdinfo --json "$uri"' > $tmp/info.json
nbdkit -U - $(plugin_args) file="$disk" --run 'nbdinfo --json "$uri"' > $tmp/info-rw.json
python3 - "$tmp/info.json" "$tmp/info-rw.json" $size <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
assert e["export-size"] == int(sys.argv[3]), e["export-size"]
assert e["is_read_only"] is True, e
assert e["can_multi_conn"] is True, e
assert e["block_size_minimum"] == 512, e
assert e.get("description", "").endswith(", full"), e
w = json.load(open(sys.argv[2]))["exports"][0]
assert w["is_read_only"] is False and w["can_multi_conn"] is True, w
assert w["can_flush"] and w["can_fua"] and w["can_zero"] and not w["can_trim"], w
assert w.get("description", "").endswith(", full, writable"), w
PY

# Bytes: nbdcopy and qemu-img against the flat file.
nbdkit -U - $(plugin_args) file="$disk" --run "nbdcopy \"\$uri\" $tmp/out.raw"
cmp "$disk" $tmp/out.raw
nbdkit -U - $(plugin_args) file="$disk" --run "qemu-img compare -f raw -F raw \"\$uri\" \"$disk\""
nbdkit -U - $(plugin_args) file="$disk" --run "qemu-img convert -p -O qcow2 \"\$uri\" $tmp/out.qcow2" </dev/null
qemu-img compare -f raw -F qcow2 "$disk" $tmp/out.qcow2
