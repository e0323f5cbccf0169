package qemu

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/pbkdf2"

	"github.com/sendense/capture/internal/xts"
)

// Encrypted images are created here, in Go, rather than by qemu-img
// create: qemu spends one to two and a half seconds of CPU per image
// calibrating PBKDF2 (twice, whatever encrypt.iter-time says), for
// secrets that are random 256-bit keys, which iterations do not
// strengthen. The image written is what qemu-img writes with luksCreate
// (less the optional feature name table): a qcow2 v3 image (64 KiB clusters, 16-bit refcounts) whose
// crypt method is LUKS, its LUKS1 header (aes, xts-plain64, sha256, a
// 64-byte volume key, 4000 anti-forensic stripes, key slot 0 active) in
// the clusters the qcow2 "full disk encryption header pointer" extension
// names, only with a fixed PBKDF2 iteration count (luksIterations) for
// both the volume key digest and the key slot. Any qemu opens it given
// the image's secret, as it opens the images it creates itself. The file
// is written through the Runner (FileCreator): locally, or over SFTP.

// luksIterations is the PBKDF2-SHA256 iteration count of the volume key
// digest and of key slot 0: the minimum qemu and cryptsetup create.
const luksIterations = 1000

// Layout constants: LUKS1 (cryptsetup's on-disk format 1.2) and the
// qcow2 image around it.
const (
	luksSector      = 512
	luksKeyBytes    = 64 // AES-256-XTS: two 256-bit keys
	luksStripes     = 4000
	luksSlots       = 8
	luksSaltLen     = 32
	luksDigestLen   = 20
	luksAlign       = 4096 // key material and payload alignment
	luksSlotEnabled = 0x00AC71F3
	luksSlotOff     = 0x0000DEAD

	qcowClusterBits = 16
	qcowCluster     = 1 << qcowClusterBits
	qcowL2Entries   = qcowCluster / 8
	qcowHeaderLen   = 112 // v3 header with the compression type, padded
	qcowCryptLUKS   = 2
	qcowExtBacking  = 0xe2792aca      // backing file format name
	qcowExtCrypto   = 0x0537be77      // full disk encryption header pointer
	qcowMaxBacking  = 1023            // qemu's limit on the backing file name
	qcowMaxSize     = 1 << 50         // 1 PiB: an L1 table well under qemu's 32 MiB
	qcowReftableOff = qcowCluster     // the one-cluster refcount table
	qcowRefblockOff = 2 * qcowCluster // its first refcount block
)

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }

// luksSlotArea is the size of one key slot's key material, aligned.
var luksSlotArea = alignUp(luksKeyBytes*luksStripes, luksAlign)

// luksHeaderLen is the LUKS header and all key slots' areas: the payload
// offset (qcow2 stores the data elsewhere, qemu still records it).
var luksHeaderLen = luksAlign + luksSlots*luksSlotArea

// luksHeader returns a new LUKS1 header unlocked by secret: its first
// luksAlign bytes (the header proper) and the key material of slot 0,
// which goes at offset luksAlign of the header.
func luksHeader(secret []byte) (hdr, material, volumeKey []byte, err error) {
	volumeKey = make([]byte, luksKeyBytes)
	digestSalt := make([]byte, luksSaltLen)
	slotSalt := make([]byte, luksSaltLen)
	uuid := make([]byte, 16)
	for _, b := range [][]byte{volumeKey, digestSalt, slotSalt, uuid} {
		if _, err := rand.Read(b); err != nil {
			return nil, nil, nil, err
		}
	}
	uuid[6] = uuid[6]&0x0f | 0x40 // version 4
	uuid[8] = uuid[8]&0x3f | 0x80 // RFC 4122 variant

	hdr = make([]byte, luksAlign)
	be := binary.BigEndian
	copy(hdr[0:], "LUKS\xba\xbe")
	be.PutUint16(hdr[6:], 1)
	copy(hdr[8:], "aes")
	copy(hdr[40:], "xts-plain64")
	copy(hdr[72:], "sha256")
	be.PutUint32(hdr[104:], uint32(luksHeaderLen/luksSector))
	be.PutUint32(hdr[108:], luksKeyBytes)
	copy(hdr[112:], pbkdf2.Key(volumeKey, digestSalt, luksIterations, luksDigestLen, sha256.New))
	copy(hdr[132:], digestSalt)
	be.PutUint32(hdr[164:], luksIterations)
	copy(hdr[168:], fmt.Sprintf("%x-%x-%x-%x-%x", uuid[0:4], uuid[4:6], uuid[6:8], uuid[8:10], uuid[10:16]))
	for i := range luksSlots {
		slot := hdr[208+48*i:]
		be.PutUint32(slot[0:], luksSlotOff)
		be.PutUint32(slot[40:], uint32((luksAlign+uint64(i)*luksSlotArea)/luksSector))
		be.PutUint32(slot[44:], luksStripes)
	}
	slot := hdr[208:]
	be.PutUint32(slot[0:], luksSlotEnabled)
	be.PutUint32(slot[4:], luksIterations)
	copy(slot[8:], slotSalt)

	// Slot 0's key material: the volume key split into stripes (AF-split,
	// SHA-256 diffusion), encrypted with the key derived from secret
	// (aes-xts-plain64, 512-byte sectors numbered from 0).
	material = make([]byte, alignUp(luksKeyBytes*luksStripes, luksSector))
	if err := afSplit(volumeKey, material[:luksKeyBytes*luksStripes]); err != nil {
		return nil, nil, nil, err
	}
	c, err := xts.New(pbkdf2.Key(secret, slotSalt, luksIterations, luksKeyBytes, sha256.New))
	if err != nil {
		return nil, nil, nil, err
	}
	if err := c.Encrypt(material, material, 0); err != nil {
		return nil, nil, nil, err
	}
	return hdr, material, volumeKey, nil
}

