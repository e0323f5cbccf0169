# Common shell functions for tests/test-*.sh, in the spirit of nbdkit's
# tests/functions.sh. Source it, then use `set -e -x`.
#
#   requires CMD ARGS...   skip the test (exit 77) unless CMD ARGS... succeeds
#   cleanup_fn CMD ARGS... run CMD ARGS... when the test exits, in reverse order
#   fail MESSAGE           print MESSAGE and fail the test
#   tmpdir                 a fresh private directory removed at exit ($tmp)

top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
builddir=$top_srcdir/build
plugin=$builddir/nbdkit-sendense-plugin.so
sendense=$builddir/sendense
fakevddk=$builddir/fakevddk
# Debian's python3 first: nbdsh runs "python3 -m nbd" and python3-libnbd is
# installed for the system interpreter, not for any pyenv one.
export PATH="$builddir:/usr/bin:$PATH"
export LC_ALL=C
# VDDK's directory in LD_LIBRARY_PATH, as sendense sets it: the plugin does
# not re-execute nbdkit (tests/test-plugin-reexec.sh covers that, which
# unsets it).
export LD_LIBRARY_PATH="$fakevddk/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

_cleanup_fns=()
cleanup_fn () { _cleanup_fns+=("$(printf '%q ' "$@")"); }
_run_cleanup () {
    local status=$? i
    set +e
    for (( i=${#_cleanup_fns[@]}-1; i>=0; i-- )); do eval "${_cleanup_fns[i]}"; done
    exit $status
}
trap _run_cleanup EXIT
trap 'exit 130' INT TERM

requires () {
    "$@" >/dev/null 2>&1 || { echo "$0: test prerequisite is missing or not working: $*"; exit 77; }
}

fail () { echo "FAIL: $*" >&2; exit 1; }

for f in "$plugin" "$builddir/sendense-plugin-go.so" "$fakevddk/lib64/libvixDiskLib.so.8"; do
    [ -e "$f" ] || fail "$f is missing: run make first"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sendense-test.XXXXXX")
cleanup_fn rm -rf "$tmp"

# wait_for COMMAND...: retry COMMAND for up to 10 s.
wait_for () {
    local i
    for i in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    fail "timed out waiting for: $*"
}

# make_disk FILE SIZE [OFFSET LENGTH]...: a sparse file of SIZE bytes with
# random data written at each OFFSET for LENGTH bytes (byte counts).
make_disk () {
    local file=$1 size=$2
    shift 2
    rm -f "$file"
    truncate -s "$size" "$file"
    while [ $# -ge 2 ]; do
        head -c "$2" /dev/urandom | dd of="$file" bs=64K seek="$1" oflag=seek_bytes conv=notrunc status=none
        shift 2
    done
}

# Common plugin arguments for a local disk read through the fake VDDK.
plugin_args () { echo "$plugin libdir=$fakevddk"; }

# wait_for_socket PATH: wait until the unix socket PATH accepts connections
# (its file appears at bind(), before listen()).
wait_for_socket () {
    wait_for python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$1"
}

# serve NAME ARGS...: nbdkit ARGS in the background on $tmp/NAME.sock,
# killed at exit.
serve () {
    local name=$1; shift
    nbdkit -U $tmp/$name.sock -P $tmp/$name.pid "$@"
    wait_for test -s $tmp/$name.pid
    cleanup_fn kill "$(cat $tmp/$name.pid)"
}

# uri NAME: the NBD URI of $tmp/NAME.sock.
uri () { echo "nbd+unix:///?socket=$tmp/$1.sock"; }

# qserve NAME IMAGE: qemu-nbd (writable, one client) serving the qcow2
# IMAGE on $tmp/NAME.sock, killed at exit.
qserve () {
    qemu-nbd --fork --persistent --pid-file=$tmp/$1.pid -k $tmp/$1.sock -f qcow2 "$2"
    cleanup_fn kill "$(cat $tmp/$1.pid)"
}

# qstop NAME: stop the qemu-nbd of qserve NAME, so that its image can be
# opened.
qstop () {
    local pid; pid=$(cat $tmp/$1.pid)
    kill $pid
    while kill -0 $pid 2>/dev/null; do sleep 0.05; done
}

# build_fake DIR [GCC-ARGS...]: compile the fake VDDK into
# DIR/lib64/libvixDiskLib.so.8 with extra gcc arguments (a version script
# hiding functions, a dependency to link against...).
build_fake () {
    local dir=$1
    shift
    mkdir -p "$dir/lib64"
    gcc -O1 -fPIC -shared -Wl,-soname,libvixDiskLib.so.8 -o "$dir/lib64/libvixDiskLib.so.8" \
        "$top_srcdir"/tests/fakevddk/*.c -lpthread "$@"
}

