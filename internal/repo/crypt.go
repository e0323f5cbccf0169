package repo

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/scrypt"

	"github.com/sendense/capture/internal/diskdigest"
	"github.com/sendense/capture/internal/keyring"
)

// Encryption at rest (docs/repository.md, "Encryption"). An encrypted
// repository has a random 256-bit master key, stored only wrapped in key
// slots of sendense-repository.json (AES-256-GCM under a key derived from
// a passphrase with scrypt). From the master key, HKDF-SHA-256 derives:
//
//   - the LUKS secret of each image (info "sendense image <name>"): images
//     are qcow2 with qemu's LUKS encryption (AES-256-XTS);
//   - the metadata key (info "sendense metadata"): manifests, state.json
//     and the prune journal are sealed with AES-256-GCM, the file's
//     identity (a manifest's backup id) as associated data;
//   - the digest key (info "sendense digest"): chunk digests and the disk
//     digest are HMAC-SHA-256 under it (diskdigest.Keyed).
//
// Every reader and writer goes through Repo.readMeta/writeMeta (sealing)
// and Repo.digests (the digest function), decided once when the
// repository is opened.

// Encryption names.
const (
	EncryptionAES256 = "aes-256"
	imageCipher      = "qcow2-luks-aes-256-xts"
	metadataCipher   = "aes-256-gcm"
	digestFunction   = "hmac-sha256"
	keyDerivation    = "hkdf-sha256"
	slotKDF          = "scrypt"

	// scrypt parameters of new key slots: 128 MiB and about half a
	// second here (the slot records its own).
	scryptN = 1 << 17
	scryptR = 8
	scryptP = 1

	repoVersionEncrypted = 2
)

// Encryption is what sendense-repository.json says about an encrypted
// repository: the algorithms (fixed for version 2) and the key slots. It
// holds no secret: a slot's master key is sealed under its passphrase.
type Encryption struct {
	Algorithm     string    `json:"algorithm"`      // "aes-256"
	Images        string    `json:"images"`         // "qcow2-luks-aes-256-xts"
	Metadata      string    `json:"metadata"`       // "aes-256-gcm"
	Digests       string    `json:"digests"`        // "hmac-sha256"
	KeyDerivation string    `json:"key_derivation"` // "hkdf-sha256" (from the master key)
	Keys          []KeySlot `json:"keys"`
}

// KeySlot is the master key sealed under one passphrase.
type KeySlot struct {
	ID      string    `json:"id"` // 16 hex digits
	Created time.Time `json:"created"`
	KDF     string    `json:"kdf"` // "scrypt"
	N       int       `json:"n"`
	R       int       `json:"r"`
	P       int       `json:"p"`
	Salt    []byte    `json:"salt"`   // base64 in JSON
	Sealed  []byte    `json:"sealed"` // nonce, then AES-256-GCM of the master key
}

// ErrWrongPassphrase is a passphrase that opens no key slot.
var ErrWrongPassphrase = errors.New("wrong passphrase: it opens none of the repository's key slots")

// Passphrase gives the passphrase of the encrypted repository at
// location when it is opened, or created with EncryptNew. The program
// sets it once (cmd/sendense: --password-file, its variable, the
// configuration, a systemd credential); nil: encrypted repositories
// cannot be opened.
var Passphrase func(location string) ([]byte, error)

// KeyCache is how long the key that opened a key slot (scrypt's output
// for the passphrase) stays in the user's kernel keyring
// (internal/keyring), so that the commands run meanwhile skip scrypt;
// 0: not cached. The program sets it ([repository] key_cache; 5 minutes
// unless it says).
var KeyCache = 5 * time.Minute

// EncryptNew makes the repositories OpenOrInit creates encrypted
// ([repository] encryption = "aes-256").
var EncryptNew bool

// keys are an open repository's keys.
type keys struct {
	master  []byte
	meta    cipher.AEAD
	digests *diskdigest.Hash
	slot    string // the slot the passphrase opened
}

func derive(master []byte, info string) []byte {
	k, err := hkdf.Key(sha256.New, master, nil, info, 32)
	if err != nil {
		panic(err) // only for lengths hkdf refuses
	}
	return k
}

func newGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

func newKeys(master []byte, slot string) *keys {
	return &keys{
		master:  master,
		meta:    newGCM(derive(master, "sendense metadata")),
		digests: diskdigest.Keyed(derive(master, "sendense digest")),
		slot:    slot,
	}
}

