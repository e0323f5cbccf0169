#!/usr/bin/env bash
# The plugin with changeid= against the lab: the extents of an incremental
# are the lab's tracked writes (data, a zero rewrite, a trim), and the data
# is the snapshot's frozen content, not the disk's later state.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires nbdcopy --version

env=$tmp/lab.env
"$sendense" lab --env "$env" --dir "$tmp/lab" >"$tmp/lab.out" 2>&1 &
labpid=$!
cleanup_fn kill "$labpid"
wait_for test -s "$env"
# shellcheck disable=SC1090
. "$env"

hostport=${SENDENSE_VCENTER_URL#https://}
hostport=${hostport%/sdk}
vm=$(sendense lab vms | awk -F'\t' '$1 == "lab-small" { print $2 }')

sendense lab cbt lab-small on
sendense lab snapshot lab-small base >"$tmp/s1"
id1=$(awk -F'\t' '$1 == 2000 { print $2 }' "$tmp/s1")
sendense lab write lab-small 2000 1M 64K --seed 1
sendense lab write lab-small 2000 10M 100K --zero
sendense lab write lab-small 2000 20M 64K --trim
sendense lab snapshot lab-small incr >"$tmp/s2"
snap2=$(head -n1 "$tmp/s2")
frozen2=$(awk -F'\t' '$1 == 2000 { print $3 }' "$tmp/s2")
sendense lab write lab-small 2000 30M 64K --seed 2   # after the snapshot: not in it

args=("$plugin" "file=[LocalDS_0] lab-small/disk1.vmdk" "libdir=$SENDENSE_VDDK_LIBDIR"
      "server=${hostport%:*}" "port=${hostport##*:}" "user=$SENDENSE_VCENTER_USER"
      "password=+$SENDENSE_VCENTER_PASSWORD_FILE" "thumbprint=$SENDENSE_VCENTER_THUMBPRINT"
      "vm=moref=$vm" "snapshot=$snap2")
nbdkit -U - "${args[@]}" "changeid=$id1" \
    --run 'nbdinfo --map "$uri" && nbdcopy "$uri" '"$tmp/disk.img" >"$tmp/map"
cat "$tmp/map"
grep -Eq '^ +1048576 +65536 +0 +data$' "$tmp/map"
grep -Eq '^ +10485760 +131072 +0 +data$' "$tmp/map"
grep -Eq '^ +20971520 +65536 +3 +hole,zero$' "$tmp/map"
[ "$(grep -c data "$tmp/map")" -eq 2 ]
cmp "$tmp/disk.img" "$frozen2"

# A changeId from before a CBT reset is refused.
sendense lab cbt lab-small off
sendense lab cbt lab-small on
sendense lab snapshot lab-small after-reset >"$tmp/s3"
snap3=$(head -n1 "$tmp/s3")
args[${#args[@]}-1]="snapshot=$snap3"
! nbdkit -U - "${args[@]}" "changeid=$id1" --run 'nbdinfo --map "$uri"' 2>"$tmp/err"
cat "$tmp/err"
grep -q 'full backup is needed' "$tmp/err"
