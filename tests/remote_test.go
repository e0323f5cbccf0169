package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/sshtest"
	"golang.org/x/crypto/ssh/knownhosts"
)

// remoteLab is a backup lab whose repository is reached over SSH: a real
// sshd (the "control plane" is this machine) behind a proxy that can cut
// the connection; every sendense command of the lab uses the ssh://
// repository (b.repo stays the directory, to look at the files).
type remoteLab struct {
	*backupLab
	srv   *sshtest.Server
	proxy *sshtest.Proxy
	url   string // ssh://user@127.0.0.1:PORT/dir, through the proxy
	kh    string // known_hosts for the proxy's address
}

func startRemoteLab(t *testing.T, vms []lab.VMSpec) *remoteLab {
	t.Helper()
	for _, tool := range []string{"flock", "setsid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (util-linux)", tool)
		}
	}
	b := startBackupLab(t, vms)
	srv := startSSHD(t)
	p := sshtest.StartProxy(t, srv.Addr())
	kh := filepath.Join(b.dir, "known_hosts")
	if err := srv.WriteKnownHosts(kh, p.Addr); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(b.dir, "remote.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[cbt]\nauto_enable = true\n[backup]\nmax_concurrent_disks = 2\n[tunnel]\nkey = %q\nknown_hosts = %q\n",
		srv.UserKeyFile, kh)), 0o600)
	url := fmt.Sprintf("ssh://%s@%s%s", srv.User, p.Addr, b.repo)
	b.env = append(b.env, "SENDENSE_CONFIG="+cfg, "SENDENSE_REPOSITORY="+url)
	return &remoteLab{backupLab: b, srv: srv, proxy: p, url: url, kh: kh}
}

// startSSHD starts sshd for the remote side, with an empty HOME and extra
// session environment variables (NAME=VALUE).
func startSSHD(t *testing.T, env ...string) *sshtest.Server {
	t.Helper()
	return sshtest.StartWith(t, sshtest.Options{QuietHome: true, Env: env})
}

// TestRemoteBackupChain: full and incremental backups of a two-disk VM
// into an ssh:// repository; every point restores (to a local directory)
// exactly as the disks were, list, verify and prune work there, and the
// repository is the same format as a local one.
func TestRemoteBackupChain(t *testing.T) {
	b := startRemoteLab(t, []lab.VMSpec{{Name: "web", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{
		{Capacity: 24 * mib, Data: 6 * mib, Seed: 21}, {Capacity: 8 * mib, Data: 1 * mib, Seed: 22}}}})
	r1 := b.backup("web")
	if r1.Level != "full" || len(r1.Disks) != 2 {
		t.Fatalf("first backup: %+v", r1)
	}
	b.write("web", 2000, 2*mib, 512*kib, 1)
	if err := b.WriteZeroes("web", 2001, 0, blk); err != nil {
		t.Fatal(err)
	}
	r2 := b.backup("web")
	if r2.Level != "incremental" {
		t.Fatalf("second backup: %+v", r2)
	}
	var copied uint64
	for _, d := range r2.Disks {
		copied += d.BytesCopied
	}
	if copied > 512*kib+blk {
		t.Errorf("the incremental copied %d bytes, more than the %d written", copied, 512*kib+blk)
	}
	b.write("web", 2000, 20*mib, 1*mib, 2)
	b.backup("web")
	b.restoreAndCompare("web", 0)
	out := b.mustRun("verify", "web")
	if !strings.Contains(out, "verified 6 images: no problems") {
		t.Fatalf("verify:\n%s", out)
	}
	out = b.mustRun("list")
	if !strings.Contains(out, "incremental") || strings.Count(out, "\nweb") != 3 {
		t.Fatalf("list:\n%s", out)
	}
	b.noSnapshots("web")

	// The files are those of a local repository: it opens as one.
	local, err := repo.Open(b.repo)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := local.List(t.Context(), "web"); err != nil || len(l.Points) != 3 {
		t.Fatalf("the ssh:// repository read locally: %v %v", l, err)
	}

	out = b.mustRun("prune", "--keep", "2")
	if !strings.Contains(out, "removed 1 backup (") {
		t.Fatalf("prune:\n%s", out)
	}
	if ids := b.backupIDs("web"); len(ids) != 2 {
		t.Fatalf("after prune --keep 2: %v", ids)
	}
	b.restoreAndCompare("web", 0)
	b.mustRun("verify")
	// Nothing of the agent is left on the remote side.
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "sendense-lease-*")); len(left) > 0 {
		for _, l := range left {
			if fi, err := os.Stat(l); err == nil && time.Since(fi.ModTime()) < time.Minute {
				t.Errorf("a lease directory is left on the remote side: %s", l)
			}
		}
	}
}

