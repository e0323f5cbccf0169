#!/usr/bin/env bash
# Build SeaweedFS's weed (the S3 server the offsite tests and
# bench/offsite.sh run) from the module the Go proxy serves, once per
# machine: the binary is cached in $SENDENSE_CACHE (default
# ~/.cache/sendense) and copied to OUT.
#
#   tests/build-weed.sh VERSION OUT
#
# A plain 'go install' of weed is refused (its go.mod has replace
# directives), so the module is downloaded, copied to a writable
# directory and built there: only the weed command, without debug
# information, niced (it takes minutes).
set -euo pipefail
version=$1 out=$2
cache=${SENDENSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sendense}
bin=$cache/weed-$version
if [ ! -x "$bin" ]; then
    mkdir -p "$cache"
    work=$(mktemp -d)
    trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
    start=$SECONDS
    dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "github.com/seaweedfs/seaweedfs@$version" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$dir" ] || { echo "build-weed: go mod download of seaweedfs@$version failed" >&2; exit 1; }
    cp -r "$dir/." "$work/src"
    chmod -R u+w "$work/src"
    echo "building SeaweedFS weed $version (once per machine, a few minutes)..."
    (cd "$work/src" && nice go build -p 2 -trimpath -ldflags=-s -o "$bin.tmp" ./weed)
    mv "$bin.tmp" "$bin"
    echo "built $bin in $((SECONDS - start)) s"
fi
mkdir -p "$(dirname "$out")"
cp "$bin" "$out.tmp" && mv "$out.tmp" "$out"
