package qemu

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/qcow2"
)

// TestUnlockLUKS reads encrypted images directly (qcow2.OpenEncrypted
// with UnlockLUKS): one ImageWriter wrote and one qemu wrote (qemu-img
// create with its own iteration counts, data by qemu-io), whole and in
// pieces that are not whole sectors, equal to what was written. A wrong
// secret, a changed digest and another cipher are refused.
func TestUnlockLUKS(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	const size = 8 * mib
	secret := []byte("4f1c0e6a2b7d9e8f4f1c0e6a2b7d9e8f4f1c0e6a2b7d9e8f4f1c0e6a2b7d9e8f")
	tools := &Tools{Runner: LocalRunner{}, Secret: func(string) []byte { return secret }}
	want := make([]byte, size)
	rand.Read(want[1*mib : 3*mib])

	ours := filepath.Join(dir, "ours.qcow2")
	w, err := tools.NewImageWriter(ours, size, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteAt(want[1*mib:3*mib], 1*mib); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	theirs := filepath.Join(dir, "theirs.qcow2")
	sf := filepath.Join(dir, "secret")
	os.WriteFile(sf, secret, 0o600)
	raw := filepath.Join(dir, "raw")
	os.WriteFile(raw, want, 0o600)
	if out, err := exec.Command("qemu-img", "convert", "--object", "secret,id=s0,file="+sf, "-O", "qcow2",
		"-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100", raw, theirs).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}

	open := func(path string, secret []byte) (*qcow2.Image, error) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return qcow2.OpenEncrypted(f, func(h []byte) (qcow2.Decrypter, error) { return UnlockLUKS(h, secret) })
	}
	for _, p := range []string{ours, theirs} {
		im, err := open(p, secret)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		got := make([]byte, size)
		if err := (qcow2.Chain{im}).ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: read back differs (%v)", p, err)
		}
		for _, r := range [][2]int{{1*mib + 1, 1000}, {2*mib - 7, 300}, {3*mib - 100, 4096}} {
			piece := make([]byte, r[1])
			if err := (qcow2.Chain{im}).ReadAt(piece, uint64(r[0])); err != nil || !bytes.Equal(piece, want[r[0]:r[0]+r[1]]) {
				t.Fatalf("%s: %d bytes at %d differ (%v)", p, r[1], r[0], err)
			}
		}
		if _, err := open(p, []byte("another secret")); err == nil || !strings.Contains(err.Error(), "opens none") {
			t.Fatalf("%s with a wrong secret: %v", p, err)
		}
	}

	// A changed digest, another cipher: refused (the second for qemu).
	hdrOff := func(path string) int64 {
		f, _ := os.Open(path)
		defer f.Close()
		im, err := qcow2.OpenEncrypted(f, func([]byte) (qcow2.Decrypter, error) { return nil, nil })
		if err != nil {
			t.Fatal(err)
		}
		return int64(im.Header().CryptoOffset)
	}
	patch := func(name string, at int64, b []byte) string {
		p := filepath.Join(dir, name)
		data, _ := os.ReadFile(ours)
		copy(data[hdrOff(ours)+at:], b)
		os.WriteFile(p, data, 0o600)
		return p
	}
	if _, err := open(patch("digest.qcow2", 112, []byte{0xff}), secret); err == nil || !strings.Contains(err.Error(), "opens none") {
		t.Fatalf("a changed digest: %v", err)
	}
	if _, err := open(patch("cbc.qcow2", 40, []byte("cbc-essiv:sha256\x00")), secret); !errors.Is(err, ErrLUKSUnsupported) {
		t.Fatalf("another cipher mode: %v", err)
	}
	if _, err := open(patch("iter.qcow2", 208+4, []byte{0xff, 0xff, 0xff, 0xff}), secret); !errors.Is(err, ErrLUKSUnsupported) {
		t.Fatal(fmt.Sprint("a huge iteration count: ", err))
	}

	// A plain image where an encrypted one is expected: refused.
	plain := filepath.Join(dir, "plain.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", plain, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	if _, err := open(plain, secret); err == nil || !strings.Contains(err.Error(), "not encrypted") {
		t.Fatalf("a plain image opened as encrypted: %v", err)
	}

	// An image cut inside its LUKS header: qcow2.Bounds says so.
	cut := filepath.Join(dir, "cut.qcow2")
	data, _ := os.ReadFile(ours)
	os.WriteFile(cut, data[:hdrOff(ours)+4096], 0o600)
	f, _ := os.Open(cut)
	defer f.Close()
	h, err := qcow2.ReadHeader(func(off int64, n int) ([]byte, error) {
		b := make([]byte, n)
		k, _ := f.ReadAt(b, off)
		return b[:k], nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := qcow2.Bounds(f, h, uint64(hdrOff(ours)+4096)); err == nil || !strings.Contains(err.Error(), "encryption header") {
		t.Fatalf("Bounds of an image cut in its LUKS header: %v", err)
	}
}
