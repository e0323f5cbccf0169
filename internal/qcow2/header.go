package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Package qcow2 reads qcow2 images (docs/interop/qcow2.txt in the QEMU
// sources) without QEMU: the header, so that what an image would make
// QEMU open besides itself (a backing file, an external data file) is
// known before any QEMU tool sees it, and the data of a chain of images
// of the subset of the format sendense writes (Chain).

// qcow2 header constants.
const (
	qcow2Magic = 0x514649fb // "QFI\xfb"

	// Incompatible feature bits.
	IncompatDirty       = 1 << 0
	IncompatCorrupt     = 1 << 1
	IncompatDataFile    = 1 << 2
	IncompatCompression = 1 << 3 // a compression type other than zlib
	IncompatExtendedL2  = 1 << 4

	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extDataFile      = 0x44415441
	extCrypto        = 0x0537be77 // full disk encryption header pointer

	// HeaderReadSize is what ReadHeader reads first; more only when the
	// header says its parts lie beyond (clusters larger than 64 KiB).
	HeaderReadSize = 64 << 10
	maxClusterBits = 21 // 2 MiB, QEMU's largest cluster
	minClusterBits = 9
)

// Header is what a qcow2 image's header says.
type Header struct {
	Version     uint32
	ClusterBits uint32
	Size        uint64 // virtual size in bytes
	CryptMethod uint32 // 0: not encrypted
	// BackingFile is the backing file name as stored ("" for none) and
	// BackingFormat the format stored with it ("" when not recorded).
	BackingFile   string
	BackingFormat string
	// DataFile is the name of the external data file ("" for none).
	DataFile             string
	IncompatibleFeatures uint64
	// CryptoOffset and CryptoLength locate the encryption header (LUKS)
	// in the file, when the header extension says (0, 0 otherwise).
	CryptoOffset, CryptoLength uint64
	L1Size                     uint32 // L1 table entries
	L1TableOffset              uint64
}

// ClusterSize is 1 << ClusterBits.
func (h *Header) ClusterSize() uint64 { return 1 << h.ClusterBits }

// Corrupt says whether QEMU marked the image corrupt.
func (h *Header) Corrupt() bool { return h.IncompatibleFeatures&IncompatCorrupt != 0 }

// ExternalData says whether the image keeps its data in another file.
func (h *Header) ExternalData() bool {
	return h.IncompatibleFeatures&IncompatDataFile != 0 || h.DataFile != ""
}

// ErrNotQcow2 says that a file is not a qcow2 image.
var ErrNotQcow2 = errors.New("not a qcow2 image")

var errTruncated = errors.New("the qcow2 header is truncated")

// ReadHeader reads and parses the header of the qcow2 image that readAt
// reads (readAt(off, n) returns at most n bytes at off; fewer at the end
// of the file).
func ReadHeader(readAt func(off int64, n int) ([]byte, error)) (*Header, error) {
	b, err := readAt(0, HeaderReadSize)
	if err != nil {
		return nil, err
	}
	h, need, err := parseHeader(b)
	if err == nil || need <= len(b) || len(b) < HeaderReadSize {
		return h, err
	}
	// Parts of the header lie beyond the first 64 KiB (within the first
	// cluster, as QEMU requires).
	if b, err = readAt(0, need); err != nil {
		return nil, err
	}
	h, _, err = parseHeader(b)
	return h, err
}

// parseHeader parses b, the beginning of an image. When b is too short
// for the header's backing file name or extensions, need is the length
// needed (never more than one cluster).
func parseHeader(b []byte) (h *Header, need int, err error) {
	be := binary.BigEndian
	if len(b) < 72 || be.Uint32(b) != qcow2Magic {
		return nil, 0, ErrNotQcow2
	}
	h = &Header{
		Version:       be.Uint32(b[4:]),
		ClusterBits:   be.Uint32(b[20:]),
		Size:          be.Uint64(b[24:]),
		CryptMethod:   be.Uint32(b[32:]),
		L1Size:        be.Uint32(b[36:]),
		L1TableOffset: be.Uint64(b[40:]),
	}
	if h.Version != 2 && h.Version != 3 {
		return nil, 0, fmt.Errorf("qcow2 version %d is not supported", h.Version)
	}
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, 0, fmt.Errorf("qcow2 cluster size 2^%d is not valid", h.ClusterBits)
	}
	cluster := uint64(1) << h.ClusterBits
	backingOff, backingLen := be.Uint64(b[8:]), uint64(be.Uint32(b[16:]))
	extOff := uint64(72)
	if h.Version == 3 {
		if len(b) < 104 {
			return nil, 0, errTruncated
		}
		h.IncompatibleFeatures = be.Uint64(b[72:])
		hl := uint64(be.Uint32(b[100:]))
		if hl < 104 || hl > cluster {
			return nil, 0, fmt.Errorf("qcow2 header length %d is not valid", hl)
		}
		extOff = hl
	}
	if backingOff != 0 {
		if backingLen > 1023 || backingOff > cluster || backingOff+backingLen > cluster {
			return nil, 0, errors.New("qcow2 backing file name lies outside the first cluster")
		}
		if end := backingOff + backingLen; end > uint64(len(b)) {
			return h, int(cluster), errTruncated
		}
		h.BackingFile = string(b[backingOff : backingOff+backingLen])
	}
	// Header extensions, up to the end marker, within the first cluster.
	for off := extOff; ; {
		if off+8 > cluster {
			return nil, 0, errors.New("qcow2 header extensions run past the first cluster")
		}
		if off+8 > uint64(len(b)) {
			return h, int(cluster), errTruncated
		}
		typ, n := be.Uint32(b[off:]), uint64(be.Uint32(b[off+4:]))
		if typ == extEnd {
			break
		}
		data := off + 8
		if data+n > cluster {
			return nil, 0, errors.New("qcow2 header extension runs past the first cluster")
		}
		if data+n > uint64(len(b)) {
			return h, int(cluster), errTruncated
		}
		switch typ {
		case extBackingFormat:
			h.BackingFormat = string(b[data : data+n])
		case extDataFile:
			h.DataFile = string(b[data : data+n])
			if h.DataFile == "" {
				h.DataFile = "(empty name)"
			}
		case extCrypto:
			if n != 16 {
				return nil, 0, fmt.Errorf("qcow2 encryption header extension of %d bytes, not 16", n)
			}
			h.CryptoOffset, h.CryptoLength = be.Uint64(b[data:]), be.Uint64(b[data+8:])
		}
		off = data + (n+7)&^7
	}
	return h, 0, nil
}
