#!/usr/bin/env bash
# sendense copy failures are clear errors with the documented exit status:
# sizes that differ, a read-only destination, a URI that does not parse, a
# server that refuses, a destination that fails mid-copy (nbdkit error
# filter) and a failing final flush.
source "$(dirname "$0")/functions.sh"
set -e -x
requires nbdkit --version
requires nbdkit --filter=error null --version
requires nbdcopy --version

# expect STATUS PATTERN ARGS...: sendense ARGS fails with STATUS and an
# error message matching PATTERN on stderr.
expect () {
    local status=$1 pattern=$2 rc=0
    shift 2
    $sendense "$@" > $tmp/out 2> $tmp/err || rc=$?
    cat $tmp/out $tmp/err
    test $rc -eq $status || fail "sendense $*: exit status $rc, want $status"
    grep -E -- "$pattern" $tmp/err || fail "sendense $*: no '$pattern' in the error"
}

size=$((32*1024*1024))
serve src -r sparse-random size=$size seed=5 percent=60
serve small memory size=$((size - 512))
serve large memory size=$((size + 1024*1024))
serve ro -r memory size=$size

# Sizes must match; --allow-larger-destination accepts a larger one.
expect 1 'destination \(33553920 bytes\) is smaller than the source \(33554432 bytes\)' copy "$(uri src)" "$(uri small)"
expect 1 'larger than the source.*--allow-larger-destination' copy "$(uri src)" "$(uri large)"
$sendense copy --allow-larger-destination "$(uri src)" "$(uri large)"

# A read-only destination.
expect 1 'destination is read-only' copy "$(uri src)" "$(uri ro)"

# URIs that do not parse, servers that refuse.
expect 2 'is not an NBD URI' copy "$(uri src)" "http://example.com/disk"
expect 2 'is not a valid NBD URI' copy "nbd://[::1" "$(uri ro)"
expect 2 'names no socket' copy "nbd+unix:///" "$(uri ro)"
expect 1 "source nbd\+unix:///\?socket=$tmp/missing.sock: nbd_connect_uri: .*No such file" copy "$(uri missing)" "$(uri ro)"
expect 1 'source nbd://127.0.0.1:1: nbd_connect_uri: .*Connection refused' copy nbd://127.0.0.1:1 "$(uri ro)"
serve deny --filter=ip memory size=$size deny=all
# (libnbd words a server closing at once "disconnected", or, when the
# close races its connect, "external event 0 is invalid in state ...".)
expect 1 "destination nbd\+unix:///\?socket=$tmp/deny.sock: nbd_connect_uri: .*(disconnected|invalid in state)" copy "$(uri src)" "$(uri deny)"

# Bad flags.
expect 2 '--request-size must be a power of two' copy --request-size 300K "$(uri src)" "$(uri ro)"
expect 2 'invalid size' copy --rate 12Q "$(uri src)" "$(uri ro)"
expect 2 'cannot be used with --incremental' copy --incremental --destination-is-zero "$(uri src)" "$(uri ro)"
expect 2 'accepts 2 arg' copy "$(uri src)"

# The destination starts failing writes mid-copy (when the trigger file
# appears); --rate makes the copy last long enough.
serve bad --filter=error memory size=$size error=EIO error-pwrite-rate=1 error-file=$tmp/trigger
( sleep 0.7; touch $tmp/trigger ) &
expect 1 'write to the destination at offset [0-9]+: .*Input/output error' copy --rate 8M "$(uri src)" "$(uri bad)"
wait
# ... and it did write something first.
rm $tmp/trigger
nbdcopy "$(uri bad)" - | cmp -s - /dev/zero && fail "nothing was written before the failure" || true
test "$(nbdcopy "$(uri bad)" - | tr -d '\0' | wc -c)" -gt 0

# A final flush that fails fails the copy.
serve noflush eval get_size="echo $size" can_write='exit 0' can_flush='exit 0' \
    pread='dd if=/dev/zero count=$3 iflag=count_bytes status=none' \
    pwrite='cat >/dev/null' flush='echo "EIO flush refused" >&2; exit 1'
expect 1 'flush the destination: .*(flush refused|Input/output error)' copy "$(uri src)" "$(uri noflush)"
