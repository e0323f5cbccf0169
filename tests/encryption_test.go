package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/s3test"
)

const repoPassphrase = "tr0ub4dor&3 repository passphrase"

// encrypt makes b's repository an encrypted one, created by its first
// backup ([repository] encryption), with its passphrase in a file named
// by $SENDENSE_REPOSITORY_PASSWORD_FILE.
func (b *backupLab) encrypt(cfg string) {
	b.t.Helper()
	pass := filepath.Join(b.dir, "repo.pass")
	os.WriteFile(pass, []byte(repoPassphrase+"\n"), 0o600)
	text, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, append(text, "[repository]\nencryption = \"aes-256\"\n"...), 0o600)
	b.env = append(b.env, "SENDENSE_REPOSITORY_PASSWORD_FILE="+pass)
}

// noSecretsIn fails if a file under dir holds one of the secrets.
func noSecretsIn(t *testing.T, dir string, secrets ...string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		data, _ := os.ReadFile(p)
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("%s holds a secret (%.8s…)", p, s)
			}
		}
		return nil
	})
}

// TestEncryptedBackupChain: a backup creates an encrypted repository;
// full, incrementals, restore (cmp-equal), verify and prune work; no
// secret is in any child's argv or environment, nor in any file; a wrong
// passphrase and a repository without key slot fail clearly and change
// nothing; an image opens with plain qemu-img and its recovery secret.
func TestEncryptedBackupChain(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace is not installed")
	}
	b := startBackupLab(t, []lab.VMSpec{{Name: "web", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{
		{Capacity: 24 * mib, Data: 6 * mib, Seed: 31}, {Capacity: 8 * mib, Data: 1 * mib, Seed: 32}}}})
	b.encrypt(filepath.Join(b.dir, "sendense.toml"))

	// The first backup, under strace: every program it starts, with its
	// arguments and environment.
	trace := filepath.Join(b.dir, "execve.trace")
	cmd := exec.Command("strace", "-f", "-v", "-s", "65536", "-e", "trace=execve", "-o", trace, sendense, "backup", "--json", "web")
	cmd.Env = append(os.Environ(), b.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	ids := b.backupIDs("web")
	if len(ids) != 1 {
		t.Fatalf("backups: %v", ids)
	}
	b.capture("web", ids[0])
	rf, _ := os.ReadFile(filepath.Join(b.repo, "sendense-repository.json"))
	if !bytes.Contains(rf, []byte(`"encryption"`)) {
		t.Fatalf("the backup did not create an encrypted repository:\n%s", rf)
	}

	b.write("web", 2000, 2*mib, 512*kib, 1)
	r2 := b.backup("web")
	if r2.Level != "incremental" {
		t.Fatalf("second backup: %+v", r2)
	}
	b.write("web", 2001, 1*mib, 1*mib, 2)
	r3 := b.backup("web")
	b.restoreAndCompare("web", 0)

	// Instant access: each disk of the latest point served (pinned
	// qemu-nbd with the images' secrets), read-only and writable.
	for _, writable := range []bool{false, true} {
		args := []string{"web"}
		if writable {
			args = append(args, "--writable")
		}
		m := b.mount(nil, args...)
		for key, want := range b.expected["web"][r3.BackupID] {
			run(t, "cmp", want, nbdcopyTo(t, b.dir, m.exports[key].URI))
		}
		m.stop(t)
	}
	if out := b.mustRun("verify", "web"); !strings.Contains(out, "verified 6 images: no problems") {
		t.Fatalf("verify:\n%s", out)
	}

	// Recovery: the full's image opened by plain qemu-img.
	image := filepath.Base(mustGlob(t, filepath.Join(b.repo, "web", ids[0]+"-disk2000.qcow2")))
	secret := b.mustRun("key", "secret", image)
	sf := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(sf, []byte(secret), 0o600)
	raw := filepath.Join(b.dir, "recovered.raw")
	run(t, "qemu-img", "convert", "--object", "secret,id=s0,file="+sf, "--image-opts",
		"driver=qcow2,encrypt.key-secret=s0,file.filename="+filepath.Join(b.repo, "web", image), "-O", "raw", raw)
	run(t, "cmp", b.expected["web"][ids[0]][2000], raw)

	trace2, _ := os.ReadFile(trace)
	if !bytes.Contains(trace2, []byte("secret,id=sendense-transport,file=/dev/fd/3")) {
		t.Fatal("the traced backup passed no secret to qemu: was it encrypted?")
	}
	for _, s := range []string{repoPassphrase, secret, lab.Password} {
		if bytes.Contains(trace2, []byte(s)) {
			t.Errorf("a secret (%.8s…) is in the arguments or environment of a program sendense started", s)
		}
	}

	out := b.mustRun("prune", "--keep", "2")
	if !strings.Contains(out, "removed 1 backup (") {
		t.Fatalf("prune:\n%s", out)
	}
	b.restoreAndCompare("web", 0)
	b.mustRun("verify")
	noSecretsIn(t, b.repo, repoPassphrase, secret, lab.Password)
	noSecretsIn(t, filepath.Join(b.dir, "state"), repoPassphrase, secret, lab.Password)

	// A wrong passphrase, and a repository without key slots: clear
	// errors, nothing changed.
	before := treeState(t, b.repo)
	wrong := filepath.Join(b.dir, "wrong.pass")
	os.WriteFile(wrong, []byte("not it\n"), 0o600)
	for _, args := range [][]string{{"list"}, {"prune", "--keep", "1"}, {"backup", "web"}, {"--password-file", wrong, "verify"}} {
		env := []string{"SENDENSE_REPOSITORY_PASSWORD_FILE=" + wrong}
		_, errOut, code := b.run(env, args...)
		if code == 0 || !strings.Contains(errOut, "wrong passphrase") {
			t.Errorf("%v with a wrong passphrase: exit %d: %s", args, code, errOut)
		}
	}
	b.noSnapshots("web")
	if after := treeState(t, b.repo); after != before {
		t.Errorf("a wrong passphrase changed the repository:\n%s\n%s", before, after)
	}
	noKeys := bytes.Replace(rf, []byte(`"keys": [`), []byte(`"keys": [], "was": [`), 1)
	os.WriteFile(filepath.Join(b.repo, "sendense-repository.json"), noKeys, 0o600)
	if _, errOut, code := b.run(nil, "list"); code == 0 || !strings.Contains(errOut, "no key slot") {
		t.Errorf("no key slot: exit %d: %s", code, errOut)
	}
}

