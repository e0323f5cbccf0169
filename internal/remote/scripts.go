package remote

// The POSIX sh scripts run on the remote machine (dash-compatible; they
// use sh, setsid, flock, mktemp, sleep, mv, rm and stat). Each is passed
// as the argument of "sh -c", quoted with tunnel.ShellQuote, followed by
// its own name ($0) and its arguments.

// heartbeatScript keeps the leases of one Host alive: for every line the
// agent sends (an empty one per Options.Tick) it writes a new value into
// LEASEDIR/lease, and it reports the objects whose program exited
// ("exit DIR STATUS") and a lease directory that disappeared ("gone":
// the leases expired). The line "kill NAME PID SIG WAIT" sends SIG to the
// program of object LEASEDIR/NAME if it has not exited, waits (at most
// 10 s) for it to be gone when WAIT is 1, and answers "signalled NAME":
// no new SSH session per signal. It ends at end of input: the agent
// closed it, or the SSH session or connection ended. Only shell builtins
// run per tick.
//
//	$1 = the lease directory
const heartbeatScript = `R=$1
n=0
while IFS=' ' read -r c a p g w; do
  if [ ! -d "$R" ]; then echo gone; exit 3; fi
  if [ "$c" = kill ]; then
    D="$R/$a"
    if [ -d "$D" ] && [ ! -e "$D/status" ] && kill -s "$g" "$p" 2>/dev/null && [ "$w" = 1 ]; then
      i=0
      while kill -0 "$p" 2>/dev/null && [ "$i" -lt 1000 ]; do i=$((i+1)); sleep 0.01; done
    fi
    echo "signalled $a"
  fi
  n=$((n+1))
  echo "$$.$n" > "$R/lease"
  for f in "$R"/*/status; do
    [ -f "$f" ] || continue
    st=
    read -r st < "$f"
    echo "exit ${f%/status} $st"
  done
done`

// superviseScript runs a program detached from any SSH session (the
// caller starts it with setsid) and stops it when its lease expires: when
// LEASEDIR/lease has not changed for GRACE seconds (the agent died or
// lost its connection and did not come back), it removes LEASEDIR (so
// every object of that agent stops, and a reconnecting agent learns that
// its leases are gone) and sends the program SIGTERM, then SIGKILL 30 s
// later. The program's pid goes to DIR/pid, its standard error to
// DIR/stderr, its exit status to DIR/status (written by a rename, so the
// heartbeat never reads half of it). File descriptors it inherited (a
// lock's) are passed to the program only.
//
//	$1 = the lease directory, $2 = the object's directory, $3 = GRACE,
//	$4… = the program and its arguments
const superviseScript = `R=$1 D=$2 G=$3
shift 3
cd /
"$@" </dev/null >/dev/null 2>"$D/stderr" &
c=$!
exec 9>&-
exec 3<&-
echo "$c" > "$D/pid.tmp" && mv -f "$D/pid.tmp" "$D/pid"
(
  last= miss=0
  while :; do
    sleep 1
    cur=
    [ -f "$R/lease" ] && read -r cur < "$R/lease"
    if [ -n "$cur" ] && [ "$cur" != "$last" ]; then
      last=$cur miss=0
    else
      miss=$((miss+1))
    fi
    if [ "$miss" -ge "$G" ]; then
      rm -rf "$R"
      kill -TERM "$c" 2>/dev/null
      sleep 30
      kill -KILL "$c" 2>/dev/null
      exit 0
    fi
  done
) </dev/null >/dev/null 2>&1 &
w=$!
wait "$c"
s=$?
kill "$w" 2>/dev/null
echo "$s" > "$D/status.tmp" && mv -f "$D/status.tmp" "$D/status"`

// startScript starts a leased program: it checks that the program exists
// (exit status 127 if not), makes the object's private directory under
// the lease directory, starts superviseScript in a new session (so that
// the end of this SSH session does not stop it) and prints "DIR PID" once
// the program runs.
//
//	$1 = superviseScript, $2 = the lease directory, $3 = GRACE,
//	$4… = the program and its arguments
const startScript = `S=$1 R=$2 G=$3
shift 3
if ! command -v "$1" >/dev/null 2>&1; then echo "$1: not found" >&2; exit 127; fi
D=$(mktemp -d "$R/p.XXXXXXXX") || exit 1
setsid sh -c "$S" sendense-supervise "$R" "$D" "$G" "$@" </dev/null >/dev/null 2>&1 &
` + waitPID