// afSplit fills out (len(key) × stripes bytes) with the anti-forensic
// split of key: stripes-1 random blocks, then the last block such that
// key = last XOR diffuse(... diffuse(diffuse(b0) XOR b1) ...).
func afSplit(key, out []byte) error {
	n := len(key)
	stripes := len(out) / n
	if _, err := rand.Read(out[:(stripes-1)*n]); err != nil {
		return err
	}
	d := make([]byte, n)
	for i := 0; i < stripes-1; i++ {
		for j := range d {
			d[j] ^= out[i*n+j]
		}
		afDiffuse(d)
	}
	last := out[(stripes-1)*n:]
	for j := range last {
		last[j] = d[j] ^ key[j]
	}
	return nil
}

// afDiffuse replaces each hash-sized piece i of b (the last one possibly
// shorter) with the leading bytes of SHA-256(big-endian uint32 i, piece).
func afDiffuse(b []byte) {
	var idx [4]byte
	for i, off := 0, 0; off < len(b); i, off = i+1, off+sha256.Size {
		end := min(off+sha256.Size, len(b))
		h := sha256.New()
		binary.BigEndian.PutUint32(idx[:], uint32(i))
		h.Write(idx[:])
		h.Write(b[off:end])
		copy(b[off:end], h.Sum(nil))
	}
}

// errLUKSLayout: the image is one luksImage does not lay out (qemu-img
// creates it instead).
var errLUKSLayout = errors.New("image layout not supported")

// FilePart is data at an offset of a file CreateFile writes.
type FilePart struct {
	Off  int64
	Data []byte
}

// FileCreator is implemented by a Runner that can write a new file where
// the tools run. CreateImage and Convert create encrypted images through
// it (luks.go); without it, qemu-img creates them.
type FileCreator interface {
	// CreateFile creates path, mode 0600, refusing an existing file: size
	// bytes, zero except for parts, fsynced. On error it removes the file
	// it created.
	CreateFile(path string, size int64, parts []FilePart) error
}

var _ FileCreator = LocalRunner{}

// CreateFile implements FileCreator.
func (LocalRunner) CreateFile(path string, size int64, parts []FilePart) error {
	f, err := createLocal(path, size, parts)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path) // ours: O_EXCL created it
	}
	return err
}

// createLocal creates path on this machine, mode 0600, refusing an
// existing file: size bytes, zero except for parts; it returns the file
// open for reading and writing. On error it removes the file it created.
func createLocal(path string, size int64, parts []FilePart) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	for _, p := range parts {
		if _, err = f.WriteAt(p.Data, p.Off); err != nil {
			break
		}
	}
	if err == nil {
		err = f.Truncate(size)
	}
	if err != nil {
		f.Close()
		os.Remove(path) // ours: O_EXCL created it
		return nil, err
	}
	return f, nil
}