// imageSecret is the LUKS secret of the image named name: 64 hex
// digits, the passphrase qemu's LUKS layer gets.
func (k *keys) imageSecret(name string) []byte {
	s := derive(k.master, "sendense image "+name)
	return []byte(hex.EncodeToString(s))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

func slotAD(id string) []byte { return []byte("sendense key slot " + id) }

// newSlot seals master under passphrase in a new slot.
func newSlot(master, passphrase []byte) (KeySlot, error) {
	if len(passphrase) == 0 {
		return KeySlot{}, errors.New("the passphrase is empty")
	}
	s := KeySlot{ID: hex.EncodeToString(randomBytes(8)), Created: time.Now().UTC().Truncate(time.Second),
		KDF: slotKDF, N: scryptN, R: scryptR, P: scryptP, Salt: randomBytes(32)}
	kek, err := scrypt.Key(passphrase, s.Salt, s.N, s.R, s.P, 32)
	if err != nil {
		return KeySlot{}, err
	}
	g := newGCM(kek)
	nonce := randomBytes(g.NonceSize())
	s.Sealed = g.Seal(nonce, nonce, master, slotAD(s.ID))
	s.cache(passphrase, kek)
	return s, nil
}

// open returns the master key if passphrase opens the slot.
func (s KeySlot) open(passphrase []byte) ([]byte, error) {
	switch {
	case s.KDF != slotKDF:
		return nil, fmt.Errorf("key slot %s: key derivation %q is not %q", s.ID, s.KDF, slotKDF)
	case s.N < 1<<14 || s.N > 1<<22 || s.N&(s.N-1) != 0 || s.R < 1 || s.R > 32 || s.P < 1 || s.P > 16 || len(s.Salt) < 16:
		// Bounds: a crafted slot must not make sendense spend gigabytes.
		return nil, fmt.Errorf("key slot %s: scrypt parameters N=%d r=%d p=%d (salt %d bytes) are out of bounds", s.ID, s.N, s.R, s.P, len(s.Salt))
	}
	if KeyCache > 0 {
		cache := s.cacheName(passphrase)
		if kek, ok := keyring.Get(cache); ok {
			if master, err := s.unseal(kek); err == nil {
				return master, nil
			}
			keyring.Forget(cache)
		}
	}
	kek, err := scrypt.Key(passphrase, s.Salt, s.N, s.R, s.P, 32)
	if err != nil {
		return nil, fmt.Errorf("key slot %s: %w", s.ID, err)
	}
	master, err := s.unseal(kek)
	if err == nil {
		s.cache(passphrase, kek)
	}
	return master, err
}

// cache keeps kek, which opens s, for KeyCache.
func (s KeySlot) cache(passphrase, kek []byte) {
	if KeyCache <= 0 {
		return
	}
	if err := keyring.Put(s.cacheName(passphrase), kek, KeyCache); err != nil {
		slog.Debug("the key slot's key is not cached", "slot", s.ID, "err", err)
	}
}

// unseal opens the slot's master key with kek.
func (s KeySlot) unseal(kek []byte) ([]byte, error) {
	g := newGCM(kek)
	if len(s.Sealed) < g.NonceSize() {
		return nil, fmt.Errorf("key slot %s is truncated", s.ID)
	}
	master, err := g.Open(nil, s.Sealed[:g.NonceSize()], s.Sealed[g.NonceSize():], slotAD(s.ID))
	if err != nil || len(master) != 32 {
		return nil, ErrWrongPassphrase
	}
	return master, nil
}

// cacheName is the name under which the key that opens s for passphrase
// is cached: a hash of both, so that another passphrase, or the slot
// after 'key passwd', finds nothing.
func (s KeySlot) cacheName(passphrase []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "sendense key slot %s scrypt %d %d %d %d:", s.ID, s.N, s.R, s.P, len(s.Salt))
	h.Write(s.Salt)
	h.Write(passphrase)
	return "sendense:" + hex.EncodeToString(h.Sum(nil))
}

// checkEncryption validates what sendense-repository.json says.
func (e *Encryption) check() error {
	switch {
	case e.Algorithm != EncryptionAES256 || e.Images != imageCipher || e.Metadata != metadataCipher ||
		e.Digests != digestFunction || e.KeyDerivation != keyDerivation:
		return fmt.Errorf("encryption %s/%s/%s/%s/%s is not what this sendense writes (%s/%s/%s/%s/%s)",
			e.Algorithm, e.Images, e.Metadata, e.Digests, e.KeyDerivation,
			EncryptionAES256, imageCipher, metadataCipher, digestFunction, keyDerivation)
	case len(e.Keys) == 0:
		return errors.New("encrypted, but it has no key slot: restore sendense-repository.json from a copy")
	}
	return nil
}

func newEncryption(passphrase []byte) (*Encryption, []byte, error) {
	master := randomBytes(32)
	s, err := newSlot(master, passphrase)
	if err != nil {
		return nil, nil, err
	}
	return &Encryption{Algorithm: EncryptionAES256, Images: imageCipher, Metadata: metadataCipher,
		Digests: digestFunction, KeyDerivation: keyDerivation, Keys: []KeySlot{s}}, master, nil
}

