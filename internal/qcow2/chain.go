package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrUnsupported is an image using a part of the format Chain does not
// read (compressed clusters, extended L2 entries, a compression type,
// mixed cluster sizes): read it with QEMU instead.
var ErrUnsupported = errors.New("a qcow2 feature this reader does not read")

// File is what an image is read from.
type File interface {
	io.ReaderAt
}

// CryptLUKS is the crypt method of images encrypted with LUKS.
const CryptLUKS = 2

// Decrypter decrypts what was read from an encrypted image's data
// clusters: whole 512-byte sectors, read at offset host of the file (in
// qcow2's LUKS encryption a sector's tweak is its offset in the file).
type Decrypter interface {
	Decrypt(p []byte, host uint64) error
}

// maxCryptoHeader bounds the encryption header read for Unlock (a LUKS1
// header with eight slots of 4000 stripes of a 64-byte key is 2 MiB).
const maxCryptoHeader = 16 << 20

// Image is one qcow2 image opened for reading its own clusters.
type Image struct {
	f    File
	dec  Decrypter // encrypted images
	hdr  *Header
	l1   []uint64
	bits uint32

	mu  sync.Mutex
	l2s map[uint64][]uint64 // L2 tables by offset
}

// Open reads the header and the L1 table of the image f, which must not
// be encrypted.
func Open(f File) (*Image, error) { return openImage(f, nil) }

// OpenEncrypted is Open for an image that must be encrypted with LUKS
// (the caller says so, not the image's header): unlock gets the
// encryption header (the bytes the header extension points at) and
// returns what decrypts the image's clusters. An image that is not
// encrypted is refused.
func OpenEncrypted(f File, unlock func(header []byte) (Decrypter, error)) (*Image, error) {
	if unlock == nil {
		return nil, errors.New("qcow2: OpenEncrypted without an unlock function")
	}
	return openImage(f, unlock)
}

// openImage reads the header and the L1 table of the image f: encrypted when
// unlock is not nil, else not.
func openImage(f File, unlock func(header []byte) (Decrypter, error)) (*Image, error) {
	hdr, err := ReadHeader(func(off int64, n int) ([]byte, error) {
		b := make([]byte, n)
		k, err := f.ReadAt(b, off)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return b[:k], err
	})
	if err != nil {
		return nil, err
	}
	switch {
	case hdr.IncompatibleFeatures&^(IncompatDirty|IncompatCorrupt) != 0:
		return nil, fmt.Errorf("%w (incompatible features %#x)", ErrUnsupported, hdr.IncompatibleFeatures)
	case hdr.CryptMethod == 0 && unlock != nil:
		return nil, errors.New("the image is not encrypted")
	case hdr.CryptMethod != 0 && (unlock == nil || hdr.CryptMethod != CryptLUKS):
		return nil, fmt.Errorf("%w (encryption)", ErrUnsupported)
	case hdr.ExternalData():
		return nil, fmt.Errorf("%w (an external data file)", ErrUnsupported)
	}
	im := &Image{f: f, hdr: hdr, bits: hdr.ClusterBits, l2s: map[uint64][]uint64{}}
	if hdr.CryptMethod == CryptLUKS {
		if hdr.CryptoLength == 0 || hdr.CryptoLength > maxCryptoHeader {
			return nil, fmt.Errorf("qcow2 encryption header of %d bytes", hdr.CryptoLength)
		}
		b := make([]byte, hdr.CryptoLength)
		if n, err := f.ReadAt(b, int64(hdr.CryptoOffset)); n < len(b) {
			return nil, fmt.Errorf("reading the qcow2 encryption header: %d of %d bytes: %v", n, len(b), err)
		}
		if im.dec, err = unlock(b); err != nil {
			return nil, err
		}
	}
	clusters := (hdr.Size + im.clusterSize() - 1) >> im.bits
	need := (clusters + im.l2Entries() - 1) / im.l2Entries()
	if uint64(hdr.L1Size) < need || hdr.L1Size > 32<<20 {
		return nil, fmt.Errorf("qcow2 L1 table of %d entries does not cover %d bytes", hdr.L1Size, hdr.Size)
	}
	b := make([]byte, 8*need)
	if err := readFull(f, b, hdr.L1TableOffset); err != nil {
		return nil, fmt.Errorf("reading the qcow2 L1 table: %w", err)
	}
	im.l1 = make([]uint64, need)
	for i := range im.l1 {
		im.l1[i] = binary.BigEndian.Uint64(b[8*i:])
	}
	return im, nil
}

// readDecrypted reads len(p) bytes at host and decrypts them: the
// sectors around them when they are not whole sectors.
func (im *Image) readDecrypted(p []byte, host uint64) error {
	const sector = 512
	start, end := host&^(sector-1), (host+uint64(len(p))+sector-1)&^(sector-1)
	b := p
	if start != host || end != host+uint64(len(p)) {
		b = make([]byte, end-start)
	}
	if err := readFull(im.f, b, start); err != nil {
		return err
	}
	if err := im.dec.Decrypt(b, start); err != nil {
		return err
	}
	if &b[0] != &p[0] {
		copy(p, b[host-start:])
	}
	return nil
}

// readFull reads len(b) bytes at off; beyond the end of the file it reads
// zeroes, as QEMU does (a truncated image reads as unallocated there).
func readFull(f File, b []byte, off uint64) error {
	n, err := f.ReadAt(b, int64(off))
	if errors.Is(err, io.EOF) {
		clear(b[n:])
		return nil
	}
	return err
}

