#!/usr/bin/env bash
# Offsite upload: one restore point of a 4 GiB disk with 2 GiB of data (a
# full backup made in the lab) copied to a real S3 server with Object Lock
# (SeaweedFS, build/weed, on loopback) by 'sendense offsite sync' (parts in
# parallel, SHA-256 and MD5 of every byte, locks), against minio-go's own
# uploader sending the same files one stream at a time, as `aws s3 cp` of
# each file would (and, for information, with its default 4 threads). Runs
# alternate, each against a fresh server. Goal: throughput ratio >= 1.0
# (last line: single-stream time / ours).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
[ -x "$builddir/weed" ] || { echo "$builddir/weed is missing: run make weed" >&2; exit 1; }
start_lab --vm bench:4G+2G
export SENDENSE_REPOSITORY=$benchdir/repo
"$sendense" backup --quiet bench
ob=$benchdir/offsitebench
(cd "$top_srcdir" && go build -o "$ob" ./bench/offsitebench)
"$ob" -weed "$builddir/weed" -sendense "$sendense" -repo "$SENDENSE_REPOSITORY" -runs "$runs" ${RESTORE:+-restore} ${PART_SIZE:+-part-size $PART_SIZE}