// unlock opens the repository's keys with its passphrase (Passphrase).
func (r *Repo) unlock(e *Encryption) error {
	if err := e.check(); err != nil {
		return fmt.Errorf("%s is corrupt: %w", r.fs.Name()+filepath.Join(r.Dir, RepoFileName), err)
	}
	if Passphrase == nil {
		return fmt.Errorf("repository %s is encrypted: give its passphrase (--password-file, $SENDENSE_REPOSITORY_PASSWORD_FILE, [repository] password_file or password_credential)", r.Location())
	}
	pass, err := Passphrase(r.Location())
	if err != nil {
		return fmt.Errorf("repository %s is encrypted: %w", r.Location(), err)
	}
	defer clear(pass)
	for _, s := range e.Keys {
		master, err := s.open(pass)
		if errors.Is(err, ErrWrongPassphrase) {
			continue
		}
		if err != nil {
			return fmt.Errorf("repository %s: %w", r.Location(), err)
		}
		r.setKeys(newKeys(master, s.ID), e)
		return nil
	}
	return fmt.Errorf("repository %s: %w (nothing was read or changed; check --password-file, $SENDENSE_REPOSITORY_PASSWORD_FILE, [repository] password_file or password_credential)", r.Location(), ErrWrongPassphrase)
}

func (r *Repo) setKeys(k *keys, e *Encryption) {
	r.keys, r.enc, r.digests = k, e, k.digests
	t := *r.Tools
	t.Secret = r.imageSecretOf
	r.Tools = &t
}

// imageSecretOf is the LUKS secret of the image at path (the qemu
// tools' Secret): images are named by their final name, also while a
// prune writes them under a temporary one.
func (r *Repo) imageSecretOf(path string) []byte {
	name := filepath.Base(path)
	if s, ok := strings.CutPrefix(name, "."); ok {
		if s, ok = strings.CutSuffix(s, mergingSuffix); ok {
			name = s
		}
	}
	return r.keys.imageSecret(name)
}

// Encrypted says whether the repository is encrypted.
func (r *Repo) Encrypted() bool { return r.keys != nil }

// DigestHash is the function of chunk digests and disk digests in this
// repository (nil: SHA-256), for the copier (copier.Options.DigestHash).
func (r *Repo) DigestHash() *diskdigest.Hash { return r.digests }

// sealing: a sealed file is sealMagic, a nonce and the AES-256-GCM of
// the plain file, with the file's identity as associated data.
const sealMagic = "sendense-sealed-1\n"

// Associated data of sealed files.
func manifestAD(id string) string { return "manifest " + id }

const (
	stateAD   = "state"
	journalAD = "prune journal"
)

// readMeta reads the metadata file at path: plain in a plain repository,
// sealed (and opened with ad) in an encrypted one.
func (r *Repo) readMeta(path, ad string) ([]byte, error) {
	b, err := r.fs.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return r.unseal(b, ad)
}

func (r *Repo) unseal(b []byte, ad string) ([]byte, error) {
	sealed := bytes.HasPrefix(b, []byte(sealMagic))
	switch {
	case r.keys == nil && sealed:
		return nil, errors.New("the file is sealed (encrypted), but the repository is not encrypted")
	case r.keys == nil:
		return b, nil
	case !sealed:
		return nil, errors.New("the file is not sealed: in an encrypted repository sendense seals every manifest and state file, so this one was not written by it")
	}
	g := r.keys.meta
	b = b[len(sealMagic):]
	if len(b) < g.NonceSize() {
		return nil, errors.New("the sealed file is truncated")
	}
	plain, err := g.Open(nil, b[:g.NonceSize()], b[g.NonceSize():], []byte(ad))
	if err != nil {
		return nil, errors.New("the sealed file does not authenticate: it was changed, or belongs to another file or repository")
	}
	return plain, nil
}

// writeMeta replaces path with data atomically, sealed with ad in an
// encrypted repository.
func (r *Repo) writeMeta(path, ad string, data []byte) error {
	if r.keys != nil {
		g := r.keys.meta
		nonce := randomBytes(g.NonceSize())
		data = g.Seal(append([]byte(sealMagic), nonce...), nonce, data, []byte(ad))
	}
	return r.fs.WriteFileAtomic(path, data, 0o600)
}

// keysLockName serialises changes of the key slots.
const keysLockName = ".keys.lock"

// KeySlots returns the repository's key slots and the id of the one its
// passphrase opened.
func (r *Repo) KeySlots() ([]KeySlot, string, error) {
	if r.keys == nil {
		return nil, "", r.notEncrypted()
	}
	return append([]KeySlot(nil), r.enc.Keys...), r.keys.slot, nil
}

