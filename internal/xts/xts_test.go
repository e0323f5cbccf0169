package xts

import (
	"bytes"
	"crypto/aes"
	"crypto/rand"
	"testing"

	"golang.org/x/crypto/xts"
)

// The reference is golang.org/x/crypto/xts (which qemu's LUKS layer and
// dm-crypt agree with: internal/qemu's tests open what both write).
func TestMatchesReference(t *testing.T) {
	key := make([]byte, KeySize)
	rand.Read(key)
	c, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, first := range []uint64{0, 1, 255, 256, 1<<32 + 7, 1<<63 + 3} {
		plain := make([]byte, 8*SectorSize)
		rand.Read(plain)
		want := make([]byte, len(plain))
		for s := 0; s < len(plain)/SectorSize; s++ {
			ref.Encrypt(want[s*SectorSize:(s+1)*SectorSize], plain[s*SectorSize:(s+1)*SectorSize], first+uint64(s))
		}
		got := make([]byte, len(plain))
		if err := c.Encrypt(got, plain, first); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("sector %d: ciphertext differs from golang.org/x/crypto/xts", first)
		}
		// In place, and back.
		if err := c.Decrypt(got, got, first); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("sector %d: decrypting does not give the plaintext back (%v)", first, err)
		}
	}
}

func TestRefuses(t *testing.T) {
	if _, err := New(make([]byte, 32)); err == nil {
		t.Error("a 32-byte key was accepted")
	}
	if _, err := New(make([]byte, KeySize)); err == nil {
		t.Error("a key with equal halves was accepted")
	}
	key := make([]byte, KeySize)
	rand.Read(key)
	c, _ := New(key)
	if err := c.Encrypt(make([]byte, 1024), make([]byte, 1000), 0); err == nil {
		t.Error("a partial sector was accepted")
	}
	if err := c.Encrypt(make([]byte, 512), make([]byte, 1024), 0); err == nil {
		t.Error("a short output was accepted")
	}
}

func BenchmarkEncrypt(b *testing.B) {
	key := make([]byte, KeySize)
	rand.Read(key)
	c, _ := New(key)
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		c.Encrypt(buf, buf, 12345)
	}
}
