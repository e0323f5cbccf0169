package qcow2

import (
	"encoding/binary"
	"fmt"
)

// maxL1 bounds the L1 tables Bounds reads (32 Mi entries: 2 PiB at 64 KiB
// clusters).
const maxL1 = 32 << 20

// Bounds checks that the image's metadata and data lie within its file of
// fileSize bytes: the L1 table, every L2 table it points to, and every
// data cluster they map. A truncated image passes a header check but
// reads zeroes where its clusters were: Bounds tells. Encrypted images are
// checked too (their tables are plain). It reads the L1 table and every
// L2 table once: about 1/8192 of the data at 64 KiB clusters.
func Bounds(f File, hdr *Header, fileSize uint64) error {
	cs := hdr.ClusterSize()
	if hdr.ClusterBits < 9 || hdr.ClusterBits > 21 {
		return fmt.Errorf("qcow2 cluster size 2^%d is not valid", hdr.ClusterBits)
	}
	within := func(what string, off, n uint64) error {
		if off+n < off || off+n > fileSize {
			return fmt.Errorf("the image is truncated: its %s at offset %d (+%d) lies beyond the end of the file (%d bytes)", what, off, n, fileSize)
		}
		return nil
	}
	entries := cs / 8
	need := ((hdr.Size+cs-1)/cs + entries - 1) / entries
	if uint64(hdr.L1Size) < need || hdr.L1Size > maxL1 {
		return fmt.Errorf("qcow2 L1 table of %d entries does not cover %d bytes", hdr.L1Size, hdr.Size)
	}
	if err := within("L1 table", hdr.L1TableOffset, 8*need); err != nil {
		return err
	}
	if hdr.CryptMethod != 0 {
		if err := within("encryption header", hdr.CryptoOffset, hdr.CryptoLength); err != nil {
			return err
		}
	}
	l1 := make([]byte, 8*need)
	if err := readFull(f, l1, hdr.L1TableOffset); err != nil {
		return fmt.Errorf("reading the qcow2 L1 table: %w", err)
	}
	l2 := make([]byte, cs)
	for i := uint64(0); i < need; i++ {
		off := binary.BigEndian.Uint64(l1[8*i:]) & offsetMask
		if off == 0 {
			continue
		}
		if err := within("L2 table", off, cs); err != nil {
			return err
		}
		if err := readFull(f, l2, off); err != nil {
			return fmt.Errorf("reading a qcow2 L2 table at %d: %w", off, err)
		}
		for j := uint64(0); j < entries; j++ {
			e := binary.BigEndian.Uint64(l2[8*j:])
			if e&(1<<62) != 0 || e&1 != 0 { // compressed (sendense never writes them) or zero
				continue
			}
			// A data cluster starts within the file; its end may lie beyond
			// (QEMU need not write a new cluster whole: the rest reads zeroes).
			if host := e & offsetMask; host != 0 && host >= fileSize {
				return fmt.Errorf("the image is truncated: a data cluster at offset %d starts beyond the end of the file (%d bytes)", host, fileSize)
			}
		}
	}
	return nil
}
