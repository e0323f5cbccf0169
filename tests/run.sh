#!/usr/bin/env bash
# Run the shell integration tests (tests/test-*.sh, or those named on the
# command line) and summarise. Exit status 77 from a test means skipped.
set -u
cd "$(dirname "$0")"
# Arguments are test names or glob patterns, relative to tests/.
tests=()
for a in "${@:-test-*.sh}"; do
    # shellcheck disable=SC2206 # intended glob expansion
    tests+=( ${a#tests/} )
done
pass=0 failed=() skipped=()
logdir=${TEST_LOGDIR:-../build/test-logs}
mkdir -p "$logdir"
for t in "${tests[@]}"; do
    log=$logdir/${t%.sh}.log
    start=$SECONDS
    timeout --foreground 600 bash "./$t" >"$log" 2>&1
    rc=$?
    case $rc in
        0) pass=$((pass+1)); printf 'PASS: %s (%ds)\n' "$t" $((SECONDS-start)) ;;
        77) skipped+=("$t"); printf 'SKIP: %s\n' "$t"; tail -n 1 "$log" ;;
        *) failed+=("$t"); printf 'FAIL: %s (exit %d, log %s)\n' "$t" "$rc" "$log"; tail -n 30 "$log" | sed 's/^/    /' ;;
    esac
done
echo "# PASS: $pass  SKIP: ${#skipped[@]}  FAIL: ${#failed[@]}"
[ ${#failed[@]} -eq 0 ]
