// Package procid identifies this process and its host well enough to
// record who owns something (a job's vSphere snapshot) and to tell later,
// from another process, whether that owner is provably gone.
//
// A host is identified by a digest of /etc/machine-id and the PID
// namespace (the machine id itself is never recorded), a boot by the
// kernel's boot_id, a process by its pid and its start time (clock ticks
// after boot, field 22 of /proc/PID/stat), which tells a reused pid from
// the original process.
package procid

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Files read; tests may point them elsewhere.
var (
	machineIDFiles = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}
	bootIDFile     = "/proc/sys/kernel/random/boot_id"
	procDir        = "/proc"
)

// Self is this process as an owner record names it.
type Self struct {
	// Host is a hex digest of the machine id and the PID namespace; a
	// host without a machine id gets a random "anon-…" id per process,
	// so its records are never taken for this host's by another process.
	Host string
	// Boot is the kernel's boot id ("" when unreadable).
	Boot string
	// PID and Start identify the process (Start: clock ticks after boot).
	PID   int
	Start uint64
}

var (
	selfOnce sync.Once
	self     Self
	selfErr  error
)

// Current returns this process's identity (computed once).
func Current() (Self, error) {
	selfOnce.Do(func() {
		self.PID = os.Getpid()
		self.Host = hostID()
		self.Boot = BootID()
		self.Start, selfErr = StartTime(self.PID)
	})
	return self, selfErr
}

// hostID digests the machine id with the PID namespace: two containers
// sharing a machine id but not their pids are different hosts here.
func hostID() string {
	var mid string
	for _, f := range machineIDFiles {
		if b, err := os.ReadFile(f); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
			mid = strings.TrimSpace(string(b))
			break
		}
	}
	if mid == "" {
		var r [12]byte
		rand.Read(r[:])
		return "anon-" + hex.EncodeToString(r[:])
	}
	ns, _ := os.Readlink(procDir + "/self/ns/pid")
	sum := sha256.Sum256([]byte("sendense-capture host\n" + mid + "\n" + ns))
	return hex.EncodeToString(sum[:16])
}

// BootID returns the kernel's boot id, "" when it cannot be read.
func BootID() string {
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// stat is what StartTime and Check read of /proc/PID/stat.
type stat struct {
	state byte
	start uint64
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", procDir, pid))
	if err != nil {
		return stat{}, err
	}
	// "pid (comm) state ppid …": comm may hold spaces and parentheses,
	// so the fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return stat{}, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return stat{state: f[0][0], start: start}, nil
}

// StartTime returns when process pid started, in clock ticks after boot.
func StartTime(pid int) (uint64, error) {
	st, err := readStat(pid)
	return st.start, err
}

// Liveness is what Check can tell of a recorded process of this host.
type Liveness int

const (
	// Alive: the process runs (or might: it cannot be told apart).
	Alive Liveness = iota
	// Gone: the process provably ended.
	Gone
)

// Check tells whether the process recorded as (boot, pid, start) on this
// host still runs. It says Gone only when that is certain: the host
// booted since, no process has that pid, the pid's process started at
// another time (reused), or it is a zombie. When in doubt (a process it
// may not inspect), it says Alive. why explains a Gone.
func Check(boot string, pid int, start uint64) (l Liveness, why string) {
	cur := BootID()
	if boot != "" && cur != "" && boot != cur {
		return Gone, "the host rebooted since"
	}
	if pid <= 0 {
		return Alive, ""
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return Gone, fmt.Sprintf("process %d no longer runs", pid)
	}
	st, err := readStat(pid)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Gone between kill and the read, or hidden (hidepid): trust kill.
		if kerr := syscall.Kill(pid, 0); errors.Is(kerr, syscall.ESRCH) {
			return Gone, fmt.Sprintf("process %d no longer runs", pid)
		}
		return Alive, ""
	case err != nil:
		return Alive, ""
	case st.start != start:
		return Gone, fmt.Sprintf("pid %d now belongs to another process", pid)
	case st.state == 'Z' || st.state == 'X':
		return Gone, fmt.Sprintf("process %d has exited", pid)
	}
	return Alive, ""
}
