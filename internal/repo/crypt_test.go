package repo_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
)

// withPassphrase makes encrypted repositories open with pass for the
// test.
func withPassphrase(t *testing.T, pass string) {
	old := repo.Passphrase
	repo.Passphrase = func(string) ([]byte, error) { return []byte(pass), nil }
	t.Cleanup(func() { repo.Passphrase = old })
}

// The encrypted chain is built once (creating a LUKS image takes qemu
// seconds: it measures its PBKDF) and copied for each test.
var (
	encOnce    sync.Once
	encDir     string
	encBuilder *repotest.Builder
)

// encryptedChain returns a copy of chainSpecs in an encrypted
// repository, whose passphrase the test's repo.Passphrase gives.
func encryptedChain(t *testing.T) (*repo.Repo, *repotest.Builder) {
	t.Helper()
	repotest.Require(t)
	withPassphrase(t, "correct horse")
	encOnce.Do(func() {
		parent, err := os.MkdirTemp("", "sendense-repo-encrypted-")
		if err != nil {
			t.Fatal(err)
		}
		encDir = filepath.Join(parent, "repo") // removed by TestMain
		r, err := repo.InitEncryptedFS(repo.Local, qemu.Default, encDir, []byte("correct horse"))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		b := repotest.New(t, r, vmWeb, 1)
		for _, spec := range chainSpecs {
			b.Backup(spec...)
		}
		encBuilder = b
	})
	if encBuilder == nil {
		t.Fatal("building the encrypted repository failed")
	}
	dir := filepath.Join(t.TempDir(), "repo")
	repotest.CopyDir(t, encDir, dir)
	r, err := repo.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, encBuilder.Clone(t, r)
}

// restoreEqual restores backup id and compares every disk with what the
// builder wrote.
func restoreEqual(t *testing.T, r *repo.Repo, b *repotest.Builder, id string) {
	t.Helper()
	to := t.TempDir()
	disks, err := r.Restore(context.Background(), repo.RestoreOptions{VM: "vm-42", Backup: id, To: to})
	if err != nil {
		t.Fatalf("restore %s: %v", id, err)
	}
	for _, d := range disks {
		got, err := os.ReadFile(d.Path)
		if err != nil || !bytes.Equal(got, b.Content(id, d.Disk)) {
			t.Fatalf("restore %s disk %d: content differs (%v)", id, d.Disk, err)
		}
	}
}

func TestEncryptedRepository(t *testing.T) {
	r, b := encryptedChain(t)
	ctx := context.Background()
	vmDir := filepath.Join(r.Dir, "web_01")

	// Nothing of the data, the VM's name inside the files, or the
	// digests is readable in the files.
	entries, _ := os.ReadDir(vmDir)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(vmDir, e.Name()))
		if bytes.Contains(data, []byte("vm-42")) || bytes.Contains(data, []byte("web 01")) {
			t.Errorf("%s holds the VM's moref or name in the clear", e.Name())
		}
		if strings.HasSuffix(e.Name(), ".qcow2") {
			content := b.Content(b.Points[0].ID, keyA)
			if bytes.Contains(data, content[:4096]) {
				t.Errorf("%s holds data in the clear", e.Name())
			}
		}
	}
	rf, _ := os.ReadFile(filepath.Join(r.Dir, repo.RepoFileName))
	if !bytes.Contains(rf, []byte(`"algorithm": "aes-256"`)) || bytes.Contains(rf, []byte("correct horse")) {
		t.Fatalf("sendense-repository.json:\n%s", rf)
	}

	verifyOK(t, r, "vm-42", "")
	for _, p := range b.Points {
		restoreEqual(t, r, b, p.ID)
	}

	// Reopened with the passphrase: the same; with another: an error.
	r2, err := repo.Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := r2.Latest("vm-42"); err != nil || m.ID != b.Points[3].ID {
		t.Fatal(m, err)
	}
	r2.Close()
	withPassphrase(t, "wrong")
	if _, err := repo.Open(r.Dir); !errors.Is(err, repo.ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	withPassphrase(t, "correct horse")

	// Prune merges encrypted layers into an encrypted image.
	if _, err := r.Prune(ctx, repo.PruneOptions{Keep: 2}); err != nil {
		t.Fatal(err)
	}
	verifyOK(t, r, "vm-42", "")
	restoreEqual(t, r, b, b.Points[2].ID)
	restoreEqual(t, r, b, b.Points[3].ID)

	// Recovery without sendense: the image's secret and plain qemu-img.
	full := repo.ImageName(b.Points[3].ID, keyB)
	secret, err := r.ImageSecret(full)
	if err != nil {
		t.Fatal(err)
	}
	sf := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(sf, secret, 0o600)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	out, err := exec.Command("qemu-img", "convert", "--object", "secret,id=s0,file="+sf,
		"--image-opts", "driver=qcow2,encrypt.key-secret=s0,file.filename="+filepath.Join(vmDir, full), "-O", "raw", raw).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img convert with the recovery secret: %v: %s", err, out)
	}
	if got, _ := os.ReadFile(raw); !bytes.Equal(got, b.Content(b.Points[3].ID, keyB)) {
		t.Fatal("the image opened with plain qemu-img reads another content")
	}
}