// lockScript takes a flock on a file and hands it to a leased
// "sleep": the lock lives as long as that process, which is killed by
// Unlock or when the lease expires. It exits with 75 when someone else
// holds the lock, else prints "DIR PID". A link is refused (exit 2). On a
// read-only file system (or without write permission) an exclusive lock
// exits 73; a shared one takes the file opened read-only, or exits 74
// when it does not exist: nothing can change the files there, no lock
// is needed.
//
//	$1 = superviseScript, $2 = the lease directory, $3 = GRACE,
//	$4 = the lock file, $5 = -s (shared) or -x (exclusive)
const lockScript = `S=$1 R=$2 G=$3 F=$4 M=$5
if ! command -v flock >/dev/null 2>&1; then echo "flock: not found" >&2; exit 127; fi
umask 077
if [ -L "$F" ]; then echo "lock file $F is a symbolic link: a repository's lock files never are; remove it" >&2; exit 2; fi
if { command exec 9>>"$F"; } 2>/dev/null; then :
elif [ "$M" = -x ]; then echo "cannot write the lock file $F" >&2; exit 73
elif { command exec 9<"$F"; } 2>/dev/null; then :
else exit 74
fi
flock -n "$M" 9 || exit 75
D=$(mktemp -d "$R/l.XXXXXXXX") || exit 1
setsid sh -c "$S" sendense-supervise "$R" "$D" "$G" sleep 2147483647 </dev/null >/dev/null 2>&1 &
exec 9>&-
` + waitPID

// waitPID waits for the supervisor to write the program's pid into
// $D/pid (at most 10 s) and prints "DIR PID".
const waitPID = `i=0
while [ ! -s "$D/pid" ]; do
  i=$((i+1))
  if [ "$i" -gt 1000 ]; then echo "the supervisor did not start the program" >&2; rm -rf "$D"; exit 1; fi
  sleep 0.01
done
read -r p < "$D/pid"
echo "$D $p"`

// signalScript sends a signal to a leased program that has not exited
// yet and, with WAIT=1, waits (at most 10 s) until it is gone, so that a
// lock it held is free when the script returns.
//
//	$1 = the object's directory, $2 = the pid, $3 = the signal name,
//	$4 = WAIT (1 or 0)
const signalScript = `D=$1 P=$2
[ -d "$D" ] && [ ! -e "$D/status" ] || exit 0
kill -s "$3" "$P" 2>/dev/null || exit 0
[ "$4" = 1 ] || exit 0
i=0
while kill -0 "$P" 2>/dev/null; do
  i=$((i+1))
  if [ "$i" -gt 1000 ]; then echo "process $P did not exit" >&2; exit 1; fi
  sleep 0.01
done`

// preflightScript prints the temporary directory, then the name of each
// program the remote side needs that is missing.
const preflightScript = `echo "${TMPDIR:-/tmp}"
for t in "$@"; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done`

// usageScript prints, for each file argument, its allocated blocks and
// block size ("0 0" for a missing one).
const usageScript = `for f; do stat -c '%b %B' -- "$f" 2>/dev/null || echo '0 0'; done`

// secretRunScript runs a program with the first line of its standard
// input (a secret sent through the SSH session, read by the shell's read
// builtin before anything starts) readable from a pipe as file
// descriptor 3 (printf is a builtin too), its standard input then
// /dev/null: the secret is never in argv, the environment or a file.
//
//	$1… = the program and its arguments
const secretRunScript = `IFS= read -r K || exit 1
printf '%s' "$K" | { exec 3<&0 </dev/null; exec "$@"; }`

// secretStartScript is startScript handing the program the first line
// of its standard input as file descriptor 3, as secretRunScript does.
//
//	$1 = superviseScript, $2 = the lease directory, $3 = GRACE,
//	$4… = the program and its arguments
const secretStartScript = `S=$1 R=$2 G=$3
shift 3
IFS= read -r K || exit 1
if ! command -v "$1" >/dev/null 2>&1; then echo "$1: not found" >&2; exit 127; fi
D=$(mktemp -d "$R/p.XXXXXXXX") || exit 1
printf '%s' "$K" | setsid sh -c "$S" sendense-supervise "$R" "$D" "$G" "$@" 3<&0 </dev/null >/dev/null 2>&1 &
K=
` + waitPID
