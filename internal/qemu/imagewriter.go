package qemu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sendense/capture/internal/xts"
)

// ImageWriter writes a new encrypted qcow2 image in this process, for a
// backup into a local encrypted repository. qemu's LUKS layer encrypts
// at about a quarter of a GB/s per core here; ImageWriter encrypts with
// libcrypto (internal/xts, AES-NI) at about 3.4 GB/s and writes the
// ciphertext itself, so that an encrypted backup costs about what a plain
// one does (bench/encryption.sh).
//
// The image is luksImage's: the same header and LUKS header, unlocked by
// the same secret, so qemu opens it like any other encrypted image of
// the repository. Data clusters are appended to the file in the order
// they arrive; in qcow2's LUKS encryption a sector's XTS tweak is its
// offset in the file (qemu's crypt_physical_offset), which the writer
// knows when it allocates. Close writes the L2 tables, the L1 table and
// the refcounts, every cluster of the file counted once, and fsyncs: an
// image whose Close did not succeed is not a valid image (its metadata
// is missing), and the repository removes it as a leftover.
//
// Requests must be multiples of 512 bytes at multiples of 512, and
// concurrent requests must not overlap (as NBD clients' requests). A
// cluster written only in part reads as zeroes elsewhere in an image
// without backing; in an overlay every cluster written must be written
// whole (the writer cannot read the backing chain to fill the rest), or
// Close fails.
type ImageWriter struct {
	f        *os.File
	direct   *os.File // the same file with O_DIRECT, for data; nil where unsupported
	path     string
	size     uint64
	backing  bool
	cipher   *xts.Cipher
	l1Offset uint64
	l1Size   uint64

	mu      sync.Mutex
	next    uint64                     // the next free cluster of the file
	l2      map[uint64][]uint64        // L1 index → L2 entries
	partial map[uint64]*partialCluster // guest cluster → data so far
	err     error                      // the first failed write
	closed  bool
}

// partialCluster is a guest cluster written in part so far: its
// plaintext (zero where not written) and which sectors were written.
type partialCluster struct {
	data []byte
	have [qcowCluster / luksSector / 64]uint64
}

const (
	l2Copied = 1 << 63 // QCOW_OFLAG_COPIED: refcount 1
	l2Zero   = 1       // QCOW_OFLAG_ZERO (qcow2 v3): reads as zeroes
	// writerMaxSize bounds the images ImageWriter writes: their file,
	// metadata included, fits the one-cluster refcount table (16 TiB of
	// file with 64 KiB clusters and 16-bit refcounts).
	writerMaxSize = 8 << 40
)

// ImageWriterCluster is the cluster size of the images ImageWriter
// writes: what an overlay's requests must cover whole.
const ImageWriterCluster = qcowCluster

// CanWriteImage reports whether NewImageWriter writes the images of size
// bytes these tools create: encrypted images (Secret), on this machine,
// of at most 8 TiB.
func (t *Tools) CanWriteImage(size uint64) bool {
	_, local := t.runner().(LocalRunner)
	return local && t.Secret != nil && size <= writerMaxSize
}

// ErrWriterUnsupported: the image cannot be written by ImageWriter (not
// an encrypted image, a runner other than this machine's, too large);
// write it through qemu-nbd instead.
var ErrWriterUnsupported = errors.New("the image cannot be written in-process")

// NewImageWriter creates the encrypted qcow2 image path (mode 0600,
// refusing an existing file) of size bytes, an overlay of backing when
// backing is not "", and returns its writer. It needs the image's secret
// (Tools.Secret) and tools that run on this machine; else it returns
// ErrWriterUnsupported and creates nothing.
func (t *Tools) NewImageWriter(path string, size uint64, backing string) (*ImageWriter, error) {
	if !t.CanWriteImage(size) {
		return nil, ErrWriterUnsupported
	}
	secret := t.Secret(path)
	if secret == nil {
		return nil, ErrWriterUnsupported
	}
	l, err := luksImage(size, backing, secret)
	if errors.Is(err, errLUKSLayout) {
		return nil, ErrWriterUnsupported
	}
	if err != nil {
		return nil, fmt.Errorf("create image %s: %w", path, err)
	}
	c, err := xts.New(l.volumeKey)
	clear(l.volumeKey)
	if err != nil {
		return nil, fmt.Errorf("create image %s: %w", path, err)
	}
	f, err := createLocal(path, l.fileSize, l.parts)
	if err != nil {
		return nil, fmt.Errorf("create image %s: %w", path, err)
	}
	// Data goes around the page cache, as qemu-nbd's --cache=none
	// (qemu.ServeOptions.Cache): a backup's gigabytes would only push
	// other data out of it, and buffered writes then fsync were about
	// twice as slow here. The metadata goes through f. The file is
	// opened again through f's descriptor, not its name: whatever is at
	// the name by then, this is the file just created.
	direct, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		direct = nil // tmpfs, for one: buffered
	}
	return &ImageWriter{
		f: f, direct: direct, path: path, size: size, backing: backing != "", cipher: c,
		l1Offset: l.l1Offset, l1Size: l.l1Size,
		next: uint64(l.fileSize) / qcowCluster, l2: map[uint64][]uint64{}, partial: map[uint64]*partialCluster{},
	}, nil
}

