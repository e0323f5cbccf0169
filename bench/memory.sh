#!/usr/bin/env bash
# Agent memory with 4 disks in flight: a lab VM with four 2 GiB disks of
# 1 GiB data each, full backup ([backup] max_concurrent_disks = 4, the
# default), side by side with the plain pipeline a script would run
# instead: four nbdcopy processes at once copying the same four flat files
# (served by nbdkit's file plugin) to four qemu-nbd qcow2 targets.
# Memory is sampled every 10 ms (VmRSS from /proc, each process of the
# tree); VmHWM gives the agent's own peak. Prints, for each run, the peak
# RSS of the sendense process (the agent: copy engine, vSphere session,
# supervision) and of its whole process tree (with nbdkit and qemu-nbd),
# and the peak summed RSS of the four nbdcopy processes. The last line is
# the ratio of the agent's peak to the four nbdcopy's (the design's goal is
# an absolute one: the agent <= 256 MiB with 4 disks in flight).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
for tool in qemu-nbd qemu-img nbdcopy python3; do
    command -v $tool >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
start_lab --snapshot-links --vm mem:2G+1G,2G+1G,2G+1G,2G+1G

# sample NAME CMD...: run CMD, sampling the memory of its process tree;
# prints "seconds agent_peak_kib tree_peak_kib NAME_peak_kib" where
# agent_peak is CMD's own VmHWM and NAME_peak the largest sum of the RSS of
# the processes called NAME seen at once.
cat > $benchdir/sample.py <<'PY'
import os, subprocess, sys, time

def status(pid):
    d = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                d[k] = v.split()[0] if v.split() else ""
    except OSError:
        pass
    return d

def children():
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            s = status(p)
            if "PPid" in s:
                kids.setdefault(int(s["PPid"]), []).append(int(p))
    return kids

name = sys.argv[1]
t0 = time.monotonic()
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
hwm = tree = named = 0
while proc.poll() is None:
    kids, todo, total, nsum = children(), [proc.pid], 0, 0
    while todo:
        pid = todo.pop()
        s = status(pid)
        rss = int(s.get("VmRSS", 0) or 0)
        total += rss
        if s.get("Name") == name:
            nsum += rss
        if pid == proc.pid:
            hwm = max(hwm, int(s.get("VmHWM", 0) or 0))
        todo += kids.get(pid, [])
    tree, named = max(tree, total), max(named, nsum)
    time.sleep(0.01)
if proc.returncode != 0:
    sys.exit(f"{sys.argv[2:]} failed with status {proc.returncode}")
print(f"{time.monotonic() - t0:.3f} {hwm} {tree} {named}")
PY
sample () { python3 $benchdir/sample.py "$@"; }

# The peer: nbdkit file servers on the four flat files (the fake VDDK's
# own files: same bytes), qemu-nbd on four fresh qcow2 images, and a shell
# that runs the four nbdcopy at once.
disks=($("$sendense" lab disks mem | cut -f3))
[ ${#disks[@]} = 4 ] || { echo "expected 4 lab disks, got ${#disks[@]}" >&2; exit 1; }
peer () {
    local i pids=()
    for i in 0 1 2 3; do
        rm -f $benchdir/src$i.sock $benchdir/dst$i.sock $benchdir/dst$i.qcow2
        nbdkit -r -U $benchdir/src$i.sock -P $benchdir/src$i.pid file ${disks[$i]}
        qemu-img create -q -f qcow2 $benchdir/dst$i.qcow2 2G
        # qemu-nbd serves one client and exits when it disconnects.
        qemu-nbd -f qcow2 --cache=none -k $benchdir/dst$i.sock $benchdir/dst$i.qcow2 &
        pids+=($!)
    done
    for i in 0 1 2 3; do
        while [ ! -S $benchdir/src$i.sock ] || [ ! -S $benchdir/dst$i.sock ]; do sleep 0.02; done
    done
    for i in 0 1 2 3; do pids+=($(cat $benchdir/src$i.pid)); done
    sample nbdcopy bash -c 'for i in 0 1 2 3; do nbdcopy "nbd+unix:///?socket='$benchdir'/src$i.sock" "nbd+unix:///?socket='$benchdir'/dst$i.sock" & done; wait'
    wait "${pids[@]:0:4}"
    kill "${pids[@]:4}"
    for pid in "${pids[@]:4}"; do
        while kill -0 $pid 2>/dev/null; do sleep 0.02; done
    done
}

echo "lab VM mem: 4 disks of 2 GiB, 1 GiB data each; $runs runs"
agent=() tree=() nbdcopy=()
for r in $(seq $runs); do
    rm -rf $benchdir/repo
    read -r t a tr _ < <(sample sendense "$sendense" backup -q --repo $benchdir/repo --full mem)
    peer > $benchdir/peer.out
    read -r tp _ _ n < $benchdir/peer.out
    agent+=($a) tree+=($tr) nbdcopy+=($n)
    printf 'run %d: sendense backup %.2f s, agent peak %d MiB, with nbdkit and qemu-nbd %d MiB | 4 x nbdcopy %.2f s, peak %d MiB\n' \
        $r $t $((a >> 10)) $((tr >> 10)) $tp $((n >> 10))
done
ma=$(median "${agent[@]}") mt=$(median "${tree[@]}") mn=$(median "${nbdcopy[@]}")
printf 'median peak RSS: agent %d MiB (goal <= 256 MiB), agent tree %d MiB, 4 x nbdcopy %d MiB\n' \
    $((${ma%.*} >> 10)) $((${mt%.*} >> 10)) $((${mn%.*} >> 10))
printf 'ratio %.2f\n' $(echo "$ma / $mn" | bc -l)