// createLUKS creates the encrypted qcow2 image path (luksImage) through
// the runner, when it is a FileCreator.
func (t *Tools) createLUKS(path string, size uint64, backing string, secret []byte) error {
	fc, ok := t.runner().(FileCreator)
	if !ok {
		return errors.New("the runner cannot create files")
	}
	l, err := luksImage(size, backing, secret)
	if err != nil {
		return err
	}
	return fc.CreateFile(path, l.fileSize, l.parts)
}

// luksLayout is a new encrypted qcow2 image: the file's size and what
// is not zero in it, and what ImageWriter needs to fill it.
type luksLayout struct {
	fileSize  int64
	parts     []FilePart
	volumeKey []byte // the LUKS volume (master) key: AES-256-XTS
	l1Offset  uint64
	l1Size    uint64 // entries
}

// luksImage lays out an encrypted qcow2 image of size bytes, unlocked by
// secret, an overlay of backing when backing is not "". In 64 KiB
// clusters: the header (with the backing file format, the encryption
// header pointer and the backing file name), the refcount table, its one
// refcount block, the (empty) L1 table, the LUKS header.
func luksImage(size uint64, backing string, secret []byte) (*luksLayout, error) {
	if size == 0 || size%luksSector != 0 || size > qcowMaxSize || len(backing) > qcowMaxBacking {
		return nil, errLUKSLayout
	}
	l1Size := (size + qcowCluster*qcowL2Entries - 1) / (qcowCluster * qcowL2Entries)
	l1Clusters := alignUp(l1Size*8, qcowCluster) / qcowCluster
	cryptoClusters := alignUp(luksHeaderLen, qcowCluster) / qcowCluster
	clusters := 3 + l1Clusters + cryptoClusters
	if clusters > qcowCluster/2 { // one refcount block of 16-bit counts
		return nil, errLUKSLayout
	}
	l1Offset := uint64(3 * qcowCluster)
	cryptoOffset := (3 + l1Clusters) * qcowCluster

	be := binary.BigEndian
	head := make([]byte, qcowHeaderLen+16+32+len(backing))
	copy(head, "QFI\xfb")
	be.PutUint32(head[4:], 3)
	be.PutUint32(head[20:], qcowClusterBits)
	be.PutUint64(head[24:], size)
	be.PutUint32(head[32:], qcowCryptLUKS)
	be.PutUint32(head[36:], uint32(l1Size))
	be.PutUint64(head[40:], l1Offset)
	be.PutUint64(head[48:], qcowReftableOff)
	be.PutUint32(head[56:], 1)
	be.PutUint32(head[96:], 4) // refcount order: 16 bits
	be.PutUint32(head[100:], qcowHeaderLen)
	ext := head[qcowHeaderLen:]
	if backing != "" {
		be.PutUint32(ext[0:], qcowExtBacking)
		be.PutUint32(ext[4:], 5)
		copy(ext[8:], "qcow2")
		ext = ext[16:]
	}
	be.PutUint32(ext[0:], qcowExtCrypto)
	be.PutUint32(ext[4:], 16)
	be.PutUint64(ext[8:], cryptoOffset)
	be.PutUint64(ext[16:], luksHeaderLen)
	ext = ext[24+8:] // and the end of extensions (zeroes)
	if backing != "" {
		off := len(head) - len(ext)
		copy(ext, backing)
		be.PutUint64(head[8:], uint64(off))
		be.PutUint32(head[16:], uint32(len(backing)))
		head = head[:off+len(backing)]
	} else {
		head = head[:len(head)-len(ext)]
	}
	reftable := make([]byte, 8)
	be.PutUint64(reftable, qcowRefblockOff)
	refblock := make([]byte, 2*clusters)
	for i := range clusters {
		be.PutUint16(refblock[2*i:], 1)
	}

	hdr, material, volumeKey, err := luksHeader(secret)
	if err != nil {
		return nil, err
	}
	return &luksLayout{
		fileSize: int64(clusters * qcowCluster),
		parts: []FilePart{
			{0, head},
			{qcowReftableOff, reftable},
			{qcowRefblockOff, refblock},
			{int64(cryptoOffset), hdr},
			{int64(cryptoOffset + luksAlign), material},
		},
		volumeKey: volumeKey,
		l1Offset:  l1Offset,
		l1Size:    l1Size,
	}, nil
}

// luksMaxIterations bounds the PBKDF2 iteration counts UnlockLUKS
// accepts: a crafted header must not make it spend minutes.
const luksMaxIterations = 1 << 22

