package tests

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/sshtest"
)

// TestReplicateOverSSH: replication into an NBD server on a unix socket
// of an SSH server (real OpenSSH), through the tunnel: full, incremental,
// and an incremental whose SSH connection is cut mid-copy, which
// reconnects and finishes without copying everything again. Unknown host
// keys are refused with the line to add.
func TestReplicateOverSSH(t *testing.T) {
	srv := sshtest.Start(t)
	proxy := sshtest.StartProxy(t, srv.Addr())
	known := filepath.Join(t.TempDir(), "known_hosts")
	if err := srv.WriteKnownHosts(known, srv.Addr(), proxy.Addr); err != nil {
		t.Fatal(err)
	}
	b := startBackupLab(t, []lab.VMSpec{{Name: "dr", PowerOn: true, CBT: true,
		Disks: []lab.DiskSpec{{Capacity: 64 * mib, Data: 8 * mib, Seed: 3}}}})
	target := newRawTarget(t, 64*mib)
	uri := fmt.Sprintf("ssh://%s@%s%s", srv.User, proxy.Addr, target.socket)
	state := filepath.Join(b.dir, "replication.json")
	args := []string{"dr", "--state", state, "--target", uri, "--ssh-key", srv.UserKeyFile, "--known-hosts", known}

	r := b.replicate(args...)
	if r.Level != "full" {
		t.Fatalf("first replication: %+v", r)
	}
	b.sameAsDisk("dr", 2000, target.path)

	b.write("dr", 2000, 16*mib, mib, 1)
	r = b.replicate(args...)
	if r.Level != "incremental" || r.Disks[0].BytesCopied != mib {
		t.Fatalf("incremental: %+v", r)
	}
	b.sameAsDisk("dr", 2000, target.path)

	// Cut the SSH connection once 6 MiB went through it, mid-way through
	// a 16 MiB incremental read slowly from the source.
	b.write("dr", 2000, 32*mib, 16*mib, 2)
	proxy.CutAfter(6 << 20)
	out, stderr, code := b.run([]string{"FAKEVDDK_READ_DELAY_US=20000"}, append([]string{"replicate", "--json", "--request-size", "1M"}, args...)...)
	if code != 0 {
		t.Fatalf("replication across a cut connection: exit %d\n%s%s", code, out, stderr)
	}
	if !strings.Contains(out, "reconnecting") || !strings.Contains(out, "resuming") {
		t.Errorf("no reconnection reported:\n%s", out)
	}
	var copied uint64
	for _, line := range strings.Split(out, "\n") {
		var rep replicateReport
		if strings.Contains(line, `"summary"`) && jsonUnmarshal(line, &rep) == nil {
			copied = rep.Disks[0].BytesCopied
		}
	}
	if copied == 0 || copied >= 2*16*mib {
		t.Errorf("wrote %d bytes for 16 MiB changed: restarted from zero?", copied)
	}
	b.sameAsDisk("dr", 2000, target.path)
	b.noSnapshots("dr")

	// An SSH server whose host key is not known is refused, naming the
	// line to add; nothing is written to known_hosts without asking.
	empty := filepath.Join(t.TempDir(), "known_hosts")
	_, stderr, code = b.run(nil, "replicate", "dr", "--state", state, "--target", uri, "--ssh-key", srv.UserKeyFile, "--known-hosts", empty)
	if code == 0 || !strings.Contains(stderr, "not known") || !strings.Contains(stderr, srv.HostKey.Type()) {
		t.Fatalf("unknown host key: exit %d: %s", code, stderr)
	}
	b.noSnapshots("dr")
}
