#!/usr/bin/env bash
# sendense lab: starts the vCenter simulator, writes the env file, serves the
# control socket (write, snapshot, fault, disks), and cleans up on SIGTERM.
source "$(dirname "$0")/functions.sh"
set -e -x

env=$tmp/lab.env
labdir=$tmp/lab
"$sendense" lab --env "$env" --dir "$labdir" >"$tmp/lab.out" 2>"$tmp/lab.err" &
labpid=$!
cleanup_fn kill "$labpid"
wait_for test -s "$env"

grep -q 'SIMULATOR' "$tmp/lab.out"
# shellcheck disable=SC1090
. "$env"
for v in SENDENSE_VCENTER_URL SENDENSE_VCENTER_USER SENDENSE_VCENTER_PASSWORD_FILE \
         SENDENSE_VCENTER_THUMBPRINT SENDENSE_VDDK_LIBDIR FAKEVDDK_ROOT SENDENSE_LAB_SOCKET; do
    [ -n "${!v}" ] || fail "$v is not set by $env"
done
case $SENDENSE_VCENTER_URL in https://127.0.0.1:*/sdk) ;; *) fail "URL $SENDENSE_VCENTER_URL" ;; esac
want_libdir=$(dirname "$(readlink -f "$sendense")")/fakevddk
[ "$SENDENSE_VDDK_LIBDIR" = "$want_libdir" ] || fail "libdir $SENDENSE_VDDK_LIBDIR, want $want_libdir"
[ "$(stat -c %a "$SENDENSE_VCENTER_PASSWORD_FILE")" = 600 ] || fail "password file is not 0600"
grep -q "$SENDENSE_VCENTER_THUMBPRINT" "$tmp/lab.out"

# Disks: key, capacity, flat file under FAKEVDDK_ROOT.
sendense lab disks lab-multi >"$tmp/disks"
[ "$(wc -l <"$tmp/disks")" -eq 3 ]
flat=$(sendense lab disks lab-small | cut -f3)
[ "$flat" = "$FAKEVDDK_ROOT/LocalDS_0/lab-small/disk1-flat.vmdk" ]
[ "$(stat -c %s "$flat")" -eq $((64 * 1024 * 1024)) ]

# CBT on, snapshot, write, snapshot: the frozen file keeps the old content.
sendense lab cbt lab-small on
sendense lab snapshot lab-small s1 >"$tmp/s1"
snap1=$(head -n1 "$tmp/s1")
frozen1=$(awk -F'\t' '$1 == 2000 { print $3 }' "$tmp/s1")
[ "$frozen1" = "$FAKEVDDK_ROOT/LocalDS_0/lab-small/disk1-$snap1-flat.vmdk" ]
awk -F'\t' '$1 == 2000 { print $2 }' "$tmp/s1" | grep -Eq '^52 [0-9a-f ]+-[0-9a-f ]+/1$'
cmp "$flat" "$frozen1"
sendense lab write lab-small 2000 1M 64K --seed 7
! cmp -s "$flat" "$frozen1" || fail "the write changed the frozen snapshot"
cmp -n 1048576 "$flat" "$frozen1"

# Bad requests fail with a message.
! sendense lab write lab-small 2000 64M 1 2>"$tmp/err"
grep -q 'beyond the end' "$tmp/err"
! sendense lab write no-such-vm 2000 0 1 2>"$tmp/err"
grep -q 'no VM' "$tmp/err"

# Injected fault: the next snapshot fails, the one after works.
sendense lab fault CreateSnapshot lab-small --count 1
! sendense lab snapshot lab-small 2>"$tmp/err"
grep -q 'injected' "$tmp/err"
sendense lab snapshot lab-small s2 >/dev/null
sendense lab remove-snapshot "$snap1"
[ ! -e "$frozen1" ] || fail "frozen file of a removed snapshot left"

# SIGTERM: the lab stops with status 0 and removes its files.
kill -TERM "$labpid"
wait "$labpid"
[ ! -e "$env" ] || fail "env file left"
[ ! -e "$SENDENSE_LAB_SOCKET" ] || fail "control socket left"
[ ! -e "$FAKEVDDK_ROOT" ] || fail "datastores left"
! sendense lab vms 2>"$tmp/err"
grep -q 'is `sendense lab` running' "$tmp/err"
