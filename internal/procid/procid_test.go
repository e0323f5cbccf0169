package procid

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	me, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	if me.PID != os.Getpid() || me.Start == 0 || len(me.Host) != 32 || me.Boot == "" {
		t.Fatalf("Current: %+v", me)
	}
	if l, why := Check(me.Boot, me.PID, me.Start); l != Alive {
		t.Fatalf("this process: %v (%s)", l, why)
	}
	if l, _ := Check(me.Boot, me.PID, me.Start+1); l != Gone {
		t.Fatal("a reused pid (other start time) is not gone")
	}
	if l, why := Check("00000000-0000-0000-0000-000000000000", me.PID, me.Start); l != Gone || !strings.Contains(why, "rebooted") {
		t.Fatalf("another boot: %v (%s)", l, why)
	}

	// A child: alive while it runs, gone as a zombie and once reaped.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	start, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := Check(me.Boot, pid, start); l != Alive {
		t.Fatal("a running child is not alive")
	}
	cmd.Process.Kill()
	for i := 0; i < 500; i++ { // not reaped yet: a zombie
		if st, err := readStat(pid); err == nil && st.state == 'Z' {
			break
		}
		exec.Command("sleep", "0.01").Run()
	}
	if l, why := Check(me.Boot, pid, start); l != Gone {
		t.Fatalf("a zombie: %v (%s)", l, why)
	}
	cmd.Wait()
	if l, why := Check(me.Boot, pid, start); l != Gone || !strings.Contains(why, "no longer runs") {
		t.Fatalf("a reaped child: %v (%s)", l, why)
	}
}

func TestHostID(t *testing.T) {
	dir := t.TempDir()
	mid := filepath.Join(dir, "machine-id")
	os.WriteFile(mid, []byte("3d1219c7c4c5404aaa1f6d2a48adfda4\n"), 0o644)
	defer func(f []string) { machineIDFiles = f }(machineIDFiles)
	machineIDFiles = []string{mid}
	a, b := hostID(), hostID()
	if a != b || len(a) != 32 || strings.Contains(a, "3d1219c7") {
		t.Fatalf("host ids %q %q", a, b)
	}
	machineIDFiles = []string{filepath.Join(dir, "missing")}
	c, d := hostID(), hostID()
	if !strings.HasPrefix(c, "anon-") || c == d {
		t.Fatalf("without a machine id: %q %q (want distinct anon- ids)", c, d)
	}
}