// Size is the image's virtual size.
func (w *ImageWriter) Size() uint64 { return w.size }

// CanZero: Zero is supported.
func (w *ImageWriter) CanZero() bool { return true }

// Concurrent: WriteAt and Zero may run on several goroutines at once
// (non-overlapping requests); the copy engine runs them off its event
// loop, as they spend CPU encrypting.
func (w *ImageWriter) Concurrent() bool { return true }

// clusterLen is the number of bytes of the image in guest cluster c (less
// than a cluster for the last one of an image whose size is not a
// multiple of the cluster size).
func (w *ImageWriter) clusterLen(c uint64) uint64 {
	return min(qcowCluster, w.size-c*qcowCluster)
}

// pwrite is one write of plaintext to its allocated place in the file.
type pwrite struct {
	host  uint64
	plain []byte
}

// WriteAt writes p at guest offset off.
func (w *ImageWriter) WriteAt(p []byte, off uint64) error {
	return w.write(p, off, uint64(len(p)))
}

// Zero makes [off, off+n) read as zeroes: clusters not written are
// marked zero (they do not read through to the backing image); data
// already written there is overwritten.
func (w *ImageWriter) Zero(off, n uint64) error {
	return w.write(nil, off, n)
}

// write writes p (nil: zeroes) of n bytes at off.
func (w *ImageWriter) write(p []byte, off, n uint64) error {
	if off%luksSector != 0 || n%luksSector != 0 || off > w.size || n > w.size-off {
		return fmt.Errorf("image %s: request of %d bytes at %d is not whole sectors inside the %d-byte image", w.path, n, off, w.size)
	}
	writes, err := w.plan(p, off, n)
	if err != nil {
		return err
	}
	if err := w.store(writes); err != nil {
		w.mu.Lock()
		if w.err == nil {
			w.err = err
		}
		w.mu.Unlock()
		return err
	}
	return nil
}

// plan decides, under the lock, where each cluster of the request goes:
// whole clusters to their (new or earlier) place in the file, pieces into
// their partial cluster, which goes to the file once complete. It returns
// the writes to do; zero clusters of an overlay not written before are
// only marked.
func (w *ImageWriter) plan(p []byte, off, n uint64) ([]pwrite, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, fmt.Errorf("image %s: written after Close", w.path)
	}
	var writes []pwrite
	for end := off + n; off < end; {
		c := off / qcowCluster
		in := off % qcowCluster
		k := min(end-off, w.clusterLen(c)-in)
		var data []byte // nil: zeroes
		if p != nil {
			data, p = p[:k], p[k:]
		}
		off += k
		entry := w.entry(c)
		pc := w.partial[c]
		if pc == nil && k == w.clusterLen(c) {
			if data == nil && hostOf(*entry) == 0 {
				// Zeroes over a cluster never written.
				if w.backing {
					*entry = l2Zero
				}
				continue
			}
			if data == nil {
				data = make([]byte, k)
			}
			writes = append(writes, pwrite{w.place(entry), data})
			continue
		}
		if pc == nil {
			pc = &partialCluster{data: make([]byte, w.clusterLen(c))}
			if err := w.readCluster(*entry, pc); err != nil {
				return nil, err
			}
			w.partial[c] = pc
		}
		if data != nil {
			copy(pc.data[in:], data)
		} else {
			clear(pc.data[in : in+k])
		}
		for s := in / luksSector; s < (in+k)/luksSector; s++ {
			pc.have[s/64] |= 1 << (s % 64)
		}
		if k == w.clusterLen(c) || pc.complete() {
			delete(w.partial, c)
			writes = append(writes, pwrite{w.place(entry), pc.data})
		}
	}
	// A full backup skips zero extents: clusters with data and zeroes
	// stay partial until Close. Past maxPartial of them, some are
	// written as they are (their rest reads as zeroes without backing),
	// under the lock, so that a later piece reads them back
	// (readCluster) only once written. An overlay's clusters come whole.
	if !w.backing && len(w.partial) > maxPartial {
		var evicted []pwrite
		for c, pc := range w.partial {
			if len(w.partial) <= maxPartial/2 {
				break
			}
			delete(w.partial, c)
			evicted = append(evicted, pwrite{w.place(w.entry(c)), pc.data})
		}
		if err := w.store(evicted); err != nil {
			return nil, err
		}
	}
	return writes, nil
}

