// Package xts encrypts disk sectors with AES-256-XTS (IEEE 1619), the
// cipher of qemu's LUKS images ("aes", "xts-plain64"), through OpenSSL's
// libcrypto, which uses the CPU's AES instructions (AES-NI, VAES):
// several GB/s per core, where golang.org/x/crypto/xts, one AES block
// call at a time, does about 0.3 GB/s.
//
// Sectors are 512 bytes; the tweak of a sector is its number, 64-bit
// little-endian, zero-padded to 16 bytes ("plain64"), as in
// golang.org/x/crypto/xts and dm-crypt.
package xts

/*
#cgo pkg-config: libcrypto
#include <stdint.h>
#include <string.h>
#include <openssl/evp.h>

// sendense_xts encrypts (enc = 1) or decrypts (enc = 0) len bytes (a
// multiple of 512) from in to out, sector by sector from sector: 0 on
// success, -1 when libcrypto fails.
static int sendense_xts(int enc, const unsigned char *key, uint64_t sector,
                        const unsigned char *in, unsigned char *out, size_t len)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	unsigned char iv[16];
	int ret = -1, n;
	size_t off;

	if (ctx == NULL)
		return -1;
	if (EVP_CipherInit_ex(ctx, EVP_aes_256_xts(), NULL, key, NULL, enc) != 1)
		goto out;
	for (off = 0; off < len; off += 512, sector++) {
		memset(iv, 0, sizeof iv);
		for (n = 0; n < 8; n++)
			iv[n] = (unsigned char)(sector >> (8 * n));
		if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, enc) != 1 ||
		    EVP_CipherUpdate(ctx, out + off, &n, in + off, 512) != 1 || n != 512)
			goto out;
	}
	ret = 0;
out:
	EVP_CIPHER_CTX_free(ctx);
	return ret;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// SectorSize is the unit of encryption.
const SectorSize = 512

// KeySize is the key length of AES-256-XTS: two 256-bit AES keys.
const KeySize = 64

// Cipher is an AES-256-XTS key. It is safe for concurrent use.
type Cipher struct {
	key [KeySize]byte
}

// New returns the cipher of key (KeySize bytes). The two halves must
// differ (IEEE 1619-2018; libcrypto refuses equal halves).
func New(key []byte) (*Cipher, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("xts: the key is %d bytes, not %d", len(key), KeySize)
	}
	if string(key[:KeySize/2]) == string(key[KeySize/2:]) {
		return nil, errors.New("xts: the key's two halves are equal")
	}
	c := &Cipher{}
	copy(c.key[:], key)
	return c, nil
}

// Encrypt encrypts src into dst (which may be src), sector by sector
// from sector number sector. len(src) must be a multiple of SectorSize
// and dst at least as long.
func (c *Cipher) Encrypt(dst, src []byte, sector uint64) error { return c.crypt(1, dst, src, sector) }

// Decrypt reverses Encrypt.
func (c *Cipher) Decrypt(dst, src []byte, sector uint64) error { return c.crypt(0, dst, src, sector) }

func (c *Cipher) crypt(enc C.int, dst, src []byte, sector uint64) error {
	switch {
	case len(src)%SectorSize != 0:
		return fmt.Errorf("xts: %d bytes is not a whole number of %d-byte sectors", len(src), SectorSize)
	case len(dst) < len(src):
		return errors.New("xts: the output is shorter than the input")
	case len(src) == 0:
		return nil
	}
	// Neither slice holds Go pointers: cgo lets C read and write them
	// for the duration of the call.
	if C.sendense_xts(enc, (*C.uchar)(unsafe.Pointer(&c.key[0])), C.uint64_t(sector),
		(*C.uchar)(unsafe.Pointer(&src[0])), (*C.uchar)(unsafe.Pointer(&dst[0])), C.size_t(len(src))) != 0 {
		return errors.New("xts: libcrypto failed")
	}
	return nil
}