// A sealed manifest changed, or swapped for another backup's, is
// detected; a plain file in an encrypted repository is refused.
func TestEncryptedManifestTampered(t *testing.T) {
	r, b := encryptedChain(t)
	vmDir := filepath.Join(r.Dir, "web_01")
	m1 := filepath.Join(vmDir, b.Points[1].ID+".json")
	m2 := filepath.Join(vmDir, b.Points[2].ID+".json")
	data, _ := os.ReadFile(m2)
	data[len(data)-5] ^= 1
	os.WriteFile(m2, data, 0o600)
	res, err := r.Verify(context.Background(), repo.VerifyOptions{VM: "vm-42"})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() || !strings.Contains(res.Problems[0].Message, "does not authenticate") {
		t.Fatalf("tampered manifest: %+v", res.Problems)
	}
	// Another backup's manifest under this name.
	one, _ := os.ReadFile(m1)
	os.WriteFile(m2, one, 0o600)
	if _, err := r.Restore(context.Background(), repo.RestoreOptions{VM: "vm-42", Backup: b.Points[2].ID, To: t.TempDir()}); err == nil ||
		!strings.Contains(err.Error(), "does not authenticate") {
		t.Fatalf("swapped manifest: %v", err)
	}
	os.WriteFile(m2, []byte(`{"format":"sendense-manifest"}`), 0o600)
	if _, err := r.Restore(context.Background(), repo.RestoreOptions{VM: "vm-42", Backup: b.Points[2].ID, To: t.TempDir()}); err == nil ||
		!strings.Contains(err.Error(), "not sealed") {
		t.Fatalf("plain manifest: %v", err)
	}
}

func TestKeySlots(t *testing.T) {
	repotest.Require(t)
	withPassphrase(t, "first")
	ctx := context.Background()
	r, err := repo.InitEncryptedFS(repo.Local, qemu.Default, filepath.Join(t.TempDir(), "repo"), []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	slots, current, _ := r.KeySlots()
	if len(slots) != 1 || current != slots[0].ID {
		t.Fatal(slots, current)
	}
	if err := r.RemoveKey(ctx, current); err == nil {
		t.Fatal("removing the slot in use was allowed")
	}
	second, err := r.AddKey(ctx, []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	withPassphrase(t, "second")
	r2, err := repo.Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, cur, _ := r2.KeySlots(); cur != second.ID {
		t.Fatalf("opened with slot %s, not %s", cur, second.ID)
	}
	if err := r2.RemoveKey(ctx, current); err != nil {
		t.Fatal(err)
	}
	withPassphrase(t, "first")
	if _, err := repo.Open(r.Dir); !errors.Is(err, repo.ErrWrongPassphrase) {
		t.Fatalf("removed slot still opens: %v", err)
	}
	// passwd replaces the slot in use; the last slot is never removed.
	if _, err := r2.ChangePassphrase(ctx, []byte("third")); err != nil {
		t.Fatal(err)
	}
	slots, cur, _ := r2.KeySlots()
	if len(slots) != 1 || cur != slots[0].ID || cur == second.ID {
		t.Fatal(slots, cur)
	}
	withPassphrase(t, "third")
	r3, err := repo.Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	r3.Close()
}

// TestEncryptedDirectRead: a local encrypted repository's chains are read
// and decrypted in process (qcow2.OpenEncrypted, qemu.UnlockLUKS), the
// images qemu-nbd wrote included: restore and verify need no qemu-nbd.
func TestEncryptedDirectRead(t *testing.T) {
	r, b := encryptedChain(t)
	tools := *r.Tools
	tools.QemuNBD = "/nonexistent/qemu-nbd"
	r.Tools = &tools
	for _, p := range b.Points {
		restoreEqual(t, r, b, p.ID)
	}
	if _, err := r.Verify(context.Background(), repo.VerifyOptions{}); err != nil {
		t.Fatalf("verify without qemu-nbd: %v", err)
	}
}