// maxPartial bounds the clusters held in memory (64 KiB each) while
// they are written in pieces.
var maxPartial = 1024

// complete reports whether every sector of the cluster (its data's
// length) was written.
func (pc *partialCluster) complete() bool {
	for s := 0; s < len(pc.data)/luksSector; s++ {
		if pc.have[s/64]&(1<<(s%64)) == 0 {
			return false
		}
	}
	return true
}

// readCluster starts pc from what the cluster of entry holds: nothing
// (zeroes) unless it was written before, in full (a partial write over
// it, which the copy engine does not make, but a caller may): then its
// plaintext, read back and decrypted, and every sector counts as written.
func (w *ImageWriter) readCluster(entry uint64, pc *partialCluster) error {
	host := hostOf(entry)
	if host == 0 {
		return nil
	}
	if _, err := w.f.ReadAt(pc.data, int64(host)); err != nil {
		return fmt.Errorf("image %s: reading back the cluster at %d: %w", w.path, host, err)
	}
	if err := w.cipher.Decrypt(pc.data, pc.data, host/luksSector); err != nil {
		return fmt.Errorf("image %s: %w", w.path, err)
	}
	for i := range pc.have {
		pc.have[i] = ^uint64(0)
	}
	return nil
}

// hostOf is the offset in the file of the cluster of L2 entry e, 0 when
// it has none (unallocated, or a zero cluster).
func hostOf(e uint64) uint64 {
	if e == l2Zero {
		return 0
	}
	return e &^ l2Copied
}

// entry is guest cluster c's L2 entry, its table created on first use.
func (w *ImageWriter) entry(c uint64) *uint64 {
	t := w.l2[c/qcowL2Entries]
	if t == nil {
		t = make([]uint64, qcowL2Entries)
		w.l2[c/qcowL2Entries] = t
	}
	return &t[c%qcowL2Entries]
}

// place is the file offset of the cluster of entry: its earlier place, or
// the next free cluster of the file.
func (w *ImageWriter) place(entry *uint64) uint64 {
	if host := hostOf(*entry); host != 0 {
		return host
	}
	host := w.next * qcowCluster
	w.next++
	*entry = host | l2Copied
	return host
}

// directAlign is the alignment of O_DIRECT buffers, offsets and
// lengths: the page size, a multiple of every disk's logical block.
const directAlign = 4096

var scratch = sync.Pool{New: func() any { return new([]byte) }}

// alignedBuffer is n bytes of *bp, at an address aligned for O_DIRECT,
// reallocated when too small.
func alignedBuffer(bp *[]byte, n uint64) []byte {
	if uint64(cap(*bp)) < n+directAlign {
		*bp = make([]byte, n+directAlign)
	}
	b := (*bp)[:cap(*bp)]
	skip := (directAlign - uintptr(unsafe.Pointer(&b[0]))%directAlign) % directAlign
	return b[skip : skip+uintptr(n)]
}

// store encrypts and writes the planned writes, a run of contiguous
// clusters at a time.
func (w *ImageWriter) store(writes []pwrite) error {
	bp := scratch.Get().(*[]byte)
	defer scratch.Put(bp)
	for i := 0; i < len(writes); {
		j, n := i+1, uint64(len(writes[i].plain))
		for j < len(writes) && writes[j].host == writes[i].host+n && n%qcowCluster == 0 {
			n += uint64(len(writes[j].plain))
			j++
		}
		buf := alignedBuffer(bp, n)
		host := writes[i].host
		at := uint64(0)
		for _, wr := range writes[i:j] { // encrypted into place, not copied first
			if err := w.cipher.Encrypt(buf[at:], wr.plain, (host+at)/luksSector); err != nil {
				return fmt.Errorf("image %s: %w", w.path, err)
			}
			at += uint64(len(wr.plain))
		}
		f := w.f
		if w.direct != nil && n%directAlign == 0 {
			f = w.direct
		}
		if _, err := f.WriteAt(buf, int64(host)); err != nil {
			return fmt.Errorf("image %s: %w", w.path, err)
		}
		i = j
	}
	return nil
}