// TestRemoteErrors: unknown host key (refused with the line to add, then
// accepted with --accept-new-host-key), changed host key, wrong user key,
// a bad URL, and a remote side without qemu-img: each a clear error.
func TestRemoteErrors(t *testing.T) {
	b := startRemoteLab(t, []lab.VMSpec{{Name: "app", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: 8 * mib, Data: 1 * mib, Seed: 3}}}})
	if _, err := repo.Init(b.repo); err != nil {
		t.Fatal(err)
	}
	other, err := sshtest.WriteKey(filepath.Join(b.dir, "other_key"), "ed25519")
	if err != nil {
		t.Fatal(err)
	}
	changed := filepath.Join(b.dir, "changed_known_hosts")
	os.WriteFile(changed, []byte(knownhosts.Line([]string{b.proxy.Addr}, other.PublicKey())+"\n"), 0o600)
	fresh := filepath.Join(b.dir, "new", "known_hosts")

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown host key", []string{"--known-hosts", fresh}, []string{"is not known", "add this line to " + fresh, fmt.Sprintf("[127.0.0.1]:%d ssh-ed25519 ", b.proxy.Port())}},
		{"changed host key", []string{"--known-hosts", changed, "--accept-new-host-key"}, []string{"HAS CHANGED", "ssh-keygen -R"}},
		{"wrong user key", []string{"--ssh-key", filepath.Join(b.dir, "other_key")}, []string{"refused the key", "--ssh-key"}},
		{"bad URL", []string{"--repo", "ssh://" + b.proxy.Addr + "/"}, []string{"needs a host and the repository's path"}},
	} {
		out, errOut, code := b.run(nil, append([]string{"list"}, tc.args...)...)
		if code == 0 {
			t.Errorf("%s: list succeeded:\n%s", tc.name, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s: the error does not say %q:\n%s", tc.name, w, errOut)
			}
		}
		t.Logf("%s: exit %d: %s", tc.name, code, strings.TrimSpace(errOut))
	}
	if _, err := os.Stat(fresh); err == nil {
		t.Error("known_hosts was written without --accept-new-host-key")
	}
	out := b.mustRun("list", "--known-hosts", fresh, "--accept-new-host-key")
	if !strings.Contains(out, "no backups in repository ssh://") {
		t.Fatalf("list with --accept-new-host-key:\n%s", out)
	}
	if kh, err := os.ReadFile(fresh); err != nil || !strings.Contains(string(kh), fmt.Sprintf("[127.0.0.1]:%d ssh-ed25519 ", b.proxy.Port())) {
		t.Fatalf("known_hosts after --accept-new-host-key: %q %v", kh, err)
	}
	b.mustRun("list", "--known-hosts", fresh) // known now

	// A control plane without qemu-img: refused before any snapshot.
	bin := t.TempDir()
	for _, d := range []string{"/usr/bin", "/bin", "/usr/sbin", "/sbin"} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "qemu-") {
				os.Symlink(filepath.Join(d, e.Name()), filepath.Join(bin, e.Name()))
			}
		}
	}
	noQemu := startSSHD(t, "PATH="+bin)
	kh := filepath.Join(b.dir, "noqemu_known_hosts")
	noQemu.WriteKnownHosts(kh, noQemu.Addr())
	url := fmt.Sprintf("ssh://%s@%s%s", noQemu.User, noQemu.Addr(), filepath.Join(b.dir, "repo2"))
	for _, cmd := range []string{"backup", "list"} {
		args := []string{cmd, "--repo", url, "--ssh-key", noQemu.UserKeyFile, "--known-hosts", kh}
		if cmd == "backup" {
			args = append(args, "app")
		}
		_, errOut, code := b.run(nil, args...)
		if code != 1 || !strings.Contains(errOut, "qemu-img") || !strings.Contains(errOut, "qemu-utils") {
			t.Errorf("%s on a remote side without qemu-img: exit %d:\n%s", cmd, code, errOut)
		}
		t.Logf("%s without qemu-img: %s", cmd, strings.TrimSpace(errOut))
	}
	b.noSnapshots("app")
}

// TestRemoteBackupResume: the SSH connection is cut in the middle of an
// incremental's copy; the backup reconnects, continues from what was
// copied and flushed (the remote qemu-nbd survived the cut), finishes, and
// restores exactly, having copied much less than twice the changed data.
func TestRemoteBackupResume(t *testing.T) {
	b := startRemoteLab(t, []lab.VMSpec{{Name: "db", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: 64 * mib, Data: 4 * mib, Seed: 5}}}})
	b.backup("db")
	const changed = 24 * mib
	b.write("db", 2000, 16*mib, changed, 6)

	cmd := b.cmd([]string{"FAKEVDDK_READ_DELAY_US=30000"}, "backup", "--json", "--connections", "1", "db")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForCopy(t, b.backupLab, "db", cmd)
	b.proxy.CutAfter(changed / 2) // about half of the copy, from now
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the backup did not survive the cut: %v\n%s", err, stderr.String())
	}
	var r struct {
		BackupID string   `json:"backup_id"`
		Level    string   `json:"level"`
		Copied   uint64   `json:"bytes_copied"`
		Notices  []string `json:"notices"`
	}
	for _, line := range strings.Split(stdout.String(), "\n") {
		if strings.Contains(line, `"message_type":"summary"`) {
			json.Unmarshal([]byte(line), &r)
		}
	}
	if r.BackupID == "" || r.Level != "incremental" {
		t.Fatalf("no incremental summary:\n%s\n%s", stdout.String(), stderr.String())
	}
	notices := strings.Join(r.Notices, "\n")
	if !strings.Contains(notices, "reconnecting") || !strings.Contains(notices, "not copied again") {
		t.Fatalf("the backup did not resume from a checkpoint; notices:\n%s\nstderr:\n%s", notices, stderr.String())
	}
	if r.Copied < changed || r.Copied >= 2*changed {
		t.Fatalf("copied %d bytes in all for %d changed: restarted from zero, or lost data", r.Copied, changed)
	}
	t.Logf("copied %d MiB in all for %d MiB changed; notices:\n%s", r.Copied>>20, changed>>20, notices)
	b.capture("db", r.BackupID)
	b.restoreAndCompare("db", 0)
	b.mustRun("verify", "db")
	b.noSnapshots("db")
}
