package tests

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/qemu"
)

// rawTarget is a raw file served by qemu-nbd: a persistent replication
// target.
type rawTarget struct {
	path   string
	uri    string
	socket string
}

func newRawTarget(t *testing.T, size uint64) rawTarget {
	t.Helper()
	path := filepath.Join(t.TempDir(), "target.raw")
	// Old content: a target is not known to be empty.
	if err := os.WriteFile(path, []byte(strings.Repeat("stale data ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(size)); err != nil {
		t.Fatal(err)
	}
	srv, err := qemu.ServeNBD(context.Background(), path, qemu.ServeOptions{Format: "raw", SocketDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return rawTarget{path, srv.URI(), srv.Socket()}
}

// replicateReport is the "summary" line of replicate --json.
type replicateReport struct {
	Level string `json:"level"`
	Disks []struct {
		Key         int32  `json:"key"`
		Level       string `json:"level"`
		Reason      string `json:"reason"`
		Target      string `json:"target"`
		BytesCopied uint64 `json:"bytes_copied"`
		BytesZeroed uint64 `json:"bytes_zeroed"`
	} `json:"disks"`
}

func (b *backupLab) replicate(args ...string) replicateReport {
	b.t.Helper()
	out := b.mustRun(append([]string{"replicate", "--json"}, args...)...)
	var r replicateReport
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Contains(line, `"message_type":"summary"`) {
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				b.t.Fatal(err)
			}
		}
	}
	if r.Level == "" {
		b.t.Fatalf("no summary in replicate output:\n%s", out)
	}
	return r
}

// sameAsDisk compares a target file with a disk's current content.
func (b *backupLab) sameAsDisk(vm string, key int32, target string) {
	b.t.Helper()
	flat, err := b.DiskPath(vm, key)
	if err != nil {
		b.t.Fatal(err)
	}
	run(b.t, "cmp", flat, target)
}

// TestReplicate: a two-disk VM replicated into raw targets served by
// qemu-nbd: full, then incremental in place (changed blocks overwritten,
// a block that became zeros zeroed, a trimmed block zeroed, the rest left
// alone); a target that held another VM's disk gets a full copy.
func TestReplicate(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{multiDiskVM, {Name: "other", PowerOn: true, CBT: true,
		Disks: []lab.DiskSpec{{Capacity: 24 * mib, Data: 4 * mib, Seed: 7}}}})
	state := filepath.Join(b.dir, "replication.json")
	targets := map[int32]rawTarget{}
	var args []string
	for key, size := range map[int32]uint64{2000: 24 * mib, 2001: 8 * mib, 2002: 16 * mib} {
		targets[key] = newRawTarget(t, size)
		args = append(args, "--disk", strconv.Itoa(int(key))+"="+targets[key].uri)
	}
	args = append([]string{"db", "--state", state}, args...)

	r := b.replicate(args...)
	if r.Level != "full" || len(r.Disks) != 3 {
		t.Fatalf("first replication: %+v", r)
	}
	for key, tg := range targets {
		b.sameAsDisk("db", key, tg.path)
	}

	b.write("db", 2000, 2*mib, 128*kib, 1)
	if err := b.WriteZeroes("db", 2000, 0, blk); err != nil { // data that became zeros
		t.Fatal(err)
	}
	if err := b.Trim("db", 2001, 0, 2*blk); err != nil { // data that became unallocated
		t.Fatal(err)
	}
	r = b.replicate(args...)
	if r.Level != "incremental" {
		t.Fatalf("second replication: %+v", r)
	}
	var copied, zeroed uint64
	for _, d := range r.Disks {
		copied += d.BytesCopied
		zeroed += d.BytesZeroed
	}
	if copied != 128*kib || zeroed != 3*blk {
		t.Errorf("incremental wrote %d bytes and zeroed %d, want %d and %d", copied, zeroed, 128*kib, 3*blk)
	}
	for key, tg := range targets {
		b.sameAsDisk("db", key, tg.path)
	}

	// Nothing changed: nothing written.
	r = b.replicate(args...)
	for _, d := range r.Disks {
		if d.BytesCopied != 0 || d.BytesZeroed != 0 || d.Level != "incremental" {
			t.Errorf("a run with nothing changed wrote to disk %d: %+v", d.Key, d)
		}
	}

	// Another VM into disk 2000's target: it must be a full copy.
	r = b.replicate("other", "--state", state, "--target", targets[2000].uri, "--allow-larger-target")
	if r.Level != "full" || !strings.Contains(r.Disks[0].Reason, "db") {
		t.Fatalf("another VM into a used target: %+v", r)
	}

	// Bad input.
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"db", "--state", state, "--target", targets[2000].uri}, 1, "--disk KEY=URI"},
		{[]string{"db", "--state", state, "--disk", "2000=http://x"}, 2, "unsupported scheme"},
		{[]string{"db", "--state", state, "--disk", "9=" + targets[2000].uri, "--disk", "2001=" + targets[2001].uri, "--disk", "2002=" + targets[2002].uri, "--disk", "2000=" + targets[2000].uri}, 1, "no disk 9"},
		{[]string{"other", "--state", state, "--target", targets[2001].uri}, 1, "smaller than"},
	} {
		_, stderr, code := b.run(nil, append([]string{"replicate"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("replicate %v: exit %d, %q; want exit %d mentioning %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
	b.noSnapshots("db")
	b.noSnapshots("other")
}