// Flush makes the data written so far durable (the image is complete
// only after Close).
func (w *ImageWriter) Flush() error {
	w.mu.Lock()
	err := w.err
	w.mu.Unlock()
	if err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil { // the file's: O_DIRECT writes too
		return fmt.Errorf("image %s: %w", w.path, err)
	}
	return nil
}

// Close completes the image: the clusters written in part (an error in
// an overlay), the L2 and L1 tables and the refcounts, then fsyncs and
// closes the file. After a failed write it only closes the file: the
// image is incomplete, remove it.
func (w *ImageWriter) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	err := w.err
	var writes []pwrite
	if err == nil {
		writes, err = w.finishPartial()
	}
	w.mu.Unlock()
	if err == nil {
		err = w.store(writes)
	}
	if err == nil {
		err = w.writeMetadata()
	}
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.closeFiles(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("image %s is incomplete: %w", w.path, err)
	}
	return nil
}

// Abort closes the file without completing the image.
func (w *ImageWriter) Abort() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		w.closeFiles()
	}
}

func (w *ImageWriter) closeFiles() error {
	if w.direct != nil {
		w.direct.Close()
	}
	return w.f.Close()
}

// finishPartial returns the writes of the clusters written in part: in
// an image without backing the rest reads as zeroes; in an overlay it
// would have to come from the backing, which the writer does not read.
func (w *ImageWriter) finishPartial() ([]pwrite, error) {
	var writes []pwrite
	for c, pc := range w.partial {
		if w.backing {
			return nil, fmt.Errorf("the cluster at offset %d of the overlay was written only in part", c*qcowCluster)
		}
		writes = append(writes, pwrite{w.place(w.entry(c)), pc.data})
	}
	clear(w.partial)
	return writes, nil
}

// writeMetadata writes the L2 tables (appended), the L1 table and the
// refcounts: every cluster of the file is in use once; refcount blocks
// past the first are appended too.
func (w *ImageWriter) writeMetadata() error {
	be := binary.BigEndian
	l1 := make([]byte, w.l1Size*8)
	table := make([]byte, qcowCluster)
	for i, t := range w.l2 {
		if i >= w.l1Size {
			return fmt.Errorf("L2 table %d past the L1 table's %d entries", i, w.l1Size)
		}
		empty := true
		for j, e := range t {
			be.PutUint64(table[8*j:], e)
			empty = empty && e == 0
		}
		if empty {
			continue
		}
		host := w.next * qcowCluster
		w.next++
		if _, err := w.f.WriteAt(table, int64(host)); err != nil {
			return err
		}
		be.PutUint64(l1[8*i:], host|l2Copied)
	}
	if _, err := w.f.WriteAt(l1, int64(w.l1Offset)); err != nil {
		return err
	}

	// Refcount blocks: the first (luksImage's) covers the first
	// perBlock clusters; more are appended, and count themselves.
	const perBlock = qcowCluster / 2 // 16-bit refcounts
	blocks := uint64(1)
	for (w.next+blocks-1+perBlock-1)/perBlock > blocks {
		blocks = (w.next + blocks - 1 + perBlock - 1) / perBlock
	}
	if blocks > qcowCluster/8 {
		return fmt.Errorf("%d refcount blocks do not fit one refcount table cluster", blocks)
	}
	total := w.next + blocks - 1
	reftable := make([]byte, 8*blocks)
	block := make([]byte, qcowCluster)
	for b := range blocks {
		host := uint64(qcowRefblockOff)
		if b > 0 {
			host = (w.next + b - 1) * qcowCluster
		}
		be.PutUint64(reftable[8*b:], host)
		clear(block)
		for c := b * perBlock; c < min(total, (b+1)*perBlock); c++ {
			be.PutUint16(block[2*(c-b*perBlock):], 1)
		}
		if _, err := w.f.WriteAt(block, int64(host)); err != nil {
			return err
		}
	}
	if _, err := w.f.WriteAt(reftable, qcowReftableOff); err != nil {
		return err
	}
	return w.f.Truncate(int64(total * qcowCluster))
}