func mustGlob(t *testing.T, pattern string) string {
	t.Helper()
	m, _ := filepath.Glob(pattern)
	if len(m) != 1 {
		t.Fatalf("%s: %v", pattern, m)
	}
	return m[0]
}

// treeState lists the files under dir with their sizes and times.
func treeState(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, _ := d.Info()
		if d.Type().IsRegular() {
			fmt.Fprintln(&b, p, fi.ModTime(), fi.Size())
		}
		return nil
	})
	return b.String()
}

// TestEncryptedRemote: an encrypted ssh:// repository (real sshd): the
// secrets reach the remote qemu-img and qemu-nbd through the SSH session;
// full, incremental, restore, verify and prune work, and nothing secret
// is in the files on the remote side.
// TestEncryptedFineChanges: in a local encrypted repository sendense
// writes and encrypts the images itself (qemu.ImageWriter), whole 64 KiB
// clusters, so an incremental copies the changed areas widened to
// clusters. With 4 KiB CBT blocks, changes smaller than a cluster and
// across clusters, zeroed data and the disk's last sectors, every point
// restores byte for byte, verify and qemu-img check find the images clean, and prune
// merges them.
func TestEncryptedFineChanges(t *testing.T) {
	const capacity = 24 * mib
	b := startBackupLabWith(t, lab.Options{BlockSize: 4 * kib, VMs: []lab.VMSpec{{Name: "web", PowerOn: true, CBT: true,
		Disks: []lab.DiskSpec{{Capacity: capacity, Data: 6 * mib, Seed: 51}}}}})
	b.encrypt(filepath.Join(b.dir, "sendense.toml"))
	b.backup("web")
	b.write("web", 2000, 2*mib+4*kib, 8*kib, 1)                            // inside one cluster
	b.write("web", 2000, 3*mib-4*kib, 12*kib, 2)                           // across two
	b.write("web", 2000, capacity-4*kib, 4*kib, 3)                         // the disk's end
	if err := b.WriteZeroes("web", 2000, 1*mib+8*kib, 4*kib); err != nil { // data become zeroes
		t.Fatal(err)
	}
	r := b.backup("web")
	if r.Level != "incremental" {
		t.Fatalf("second backup: %+v", r)
	}
	b.write("web", 2000, 5*mib+512*kib+4*kib, 4*kib, 4)
	b.backup("web")
	b.restoreAndCompare("web", 0)
	if out := b.mustRun("verify", "web"); !strings.Contains(out, "verified 3 images: no problems") {
		t.Fatalf("verify:\n%s", out)
	}
	images, _ := filepath.Glob(filepath.Join(b.repo, "web", "*.qcow2"))
	if len(images) != 3 {
		t.Fatalf("images: %v", images)
	}
	for _, img := range images { // each alone: its own secret
		secret := b.mustRun("key", "secret", filepath.Base(img))
		sf := filepath.Join(t.TempDir(), "secret")
		os.WriteFile(sf, []byte(secret), 0o600)
		run(t, "qemu-img", "check", "--object", "secret,id=s0,file="+sf,
			`json:{"driver":"qcow2","encrypt":{"key-secret":"s0"},"file":{"driver":"file","filename":"`+img+`"},"backing":null}`)
	}
	b.mustRun("prune", "--keep", "2")
	b.restoreAndCompare("web", 0)
}

