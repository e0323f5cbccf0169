// Package keyring keeps short-lived secrets in the Linux kernel's user
// keyring (keyctl(2), keyrings(7)): in kernel memory, never on disk,
// readable only by processes of the same user, removed by the kernel
// when their timeout expires. sendense caches there the key that opens a
// repository's key slot, so that the memory-hard derivation from the
// passphrase runs once per repository and timeout, not once per command
// (docs/repository.md, "Key cache").
package keyring

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// perm: possessor and user may view, read, write, search, link and set
// attributes; group and others nothing.
const perm = 0x3f3f0000

// Get returns the payload of the key named desc in the user keyring, or
// false when there is none (expired, never stored, or no keyring).
func Get(desc string) ([]byte, bool) {
	id, err := unix.KeyctlSearch(unix.KEY_SPEC_USER_KEYRING, "user", desc, 0)
	if err != nil {
		return nil, false
	}
	buf := make([]byte, 256)
	n, err := unix.KeyctlBuffer(unix.KEYCTL_READ, id, buf, 0)
	if err != nil || n > len(buf) {
		clear(buf)
		return nil, false
	}
	return buf[:n], true
}

// Put stores payload as the key named desc in the user keyring for ttl
// (at least a second), replacing one of that name.
func Put(desc string, payload []byte, ttl time.Duration) error {
	if ttl < time.Second {
		return errors.New("keyring: a timeout under a second")
	}
	id, err := unix.AddKey("user", desc, payload, unix.KEY_SPEC_USER_KEYRING)
	if err != nil {
		return err
	}
	if _, err := unix.KeyctlInt(unix.KEYCTL_SET_TIMEOUT, id, int(ttl/time.Second), 0, 0); err != nil {
		Forget(desc)
		return err
	}
	if err := unix.KeyctlSetperm(id, perm); err != nil {
		Forget(desc)
		return err
	}
	return nil
}

// Forget removes the key named desc, if any.
func Forget(desc string) {
	if id, err := unix.KeyctlSearch(unix.KEY_SPEC_USER_KEYRING, "user", desc, 0); err == nil {
		unix.KeyctlInt(unix.KEYCTL_UNLINK, id, unix.KEY_SPEC_USER_KEYRING, 0, 0)
		unix.KeyctlInt(unix.KEYCTL_INVALIDATE, id, 0, 0, 0)
	}
}