func (r *Repo) notEncrypted() error {
	return fmt.Errorf("repository %s is not encrypted: it has no keys (create an encrypted one with 'sendense init --encrypt')", r.Location())
}

// changeKeys rewrites sendense-repository.json with the slots change
// returns, under the keys lock, from the file as it is now (another
// process may have changed it).
func (r *Repo) changeKeys(ctx context.Context, change func([]KeySlot) ([]KeySlot, error)) error {
	if r.keys == nil {
		return r.notEncrypted()
	}
	l, err := r.fs.WaitLock(ctx, filepath.Join(r.Dir, keysLockName), true, "waiting for another change of the keys")
	if err != nil {
		return r.asReadOnly(fmt.Errorf("repository %s: locking the keys: %w", r.Location(), err))
	}
	defer l.Unlock()
	path := filepath.Join(r.Dir, RepoFileName)
	b, err := r.fs.ReadFile(path)
	if err != nil {
		return err
	}
	var rf repoFile
	if err := json.Unmarshal(b, &rf); err != nil || rf.Encryption == nil {
		return fmt.Errorf("%s changed under us and is no longer an encrypted repository's: nothing was changed", r.Location())
	}
	slots, err := change(append([]KeySlot(nil), rf.Encryption.Keys...))
	if err != nil {
		return err
	}
	if len(slots) == 0 {
		return errors.New("refusing to remove the last key slot: the repository could never be opened again")
	}
	rf.Encryption.Keys = slots
	out, _ := json.MarshalIndent(rf, "", "  ")
	if err := r.fs.WriteFileAtomic(path, append(out, '\n'), 0o600); err != nil {
		return r.asReadOnly(fmt.Errorf("writing %s: %w", path, err))
	}
	r.enc = rf.Encryption
	return nil
}

// AddKey adds a key slot opening with passphrase and returns it.
func (r *Repo) AddKey(ctx context.Context, passphrase []byte) (KeySlot, error) {
	if r.keys == nil {
		return KeySlot{}, r.notEncrypted()
	}
	s, err := newSlot(r.keys.master, passphrase)
	if err != nil {
		return KeySlot{}, err
	}
	return s, r.changeKeys(ctx, func(slots []KeySlot) ([]KeySlot, error) { return append(slots, s), nil })
}

// RemoveKey removes key slot id; the last slot, and the slot this
// repository was opened with, are refused.
func (r *Repo) RemoveKey(ctx context.Context, id string) error {
	if r.keys != nil && id == r.keys.slot {
		return fmt.Errorf("key slot %s is the one this passphrase opens: open the repository with another slot's passphrase to remove it, or use 'sendense key passwd' to replace it", id)
	}
	return r.changeKeys(ctx, func(slots []KeySlot) ([]KeySlot, error) {
		for i, s := range slots {
			if s.ID == id {
				return append(slots[:i], slots[i+1:]...), nil
			}
		}
		return nil, fmt.Errorf("no key slot %q in repository %s (see 'sendense key list')", id, r.Location())
	})
}

// ChangePassphrase replaces the slot this repository was opened with by
// a new one opening with passphrase, in one atomic write.
func (r *Repo) ChangePassphrase(ctx context.Context, passphrase []byte) (KeySlot, error) {
	if r.keys == nil {
		return KeySlot{}, r.notEncrypted()
	}
	s, err := newSlot(r.keys.master, passphrase)
	if err != nil {
		return KeySlot{}, err
	}
	old := r.keys.slot
	err = r.changeKeys(ctx, func(slots []KeySlot) ([]KeySlot, error) {
		for i, o := range slots {
			if o.ID == old {
				slots[i] = s
				return slots, nil
			}
		}
		return nil, fmt.Errorf("key slot %s was removed meanwhile: nothing was changed", old)
	})
	if err == nil {
		r.keys.slot = s.ID
	}
	return s, err
}

// ImageSecret is the LUKS secret of the image named name (an image file
// name of the repository, e.g. 20240501T120000Z-disk2000.qcow2): what
// opens it with plain qemu-img in an emergency (docs/repository.md).
func (r *Repo) ImageSecret(name string) ([]byte, error) {
	if r.keys == nil {
		return nil, r.notEncrypted()
	}
	if _, _, ok := parseImageName(name); !ok {
		return nil, fmt.Errorf("%q is not an image name of the repository (<backup-id>-disk<key>.qcow2)", name)
	}
	return r.keys.imageSecret(name), nil
}

// MarkerEncrypted says whether b, the content of a
// sendense-repository.json, is an encrypted repository's (offsite
// staging copies it to open the repository's files).
func MarkerEncrypted(b []byte) bool {
	var rf repoFile
	return json.Unmarshal(b, &rf) == nil && rf.Format == RepoFormat && rf.Encryption != nil
}