// ErrLUKSUnsupported is a LUKS header UnlockLUKS does not open (another
// cipher, hash, key size or version, iteration counts past its bounds):
// open the image with qemu instead.
var ErrLUKSUnsupported = errors.New("a LUKS header this reader does not open")

// LUKSCipher decrypts the data clusters of an encrypted qcow2 image: it
// is a qcow2.Decrypter.
type LUKSCipher struct{ c *xts.Cipher }

// Decrypt decrypts p, whole sectors read at offset host of the image's
// file (qcow2's LUKS encryption tweaks a sector with its offset in the
// file).
func (l *LUKSCipher) Decrypt(p []byte, host uint64) error {
	if host%luksSector != 0 {
		return fmt.Errorf("decrypting at offset %d: not a whole sector", host)
	}
	return l.c.Decrypt(p, p, host/luksSector)
}

// UnlockLUKS opens the LUKS1 header hdr (with its key material: the
// bytes qcow2's encryption header extension points at) with secret, as
// qemu's LUKS layer does: any active key slot whose key material,
// decrypted with the key PBKDF2 derives from secret and merged, is the
// volume key its digest names. Only what sendense and qemu write is
// read: aes, xts-plain64, sha256, a 64-byte key.
func UnlockLUKS(hdr, secret []byte) (*LUKSCipher, error) {
	be := binary.BigEndian
	cstr := func(b []byte) string {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return string(b)
	}
	if len(hdr) < luksAlign || string(hdr[:6]) != "LUKS\xba\xbe" {
		return nil, errors.New("the encryption header is not a LUKS header")
	}
	if v := be.Uint16(hdr[6:]); v != 1 || cstr(hdr[8:40]) != "aes" || cstr(hdr[40:72]) != "xts-plain64" ||
		cstr(hdr[72:104]) != "sha256" || be.Uint32(hdr[108:]) != luksKeyBytes {
		return nil, fmt.Errorf("%w (version %d, %s-%s, %s, %d-byte key)", ErrLUKSUnsupported, v,
			cstr(hdr[8:40]), cstr(hdr[40:72]), cstr(hdr[72:104]), be.Uint32(hdr[108:]))
	}
	digest, digestSalt, digestIter := hdr[112:132], hdr[132:164], be.Uint32(hdr[164:])
	if digestIter == 0 || digestIter > luksMaxIterations {
		return nil, fmt.Errorf("%w (%d digest iterations)", ErrLUKSUnsupported, digestIter)
	}
	for i := range luksSlots {
		slot := hdr[208+48*i:]
		if be.Uint32(slot) != luksSlotEnabled {
			continue
		}
		iter, salt := be.Uint32(slot[4:]), slot[8:40]
		off, stripes := uint64(be.Uint32(slot[40:]))*luksSector, uint64(be.Uint32(slot[44:]))
		if iter == 0 || iter > luksMaxIterations || stripes == 0 || stripes > luksStripes {
			return nil, fmt.Errorf("%w (key slot %d: %d iterations, %d stripes)", ErrLUKSUnsupported, i, iter, stripes)
		}
		n := alignUp(luksKeyBytes*stripes, luksSector)
		if off < luksAlign || off > uint64(len(hdr)) || n > uint64(len(hdr))-off {
			return nil, fmt.Errorf("LUKS key slot %d: its key material lies outside the header", i)
		}
		material := bytes.Clone(hdr[off : off+n])
		c, err := xts.New(pbkdf2.Key(secret, salt, int(iter), luksKeyBytes, sha256.New))
		if err != nil {
			return nil, err
		}
		if err := c.Decrypt(material, material, 0); err != nil {
			return nil, err
		}
		key := afMerge(material[:luksKeyBytes*stripes], luksKeyBytes)
		if subtle.ConstantTimeCompare(pbkdf2.Key(key, digestSalt, int(digestIter), luksDigestLen, sha256.New), digest) == 1 {
			vc, err := xts.New(key)
			clear(key)
			if err != nil {
				return nil, err
			}
			return &LUKSCipher{vc}, nil
		}
	}
	return nil, errors.New("the image's secret opens none of its LUKS key slots")
}

// afMerge reverses afSplit: the n-byte key split into len(b)/n stripes.
func afMerge(b []byte, n int) []byte {
	d := make([]byte, n)
	stripes := len(b) / n
	for i := 0; i < stripes-1; i++ {
		for j := range d {
			d[j] ^= b[i*n+j]
		}
		afDiffuse(d)
	}
	for j := range d {
		d[j] ^= b[(stripes-1)*n+j]
	}
	return d
}
