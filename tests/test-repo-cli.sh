#!/usr/bin/env bash
# A repository written by hand, with qemu-img and qemu-io, exactly as
# docs/repository.md describes the format, is listed, verified, restored
# and pruned by the CLI; damage makes verify exit 3, bad input exits 1 or 2.
source "$(dirname "$0")/functions.sh"
set -e -x

requires qemu-img --version
requires qemu-io --version
requires "$sendense" verify --help

repo=$tmp/repo
vm=$repo/web
id1=20240501T120000Z
id2=20240502T120000Z
mkdir -p "$vm"
echo '{"format":"sendense-repository","version":1,"created":"2024-05-01T12:00:00Z"}' > "$repo/sendense-repository.json"

sha () { dd if="$1" bs=512 skip=$(($2 / 512)) count=$(($3 / 512)) status=none | sha256sum | cut -d' ' -f1; }

# Backup 1, a full: 1 MiB, data at 0 and 512K.
make_disk "$tmp/v1.raw" 1M 0 65536 524288 65536
qemu-img convert -f raw -O qcow2 "$tmp/v1.raw" "$vm/$id1-disk2000.qcow2"
cat > "$vm/$id1.json" <<EOF
{"format": "sendense-manifest", "version": 1, "id": "$id1",
 "vm": {"moref": "vm-1", "name": "web"}, "parent": "",
 "snapshot": {"moref": "snapshot-1", "name": "sendense-$id1", "quiesced": false},
 "started": "2024-05-01T12:00:00Z", "finished": "2024-05-01T12:00:01Z", "status": "complete",
 "disks": [{"key": 2000, "uuid": "u1", "file": "[ds] web/web.vmdk", "capacity": 1048576,
   "change_id": "52 aa/1", "level": "full", "reason": "first backup",
   "image": "$id1-disk2000.qcow2", "backing": "", "bytes_copied": 131072, "bytes_zeroed": 0, "seconds": 1,
   "sha256": "$(sha256sum < "$tmp/v1.raw" | cut -d' ' -f1)",
   "chunks": [{"offset": 0, "length": 65536, "kind": "data", "sha256": "$(sha "$tmp/v1.raw" 0 65536)"},
              {"offset": 524288, "length": 65536, "kind": "data", "sha256": "$(sha "$tmp/v1.raw" 524288 65536)"}]}]}
EOF

# Backup 2, an incremental: new data at 64K, zeroes over the data at 0.
qemu-img create -q -f qcow2 -b "$id1-disk2000.qcow2" -F qcow2 "$vm/$id2-disk2000.qcow2"
qemu-io -f qcow2 -c 'write -P 0x55 65536 65536' -c 'write -z 0 65536' "$vm/$id2-disk2000.qcow2" >/dev/null
cp "$tmp/v1.raw" "$tmp/v2.raw"
head -c 65536 /dev/zero | tr '\0' '\125' | dd of="$tmp/v2.raw" bs=64K seek=1 conv=notrunc status=none
dd if=/dev/zero of="$tmp/v2.raw" bs=64K count=1 conv=notrunc status=none
cat > "$vm/$id2.json" <<EOF
{"format": "sendense-manifest", "version": 1, "id": "$id2",
 "vm": {"moref": "vm-1", "name": "web"}, "parent": "$id1",
 "snapshot": {"moref": "snapshot-2", "name": "sendense-$id2", "quiesced": false},
 "started": "2024-05-02T12:00:00Z", "finished": "2024-05-02T12:00:01Z", "status": "complete",
 "disks": [{"key": 2000, "uuid": "u1", "file": "[ds] web/web.vmdk", "capacity": 1048576,
   "change_id": "52 aa/2", "level": "incremental", "base_change_id": "52 aa/1",
   "image": "$id2-disk2000.qcow2", "backing": "$id1-disk2000.qcow2", "bytes_copied": 65536, "bytes_zeroed": 65536, "seconds": 1,
   "chunks": [{"offset": 0, "length": 65536, "kind": "zero"},
              {"offset": 65536, "length": 65536, "kind": "data", "sha256": "$(sha "$tmp/v2.raw" 65536 65536)"}]}]}
EOF

export SENDENSE_REPOSITORY=$repo
"$sendense" list > "$tmp/list"
grep "$id1 *full" "$tmp/list"
grep "$id2 *incremental" "$tmp/list"
"$sendense" verify

"$sendense" restore web --backup "$id1" --to "$tmp/r1"
cmp "$tmp/r1/web-disk2000.raw" "$tmp/v1.raw"
"$sendense" restore vm-1 --to "$tmp/r2" --format qcow2
qemu-img convert -O raw "$tmp/r2/web-disk2000.qcow2" "$tmp/r2.raw"
cmp "$tmp/r2.raw" "$tmp/v2.raw"
rc=0; "$sendense" restore web --to "$tmp/r1" || rc=$?
[ $rc -eq 1 ] || fail "restore over existing files exited $rc, want 1"

# A copy of the repository for the damage tests below.
cp -a "$repo" "$tmp/repo2"

# Prune to one backup: the incremental becomes a full, still exact.
"$sendense" prune --keep 1 --json > "$tmp/prune"
grep '"message_type":"prune"' "$tmp/prune"
[ ! -e "$vm/$id1.json" ] && [ ! -e "$vm/$id1-disk2000.qcow2" ] || fail "prune left backup 1"
"$sendense" verify
"$sendense" restore web --to "$tmp/r3"
cmp "$tmp/r3/web-disk2000.raw" "$tmp/v2.raw"

# Damage: a changed byte in a data chunk → exit 3, naming the file and offset.
export SENDENSE_REPOSITORY=$tmp/repo2
qemu-io -f qcow2 -c 'write -P 0x66 66048 512' "$tmp/repo2/web/$id2-disk2000.qcow2" >/dev/null
rc=0; "$sendense" verify --json > "$tmp/verify" || rc=$?
[ $rc -eq 3 ] || fail "verify of a damaged image exited $rc, want 3"
grep '"kind":"chunk-sha256"' "$tmp/verify" | grep '"offset":65536' | grep "$id2-disk2000.qcow2"
# Backup 1 is still fine and restorable.
"$sendense" verify web --backup "$id1"
# A missing backing file: verify 3, restore 1 naming it.
rm "$tmp/repo2/web/$id1-disk2000.qcow2"
rc=0; "$sendense" verify web --backup "$id2" || rc=$?
[ $rc -eq 3 ] || fail "verify with a missing backing file exited $rc, want 3"
rc=0; "$sendense" restore web --to "$tmp/r4" 2> "$tmp/err" || rc=$?
[ $rc -eq 1 ] && grep "$id1-disk2000.qcow2" "$tmp/err" || fail "restore with a missing backing file: exit $rc"
# A corrupt manifest: list exits 1 naming it.
echo '{' > "$tmp/repo2/web/$id2.json"
rc=0; "$sendense" list 2> "$tmp/err" || rc=$?
[ $rc -eq 1 ] && grep "$id2.json" "$tmp/err" || fail "list with a corrupt manifest: exit $rc"

# Bad input.
rc=0; "$sendense" list --repo "$tmp" || rc=$?
[ $rc -eq 1 ] || fail "list of a non-repository exited $rc, want 1"
rc=0; "$sendense" prune || rc=$?
[ $rc -eq 2 ] || fail "prune without --keep exited $rc, want 2"
