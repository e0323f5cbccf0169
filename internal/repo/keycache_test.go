package repo

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/sendense/capture/internal/keyring"
)

// TestKeyCache: a slot's key is cached in the user keyring when the
// slot is made or opened, found again only with the same passphrase; a
// cached key that does not open the slot is replaced; with KeyCache 0
// nothing is stored or used.
func TestKeyCache(t *testing.T) {
	if err := keyring.Put("sendense-test:probe", []byte("x"), time.Second); err != nil {
		t.Skipf("no kernel keyring here: %v", err)
	}
	keyring.Forget("sendense-test:probe")
	old := KeyCache
	t.Cleanup(func() { KeyCache = old })
	KeyCache = time.Minute
	pass, wrong := []byte("right passphrase"), []byte("wrong passphrase")
	master := randomBytes(32)
	s, err := newSlot(master, pass)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keyring.Forget(s.cacheName(pass)); keyring.Forget(s.cacheName(wrong)) })
	if _, ok := keyring.Get(s.cacheName(pass)); !ok {
		t.Fatal("the new slot's key is not cached")
	}
	if got, err := s.open(pass); err != nil || !bytes.Equal(got, master) {
		t.Fatalf("open with the cached key: %v", err)
	}
	if _, err := s.open(wrong); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("a wrong passphrase: %v", err)
	}
	if _, ok := keyring.Get(s.cacheName(wrong)); ok {
		t.Fatal("a wrong passphrase's key was cached")
	}

	// A cached key that does not open the slot: scrypt, and the right
	// key cached.
	keyring.Put(s.cacheName(pass), make([]byte, 32), time.Minute)
	if got, err := s.open(pass); err != nil || !bytes.Equal(got, master) {
		t.Fatalf("open over a bad cached key: %v", err)
	}
	if k, ok := keyring.Get(s.cacheName(pass)); !ok || bytes.Equal(k, make([]byte, 32)) {
		t.Fatal("the bad cached key was not replaced")
	}

	// No cache: neither stored nor used.
	KeyCache = 0
	s2, err := newSlot(master, pass)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := keyring.Get(s2.cacheName(pass)); ok {
		keyring.Forget(s2.cacheName(pass))
		t.Fatal("cached with KeyCache 0")
	}
	keyring.Put(s2.cacheName(pass), make([]byte, 32), time.Minute)
	t.Cleanup(func() { keyring.Forget(s2.cacheName(pass)) })
	if got, err := s2.open(pass); err != nil || !bytes.Equal(got, master) {
		t.Fatalf("open without the cache: %v", err)
	}
	if k, _ := keyring.Get(s2.cacheName(pass)); !bytes.Equal(k, make([]byte, 32)) {
		t.Fatal("the cache was written with KeyCache 0")
	}
}
