package keyring

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"
)

func TestPutGetForget(t *testing.T) {
	b := make([]byte, 8)
	rand.Read(b)
	desc := "sendense-test:" + hex.EncodeToString(b)
	if _, ok := Get(desc); ok {
		t.Fatal("a key that was never stored was found")
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	if err := Put(desc, secret, 2*time.Second); err != nil {
		t.Skipf("no kernel keyring here: %v", err)
	}
	got, ok := Get(desc)
	if !ok || !bytes.Equal(got, secret) {
		t.Fatalf("Get = %q, %v", got, ok)
	}
	Forget(desc)
	if _, ok := Get(desc); ok {
		t.Fatal("a forgotten key was found")
	}
	if err := Put(desc, secret, time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, ok := Get(desc); ok {
		t.Fatal("a key was found after its timeout")
	}
	if err := Put(desc, secret, 0); err == nil {
		t.Fatal("a zero timeout was accepted")
	}
}
