#!/usr/bin/env bash
# Every password form of nbdkit-vddk-plugin logs in: password=PW, +FILE,
# -FD and - (asked on the terminal, answered by expect), and the empty
# password in each form (password=, +EMPTYFILE, -FD of an empty pipe). Each
# with and without the re-execution of nbdkit (which must not read the
# password twice). The password never reaches the fake's call log or an
# error message; a wrong one fails with VDDK's login error.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdinfo --version
requires expect -v

mkdir -p $tmp/root/ds1/vm1
make_disk $tmp/root/ds1/vm1/disk-flat.vmdk $((1024*1024)) 0 4096
export FAKEVDDK_ROOT=$tmp/root FAKEVDDK_LOG=$tmp/vddk.log
remote=(server=vc.example.com user=backup vm=moref=vm-42 thumbprint=ab "file=[ds1] vm1/disk.vmdk")
vddk_path=$LD_LIBRARY_PATH
n=0

# login PASSWORD-ARG [REDIRECTIONS-SETUP]: nbdkit logs in with the
# argument, with (LD_LIBRARY_PATH unset) and without re-execution; the
# fd 3 forms read the file $tmp/pwsrc.
login () {
    local ld
    for ld in "" "$vddk_path"; do
        n=$((n+1))
        LD_LIBRARY_PATH=$ld timeout 60 nbdkit -U $tmp/s$n.sock $plugin libdir=$fakevddk "${remote[@]}" "$1" \
            --run 'nbdinfo --size "$uri"' 3<$tmp/pwsrc > $tmp/out 2>$tmp/err || { cat $tmp/err; fail "login with $1 (LD_LIBRARY_PATH=$ld)"; }
        test "$(cat $tmp/out)" -eq $((1024*1024))
    done
}

export FAKEVDDK_PASSWORD='s3cr3t pa$$word'
printf '%s' "$FAKEVDDK_PASSWORD" > $tmp/pw
printf '%s\n' "$FAKEVDDK_PASSWORD" > $tmp/pwsrc
login "password=$FAKEVDDK_PASSWORD"
login "password=+$tmp/pw"
login "password=-3"

# Asked on the terminal.
for ld in "" "$vddk_path"; do
    n=$((n+1))
    LD_LIBRARY_PATH=$ld args="$plugin libdir=$fakevddk ${remote[*]::4}" sock=$tmp/s$n.sock out=$tmp/out expect -f - <<'EOF'
set timeout 60
spawn sh -c "nbdkit -U $env(sock) $env(args) 'file=\[ds1\] vm1/disk.vmdk' password=- --run 'nbdinfo --size \"\$uri\" > $env(out)'"
expect "password: "
send "$env(FAKEVDDK_PASSWORD)\r"
expect eof
catch wait result
exit [lindex $result 3]
EOF
    test "$(cat $tmp/out)" -eq $((1024*1024))
done

# The empty password.
export FAKEVDDK_PASSWORD=
: > $tmp/pw
: > $tmp/pwsrc
login "password="
login "password=+$tmp/pw"
login "password=-3"

# A wrong password: VDDK's error, never the password.
export FAKEVDDK_PASSWORD=right
rc=0
timeout 60 nbdkit -U $tmp/bad.sock $plugin libdir=$fakevddk "${remote[@]}" password=wrong-pw \
    --run 'nbdinfo --size "$uri"' 2>$tmp/err || rc=$?
cat $tmp/err
[ $rc -ne 0 ] && [ $rc -ne 124 ]
grep 'VixDiskLib_ConnectEx: Insufficient permissions in the host operating system.*(VixError 3014)' $tmp/err
if grep -e 'wrong-pw' -e 's3cr3t' $tmp/err $tmp/vddk.log; then fail "a password leaked"; fi
grep -c 'credType=1 user=backup password=<hidden>' $tmp/vddk.log
