#!/usr/bin/env bash
# The systemd unit of the agent is valid, hardened, and with the
# credentials drop-in loads the vCenter password and the repository
# passphrase as encrypted credentials (systemd-analyze verify).
source "$(dirname "$0")/functions.sh"
requires systemd-analyze --version

unit="$top_srcdir/contrib/systemd/sendense.service"
dropin="$top_srcdir/contrib/systemd/sendense-credentials.conf"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for key in NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes StateDirectory=sendense UMask=0077; do
    grep -qx "$key" "$unit" || fail "$unit lacks $key"
done
grep -q '^LoadCredentialEncrypted=vcenter:' "$dropin" || fail "no vcenter credential in $dropin"
grep -q '^LoadCredentialEncrypted=repository:' "$dropin" || fail "no repository credential in $dropin"

# The unit with the drop-in's lines, ExecStart pointing at the built
# sendense (verify checks that it exists).
grep '^LoadCredentialEncrypted=' "$dropin" >"$tmp/creds"
sed "s|/usr/bin/sendense|$builddir/sendense|" "$unit" |
    awk -v creds="$tmp/creds" '/^\[Install\]/ { while ((getline l < creds) > 0) print l; print "" } { print }' >"$tmp/sendense.service"
systemd-analyze verify --man=no "$tmp/sendense.service" 2>"$tmp/verify" || { cat "$tmp/verify"; fail "systemd-analyze verify"; }
! grep -v 'sysinit.target\|Failed to .*sendense.service/start' "$tmp/verify" | grep -q . || { cat "$tmp/verify"; fail "systemd-analyze verify"; }
