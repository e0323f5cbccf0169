#!/usr/bin/env bash
# make deb: the Debian package installs into a fresh root with dpkg, its
# sendense runs (version), nbdkit loads its plugin pair (--dump-plugin),
# its man pages render, its unit file is there, and dpkg removes it all.
source "$(dirname "$0")/functions.sh"
set -e -x

requires dpkg-deb --version
requires dpkg --version
requires nbdkit --version

make -s -C "$top_srcdir" deb
version=$(cat "$top_srcdir/VERSION")
deb=$(ls "$builddir"/sendense_"$version"_*.deb)
dpkg-deb --info "$deb" | grep -q 'Depends: .*nbdkit'

# A fresh root with an empty dpkg database; no maintainer scripts run.
root=$tmp/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
# Its dependencies (nbdkit, qemu-utils, libnbd0) are this machine's.
dpkg --root="$root" --force-depends --force-script-chrootless -i "$deb"
dpkg --root="$root" -s sendense | grep -q "^Version: $version"

"$root/usr/bin/sendense" version >"$tmp/version"
cat "$tmp/version"
grep -q "^sendense  *$version\$" "$tmp/version"
grep -q '^nbdkit  *nbdkit ' "$tmp/version"
"$root/usr/bin/sendense" --version | grep -q "^sendense $version\$"

plugindir=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')
nbdkit "$root$plugindir/nbdkit-sendense-plugin.so" --dump-plugin >"$tmp/dump"
grep -q '^name=sendense$' "$tmp/dump"
grep -q "^version=$version" "$tmp/dump" || grep -q "sendense_version=$version" "$tmp/dump"

# Man pages (generated from the commands) and completions.
for page in sendense sendense-backup sendense-prune sendense-serve; do
    zcat "$root/usr/share/man/man1/$page.1.gz" | groff -man -Tutf8 -ww -z
done
zcat "$root/usr/share/man/man1/sendense-prune.1.gz" | grep -q 'keep\\-daily'
grep -q 'sendense' "$root/usr/share/bash-completion/completions/sendense"
test -s "$root/usr/share/zsh/vendor-completions/_sendense"
grep -q '^ExecStart=/usr/bin/sendense serve' "$root/lib/systemd/system/sendense.service"
# The unit file is valid (checked against this machine's systemd, with
# ExecStart pointing at the binary in the fresh root).
if command -v systemd-analyze >/dev/null; then
    sed "s|/usr/bin/sendense|$root/usr/bin/sendense|" "$root/lib/systemd/system/sendense.service" >"$tmp/sendense.service"
    systemd-analyze verify --man=no "$tmp/sendense.service" 2>"$tmp/verify" || { cat "$tmp/verify"; fail "systemd-analyze verify"; }
    ! grep -v 'sysinit.target\|Failed to .*sendense.service/start' "$tmp/verify" | grep -q . || { cat "$tmp/verify"; fail "systemd-analyze verify"; }
fi

dpkg --root="$root" --force-script-chrootless -r sendense
[ ! -e "$root/usr/bin/sendense" ] || fail "sendense left after dpkg -r"
[ ! -e "$root$plugindir/nbdkit-sendense-plugin.so" ] || fail "plugin left after dpkg -r"
[ ! -e "$root/lib/systemd/system/sendense.service" ] || fail "unit left after dpkg -r"