func TestEncryptedRemote(t *testing.T) {
	b := startRemoteLab(t, []lab.VMSpec{{Name: "web", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{
		{Capacity: 16 * mib, Data: 4 * mib, Seed: 41}}}})
	b.encrypt(filepath.Join(b.dir, "remote.toml"))
	b.backup("web")
	b.write("web", 2000, 2*mib, 512*kib, 1)
	if r := b.backup("web"); r.Level != "incremental" {
		t.Fatalf("second backup: %+v", r)
	}
	b.write("web", 2000, 8*mib, 1*mib, 2)
	b.backup("web")
	b.restoreAndCompare("web", 0)
	if out := b.mustRun("verify", "web"); !strings.Contains(out, "verified 3 images: no problems") {
		t.Fatalf("verify:\n%s", out)
	}
	if out := b.mustRun("prune", "--keep", "2"); !strings.Contains(out, "removed 1 backup (") {
		t.Fatalf("prune:\n%s", out)
	}
	b.restoreAndCompare("web", 0)
	b.mustRun("verify")
	rf, _ := os.ReadFile(filepath.Join(b.repo, "sendense-repository.json"))
	if !bytes.Contains(rf, []byte(`"encryption"`)) {
		t.Fatalf("not encrypted:\n%s", rf)
	}
	noSecretsIn(t, b.repo, repoPassphrase, lab.Password)
}

// TestEncryptedOffsite: an encrypted repository's offsite copy restores
// with the repository gone (the staging repository takes the bucket's
// marker, with its key slots), byte for byte.
func TestEncryptedOffsite(t *testing.T) {
	srv, err := s3test.Start(s3test.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	b := startBackupLab(t, []lab.VMSpec{{Name: "web", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{
		{Capacity: 8 * mib, Data: 2 * mib, Seed: 51}}}})
	cfg := filepath.Join(b.dir, "sendense.toml")
	b.encrypt(cfg)
	b.backup("web")
	b.write("web", 2000, 1*mib, 256*kib, 3)
	b.backup("web")
	bucket := srv.Bucket(t, false)
	access, secret := s3test.Credentials(t, b.dir)
	text, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, append(text, fmt.Sprintf("[[offsite]]\nname = \"dr\"\nendpoint = %q\nbucket = %q\npath_style = true\naccess_key_file = %q\nsecret_key_file = %q\n",
		srv.Endpoint, bucket, access, secret)...), 0o600)
	b.mustRun("offsite", "sync", "--target", "dr")
	os.RemoveAll(b.repo)
	for id := range b.expected["web"] {
		to := filepath.Join(b.dir, "from-s3-"+id)
		b.mustRun("restore", "--repo", "s3://dr/", "web", "--backup", id, "--to", to)
		run(t, "cmp", b.expected["web"][id][2000], mustGlob(t, filepath.Join(to, "*disk2000.raw")))
	}
}