// Header is the image's header.
func (im *Image) Header() *Header { return im.hdr }

func (im *Image) clusterSize() uint64 { return 1 << im.bits }
func (im *Image) l2Entries() uint64   { return im.clusterSize() / 8 }

// Cluster states.
const (
	unallocated = iota // read from the backing file
	zero               // reads as zeroes
	data               // at host offset
)

const offsetMask = 0x00fffffffffffe00

// lookup says what guest cluster c of the image holds.
func (im *Image) lookup(c uint64) (state int, host uint64, err error) {
	l2off := im.l1[c/im.l2Entries()] & offsetMask
	if l2off == 0 {
		return unallocated, 0, nil
	}
	l2, err := im.l2(l2off)
	if err != nil {
		return 0, 0, err
	}
	e := l2[c%im.l2Entries()]
	switch {
	case e&(1<<62) != 0:
		return 0, 0, fmt.Errorf("%w (a compressed cluster)", ErrUnsupported)
	case e&1 != 0:
		return zero, 0, nil
	case e&offsetMask == 0:
		return unallocated, 0, nil
	}
	return data, e & offsetMask, nil
}

// l2 returns the L2 table at off.
func (im *Image) l2(off uint64) ([]uint64, error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if t := im.l2s[off]; t != nil {
		return t, nil
	}
	b := make([]byte, im.clusterSize())
	if err := readFull(im.f, b, off); err != nil {
		return nil, fmt.Errorf("reading a qcow2 L2 table at %d: %w", off, err)
	}
	t := make([]uint64, im.l2Entries())
	for i := range t {
		t[i] = binary.BigEndian.Uint64(b[8*i:])
	}
	im.l2s[off] = t
	return t, nil
}

// Chain is a chain of images, top first, each the backing file of the
// one before: the last one's unallocated clusters read as zeroes. All
// must have the same cluster size and virtual size.
type Chain []*Image

// Check says whether the chain can be read.
func (c Chain) Check() error {
	if len(c) == 0 {
		return errors.New("an empty chain")
	}
	for _, im := range c[1:] {
		if im.bits != c[0].bits {
			return fmt.Errorf("%w (images of different cluster sizes)", ErrUnsupported)
		}
		if im.hdr.Size != c[0].hdr.Size {
			return fmt.Errorf("the chain's images have different sizes (%d, %d)", c[0].hdr.Size, im.hdr.Size)
		}
	}
	return nil
}

// Size is the virtual size.
func (c Chain) Size() uint64 { return c[0].hdr.Size }

// resolve says what cluster n of the chain reads: data of image i at
// host, or zeroes (i < 0).
func (c Chain) resolve(n uint64) (i int, host uint64, err error) {
	for i, im := range c {
		st, host, err := im.lookup(n)
		if err != nil {
			return 0, 0, err
		}
		switch st {
		case data:
			return i, host, nil
		case zero:
			return -1, 0, nil
		}
	}
	return -1, 0, nil
}

// Extent is a range of the chain: data, or zeroes.
type Extent struct {
	Offset, Length uint64
	Data           bool
}

// Map returns the extents of the chain in order, covering its size.
func (c Chain) Map() ([]Extent, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	size, cs := c.Size(), c[0].clusterSize()
	var out []Extent
	for n := uint64(0); n*cs < size; n++ {
		i, _, err := c.resolve(n)
		if err != nil {
			return nil, err
		}
		off := n * cs
		l := min(cs, size-off)
		if k := len(out); k > 0 && out[k-1].Data == (i >= 0) {
			out[k-1].Length += l
			continue
		}
		out = append(out, Extent{Offset: off, Length: l, Data: i >= 0})
	}
	return out, nil
}

// ReadAt reads len(p) bytes at off (within the size): each cluster from
// the topmost image that holds it, zeroes where none does. Reads of a
// cluster beyond the end of its file read zeroes, as QEMU's do. Safe for
// concurrent use.
func (c Chain) ReadAt(p []byte, off uint64) error {
	if off+uint64(len(p)) > c.Size() || off+uint64(len(p)) < off {
		return fmt.Errorf("read of %d bytes at %d beyond the size %d", len(p), off, c.Size())
	}
	cs := c[0].clusterSize()
	// Consecutive clusters stored one after the other in the same file
	// are read with one call.
	var run struct {
		i    int
		host uint64
		p    []byte
	}
	run.i = -1
	flush := func() error {
		if run.i < 0 || len(run.p) == 0 {
			return nil
		}
		im := c[run.i]
		var err error
		if im.dec != nil {
			err = im.readDecrypted(run.p, run.host)
		} else {
			err = readFull(im.f, run.p, run.host)
		}
		run.i, run.p = -1, nil
		return err
	}
	for len(p) > 0 {
		in := off & (cs - 1)
		l := min(uint64(len(p)), cs-in)
		i, host, err := c.resolve(off >> c[0].bits)
		if err != nil {
			return err
		}
		if i >= 0 && i == run.i && run.host+uint64(len(run.p)) == host+in {
			run.p = run.p[:len(run.p)+int(l)]
		} else {
			if err := flush(); err != nil {
				return err
			}
			if i < 0 {
				clear(p[:l])
			} else {
				run.i, run.host, run.p = i, host+in, p[:l]
			}
		}
		p, off = p[l:], off+l
	}
	return flush()
}
