package lab

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/sendense/capture/internal/extent"
)

// allocatedAreas lists the allocated byte ranges of a file with
// SEEK_DATA/SEEK_HOLE.
func allocatedAreas(path string) (extent.List, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	fd := int(f.Fd())
	var out extent.List
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("SEEK_DATA in %s: %w", path, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE in %s: %w", path, err)
		}
		out = append(out, extent.Extent{Offset: uint64(data), Length: uint64(hole - data)})
		off = hole
	}
	return out, nil
}

// sparseCopy copies src to dst (created or truncated) keeping holes: only
// the allocated areas of src are copied, with copy_file_range where the
// kernel allows it.
func sparseCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	areas, err := allocatedAreas(src)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := out.Truncate(st.Size()); err != nil {
		out.Close()
		return err
	}
	for _, a := range areas {
		if err := copyRange(in, out, int64(a.Offset), int64(a.Length)); err != nil {
			out.Close()
			return fmt.Errorf("copying %s to %s: %w", src, dst, err)
		}
	}
	return out.Close()
}

func copyRange(in, out *os.File, off, n int64) error {
	roff, woff := off, off
	for n > 0 {
		c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				_, err = io.Copy(io.NewOffsetWriter(out, woff), io.NewSectionReader(in, roff, n))
				return err
			}
			return err
		}
		if c == 0 {
			return io.ErrUnexpectedEOF
		}
		n -= int64(c)
	}
	return nil
}

// freeze makes frozen hold d's current content, for a snapshot: a sparse
// copy, or with link a hard link to the flat file (Options.SnapshotLinks),
// which the next write through the lab undoes (unshare). Where links are
// not possible the content is copied.
func freeze(d *diskTrack, frozen string, link bool) error {
	if link {
		if err := os.Link(d.flat, frozen); err == nil {
			d.shared = true
			return nil
		}
	}
	return sparseCopy(d.flat, frozen)
}

// unshare gives d a flat file of its own when snapshots share it, before
// the guest writes: a sparse copy renamed over it, so every frozen file
// keeps the content it had. Readers that have the flat file open keep
// reading the content of before the write.
func unshare(d *diskTrack) error {
	if !d.shared {
		return nil
	}
	tmp := d.flat + ".unshare"
	if err := sparseCopy(d.flat, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copying the disk away from its snapshots: %w", err)
	}
	if err := os.Rename(tmp, d.flat); err != nil {
		os.Remove(tmp)
		return err
	}
	d.shared = false
	return nil
}

// writeAt writes data to path at off.
func writeAt(path string, off uint64, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, int64(off)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeFill writes length bytes at off, produced by fill (which fills a
// buffer) in chunks of at most 1 MiB.
func writeFill(path string, off, length uint64, fill func([]byte)) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, min(length, 1<<20))
	for length > 0 {
		b := buf[:min(length, uint64(len(buf)))]
		fill(b)
		if _, err := f.WriteAt(b, int64(off)); err != nil {
			f.Close()
			return err
		}
		off += uint64(len(b))
		length -= uint64(len(b))
	}
	return f.Close()
}

// punchHole deallocates [off, off+length) of path (it then reads as zeros).
func punchHole(path string, off, length uint64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(length))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// randomFiller returns a fill function producing the deterministic byte
// stream of seed.
func randomFiller(seed uint64) func([]byte) {
	var key [32]byte
	for i := range 4 {
		s := seed + uint64(i)*0x9e3779b97f4a7c15
		for j := range 8 {
			key[i*8+j] = byte(s >> (8 * j))
		}
	}
	r := rand.NewChaCha8(key)
	return func(b []byte) { _, _ = r.Read(b) }
}

// dataChunk is the granularity of a disk's initial data.
const dataChunk = 1 << 20

// fillInitialData writes about dataBytes of deterministic content (seed) to
// the flat file path of the given capacity: 1 MiB chunks spread over the
// disk, the first chunk always used, every eighth chunk written as zeros
// (allocated but zero), the rest left as holes.
func fillInitialData(path string, capacity, dataBytes, seed uint64) error {
	total := capacity / dataChunk
	n := min((dataBytes+dataChunk-1)/dataChunk, total)
	if n == 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0x5e4de45e1ab))
	perm := rng.Perm(int(total))
	chosen := []uint64{0}
	for _, p := range perm {
		if uint64(len(chosen)) >= n {
			break
		}
		if p != 0 {
			chosen = append(chosen, uint64(p))
		}
	}
	sort.Slice(chosen, func(i, j int) bool { return chosen[i] < chosen[j] })
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	fill := randomFiller(seed)
	buf := make([]byte, dataChunk)
	zero := make([]byte, dataChunk)
	for i, c := range chosen {
		b := buf
		if i%8 == 7 {
			b = zero
		} else {
			fill(b)
		}
		if _, err := f.WriteAt(b, int64(c*dataChunk)); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
