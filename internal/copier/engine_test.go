package copier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/sendense/capture/internal/extent"
)

const K = 1024

// image builds a source of size bytes from (length, type, fill) triples:
// fill -1 random bytes, else that byte value.
func image(seed int64, parts ...int) *memSource {
	rnd := rand.New(rand.NewSource(seed))
	s := &memSource{}
	for i := 0; i+2 < len(parts); i += 3 {
		n, typ, fill := parts[i], parts[i+1], parts[i+2]
		p := make([]byte, n)
		if fill < 0 {
			rnd.Read(p)
		} else {
			for j := range p {
				p[j] = byte(fill)
			}
		}
		s.ext = s.ext.Append(uint64(len(s.data)), uint64(n), uint32(typ))
		s.data = append(s.data, p...)
	}
	return s
}

func sum(p []byte) string {
	h := sha256.Sum256(p)
	return hex.EncodeToString(h[:])
}

func covered(l extent.List) extent.List { return extent.Normalize(append(extent.List(nil), l...)) }

func ex(off, n uint64) extent.Extent { return extent.Extent{Offset: off, Length: n} }

func TestCopyFull(t *testing.T) {
	// data, hole-only (real data), zero, hole+zero, all-zero data.
	src := image(1, 64*K, 0, -1, 32*K, 1, 7, 16*K, 2, 0, 48*K, 3, 0, 32*K, 0, 0, 8*K, 0, -1)
	dst := newMemDest(len(src.data), 0xaa)
	res, err := Copy(context.Background(), src, dst, Options{RequestSize: 16 * K, Checksum: true, HashChunks: true})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.data, src.data) {
		t.Fatal("destination differs from the source")
	}
	if res.SHA256 != sum(src.data) {
		t.Fatalf("SHA256 = %s, want %s", res.SHA256, sum(src.data))
	}
	st := res.Stats
	if st.BytesRead != (64+32+32+8)*K || st.BytesWritten != (64+32+8)*K || st.BytesZeroed != (16+48+32)*K || st.BytesSkipped != 0 {
		t.Fatalf("stats %+v", st)
	}
	if got := covered(dst.zeroed); !reflect.DeepEqual(got, extent.List{ex(96*K, 96*K)}) {
		t.Fatalf("zeroed %v", got)
	}
	if dst.flushes != 1 {
		t.Fatalf("%d flushes, want 1", dst.flushes)
	}
	if !reflect.DeepEqual(res.Completed, extent.List{ex(0, uint64(len(src.data)))}) {
		t.Fatalf("completed %v", res.Completed)
	}
	// Chunks: one per request, data hashed, all-zero data recorded as zero.
	var pos uint64
	for _, c := range res.Chunks {
		if c.Offset != pos {
			t.Fatalf("chunk at %d, want %d", c.Offset, pos)
		}
		pos += c.Length
		switch c.Kind {
		case ChunkData:
			if c.SHA256 != sum(src.data[c.Offset:c.Offset+c.Length]) {
				t.Fatalf("chunk %d+%d hash wrong", c.Offset, c.Length)
			}
		case ChunkZero:
			if c.SHA256 != "" || !bytes.Equal(src.data[c.Offset:c.Offset+c.Length], make([]byte, c.Length)) {
				t.Fatalf("zero chunk %+v over data", c)
			}
		}
	}
	if pos != uint64(len(src.data)) {
		t.Fatalf("chunks cover %d bytes", pos)
	}
}

func TestCopyIncremental(t *testing.T) {
	// unchanged (1), changed data (0), changed and now all zero (0),
	// changed and unallocated (3), unchanged (1).
	src := image(2, 64*K, 1, 9, 32*K, 0, -1, 16*K, 0, 0, 16*K, 3, 0, 64*K, 1, 9)
	dst := newMemDest(len(src.data), 0xbb) // "backing" content
	res, err := Copy(context.Background(), src, dst, Options{Incremental: true, RequestSize: 16 * K, Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), dst.data...)
	copy(want[64*K:], src.data[64*K:128*K])
	if !bytes.Equal(dst.data, want) {
		t.Fatal("incremental wrote outside the changed blocks or missed some")
	}
	if got := covered(dst.written); !reflect.DeepEqual(got, extent.List{ex(64*K, 32*K)}) {
		t.Fatalf("written %v", got)
	}
	if got := covered(dst.zeroed); !reflect.DeepEqual(got, extent.List{ex(96*K, 32*K)}) {
		t.Fatalf("zeroed %v: must zero both the zeroed data and the unallocated block", got)
	}
	for _, r := range src.reads {
		if r.Offset < 64*K || r.End() > 128*K {
			t.Fatalf("read %v of an unchanged block", r)
		}
	}
	if res.BytesSkipped != 128*K {
		t.Fatalf("skipped %d", res.BytesSkipped)
	}
	// The checksum is of the destination (read back), not of the source.
	if res.SHA256 != sum(dst.data) {
		t.Fatal("checksum is not the destination's")
	}
}

func TestCopyDestinationIsZero(t *testing.T) {
	src := image(3, 32*K, 3, 0, 32*K, 0, -1, 32*K, 0, 0, 32*K, 2, 0)
	dst := newMemDest(len(src.data), 0)
	res, err := Copy(context.Background(), src, dst, Options{DestinationIsZero: true, RequestSize: 32 * K, Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(dst.zeroed) != 0 || !reflect.DeepEqual(covered(dst.written), extent.List{ex(32*K, 32*K)}) {
		t.Fatalf("written %v zeroed %v", dst.written, dst.zeroed)
	}
	if res.BytesSkipped != 96*K || res.BytesWritten != 32*K || !bytes.Equal(dst.data, src.data) || res.SHA256 != sum(src.data) {
		t.Fatalf("stats %+v", res.Stats)
	}
	if _, err := Copy(context.Background(), src, dst, Options{DestinationIsZero: true, Incremental: true}); err == nil {
		t.Fatal("--destination-is-zero with --incremental accepted")
	}
}

func TestCopyNoBlockStatusNoZero(t *testing.T) {
	src := image(4, 40*K, 3, 0, 24*K, 0, -1)
	src.ext = nil // everything is data
	dst := newMemDest(len(src.data), 0xcc)
	dst.noZero = true
	res, err := Copy(context.Background(), src, dst, Options{RequestSize: 16 * K})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.data, src.data) || res.BytesRead != 64*K || res.BytesZeroed != 32*K || len(dst.zeroed) != 0 {
		t.Fatalf("stats %+v, zeroed %v", res.Stats, dst.zeroed)
	}
}

func TestCopyAsyncOutOfOrderMultiConn(t *testing.T) {
	src := image(5, 200*K, 0, -1, 100*K, 3, 0, 300*K, 1, -1, 50*K, 0, 0, 374*K, 0, -1)
	dst := newMemDest(len(src.data), 0xdd)
	var sopened, dopened int
	ms := &multiAsync{s: src, d: dst, opened: &sopened}
	res, err := Copy(context.Background(), ms.source(), ms.dest(&dopened), Options{Connections: 3, Requests: 5, RequestSize: 16 * K, Checksum: true, HashChunks: true})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.data, src.data) || res.SHA256 != sum(src.data) {
		t.Fatal("content or checksum differs")
	}
	if res.Connections != 3 || sopened != 2 || dopened != 2 {
		t.Fatalf("connections %d, reopened %d/%d", res.Connections, sopened, dopened)
	}
	for _, a := range ms.asyncs {
		if a.maxIn > 5 {
			t.Fatalf("%d requests in flight on one connection, limit 5", a.maxIn)
		}
	}
	if len(ms.asyncs) == 0 {
		t.Fatal("asynchronous connections were not used")
	}
}

// multiAsync hands out asynchronous multi-conn views of one memory image.
type multiAsync struct {
	s      *memSource
	d      *memDest
	opened *int
	asyncs []*asyncMem
}

type maSource struct {
	asyncSource
	m *multiAsync
}

type maDest struct {
	asyncDest
	m      *multiAsync
	opened *int
}

func (m *multiAsync) source() maSource {
	a := newAsyncSource(m.s, int64(len(m.asyncs)+1))
	m.asyncs = append(m.asyncs, a)
	return maSource{asyncSource{m.s, a}, m}
}

func (m *multiAsync) dest(opened *int) maDest {
	a := newAsyncDest(m.d, int64(len(m.asyncs)+50))
	m.asyncs = append(m.asyncs, a)
	return maDest{asyncDest{m.d, a}, m, opened}
}

func (s maSource) CanMultiConn() bool { return true }
func (s maSource) Reopen() (io.Closer, error) {
	*s.m.opened++
	return s.m.source(), nil
}
func (d maDest) CanMultiConn() bool { return true }
func (d maDest) Reopen() (io.Closer, error) {
	*d.opened++
	return d.m.dest(d.opened), nil
}

func TestCopySkipResume(t *testing.T) {
	src := image(6, 128*K, 0, -1)
	dst := newMemDest(len(src.data), 0)
	copy(dst.data[:32*K], src.data) // done by an earlier run
	skip := extent.List{ex(0, 32*K), ex(96*K, 16*K)}
	copy(dst.data[96*K:112*K], src.data[96*K:])
	res, err := Copy(context.Background(), src, dst, Options{RequestSize: 16 * K, Skip: skip, Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range src.reads {
		if r.Offset < 32*K || r.Offset >= 96*K && r.Offset < 112*K {
			t.Fatalf("read %v inside a skipped range", r)
		}
	}
	if !bytes.Equal(dst.data, src.data) || res.BytesSkipped != 48*K || res.SHA256 != sum(src.data) {
		t.Fatalf("stats %+v", res.Stats)
	}
	if !reflect.DeepEqual(res.Completed, extent.List{ex(0, 128*K)}) {
		t.Fatalf("completed %v", res.Completed)
	}
}

func TestCopyErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		setup func(s *memSource, d *memDest) Options
		want  string
	}{
		{"smaller destination", func(s *memSource, d *memDest) Options { d.data = d.data[:len(d.data)-512]; return Options{} }, "smaller than the source"},
		{"larger destination", func(s *memSource, d *memDest) Options { d.data = append(d.data, 0); return Options{} }, "--allow-larger-destination"},
		{"read-only", func(s *memSource, d *memDest) Options { d.readOnly = true; return Options{} }, "read-only"},
		{"read error", func(s *memSource, d *memDest) Options { s.readErr, s.readAt = boom, 100*K; return Options{} }, "read from the source at offset"},
		{"write error", func(s *memSource, d *memDest) Options { d.writeErr, d.writeErrAt = boom, 100*K; return Options{} }, "write to the destination at offset"},
		{"flush error", func(s *memSource, d *memDest) Options { d.flushErr = boom; return Options{} }, "flush the destination: boom"},
		{"bad request size", func(s *memSource, d *memDest) Options { return Options{RequestSize: 1000} }, "--request-size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := image(7, 256*K, 0, -1)
			dst := newMemDest(len(src.data), 0)
			opts := tc.setup(src, dst)
			opts.RequestSize = max(opts.RequestSize, 0)
			if opts.RequestSize == 0 {
				opts.RequestSize = 16 * K
			}
			res, err := Copy(context.Background(), src, dst, opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if res != nil && strings.Contains(tc.name, "write") {
				// What completed was really written.
				for _, c := range res.Completed {
					if !bytes.Equal(dst.data[c.Offset:c.End()], src.data[c.Offset:c.End()]) {
						t.Fatalf("completed range %v was not written", c)
					}
				}
				if res.Completed.Bytes() >= 256*K {
					t.Fatal("everything completed despite the error")
				}
			}
		})
	}
	src := image(8, 64*K, 0, -1)
	dst := newMemDest(len(src.data)+4096, 0x11)
	if _, err := Copy(context.Background(), src, dst, Options{AllowLargerDestination: true}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.data[:64*K], src.data) || dst.data[64*K] != 0x11 {
		t.Fatal("larger destination: wrong content")
	}
}

func TestCopyCancel(t *testing.T) {
	src := image(9, 1<<20, 0, -1)
	dst := newMemDest(len(src.data), 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Copy(ctx, src, dst, Options{RequestSize: 4 * K})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if dst.flushes != 0 {
		t.Fatal("flushed after cancellation")
	}
}

func TestCopyRateAndProgress(t *testing.T) {
	src := image(10, 1<<20, 0, -1)
	dst := newMemDest(len(src.data), 0)
	var mu sync.Mutex
	var last Progress
	calls := 0
	start := time.Now()
	res, err := Copy(context.Background(), src, dst, Options{
		RequestSize: 64 * K, Rate: 2 << 20, ProgressInterval: 50 * time.Millisecond,
		Progress: func(p Progress) {
			mu.Lock()
			defer mu.Unlock()
			if p.Done < last.Done {
				t.Errorf("progress went back from %d to %d", last.Done, p.Done)
			}
			last = p
			calls++
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// 1 MiB at 2 MiB/s with a 64 KiB burst: about half a second.
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("copy took %v despite --rate", d)
	}
	if calls < 3 || last.Done != last.Total || last.Total != 1<<20 {
		t.Fatalf("%d progress calls, last %+v", calls, last)
	}
	if res.MiBps > 3 {
		t.Fatalf("MiB/s %.1f over the limit", res.MiBps)
	}
}

// TestCopySharedLimiterLargeRequests: a shared limiter whose burst is
// smaller than the requests charges each request in full.
func TestCopySharedLimiterLargeRequests(t *testing.T) {
	src := image(12, 1<<20, 0, -1)
	dst := newMemDest(len(src.data), 0)
	lim := rate.NewLimiter(2<<20, 64*K)
	lim.AllowN(time.Now(), 64*K) // an empty bucket
	start := time.Now()
	if _, err := Copy(context.Background(), src, dst, Options{RequestSize: 256 * K, Limiter: lim}); err != nil {
		t.Fatal(err)
	}
	// 1 MiB at 2 MiB/s: half a second (an eighth, were each 256 KiB
	// request charged the 64 KiB burst only).
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("copy took %v with a 2 MiB/s limiter", d)
	}
	if !bytes.Equal(dst.data, src.data) {
		t.Fatal("destination differs from the source")
	}
}

func TestChecksumFunction(t *testing.T) {
	src := image(11, 100*K, 0, -1, 28*K, 3, 0)
	got, err := Checksum(context.Background(), src, Options{RequestSize: 8 * K})
	if err != nil || got != sum(src.data) {
		t.Fatalf("Checksum = %s, %v", got, err)
	}
}

// The whole-image checksum hashes in the request buffers and holds their
// slots meanwhile: a failure or a cancellation must give them back at once
// (not after drainTimeout), whatever order the requests finish in.
func TestCopyChecksumFailFast(t *testing.T) {
	for _, hashers := range []bool{false, true} {
		t.Run(fmt.Sprintf("hashers=%v", hashers), func(t *testing.T) {
			withHashers(t, hashers)
			testCopyChecksumFailFast(t)
		})
	}
}

func testCopyChecksumFailFast(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		setup func(s *memSource, d *memDest, o *Options) (cancelAfter time.Duration)
		want  error
	}{
		{"read error", func(s *memSource, d *memDest, o *Options) time.Duration {
			s.readErr, s.readAt = boom, 700*K
			return 0
		}, boom},
		{"one read fails, later ones finish first", func(s *memSource, d *memDest, o *Options) time.Duration {
			s.readErr, s.readAt, s.readEnd = boom, 100*K, 101*K
			return 0
		}, boom},
		{"write error", func(s *memSource, d *memDest, o *Options) time.Duration {
			d.writeErr, d.writeErrAt = boom, 300*K
			return 0
		}, boom},
		{"cancel while the rate limiter holds a request", func(s *memSource, d *memDest, o *Options) time.Duration {
			o.Rate = 256 * K
			return 300 * time.Millisecond
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := image(12, 512*K, 0, -1, 256*K, 3, 0, 256*K, 0, -1)
			dst := newMemDest(len(src.data), 0)
			ms := &multiAsync{s: src, d: dst, opened: new(int)}
			opts := Options{Connections: 2, Requests: 4, RequestSize: 16 * K, Checksum: true, Digest: true, HashChunks: true}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if d := tc.setup(src, dst, &opts); d > 0 {
				time.AfterFunc(d, cancel)
			}
			start := time.Now()
			res, err := Copy(ctx, ms.source(), ms.dest(new(int)), opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("the copy took %v to fail", d)
			}
			if res == nil || res.SHA256 != "" || res.Digest != "" {
				t.Fatalf("result %+v: a failed copy has no checksum", res)
			}
		})
	}
}

// The sequencer hashes in the caller's buffer: it keeps a piece that came
// early until everything before it is hashed, and releases each once only.
func TestSequencerHoldsBuffers(t *testing.T) {
	a, b := bytes.Repeat([]byte{1}, 4*K), bytes.Repeat([]byte{2}, 4*K)
	s := newSequencer(12*K, new(atomic.Int64))
	released := make(chan string, 4)
	s.data(4*K, b, func() { released <- "b" })
	select {
	case r := <-released:
		t.Fatalf("piece %s released before the bytes before it were hashed", r)
	case <-time.After(50 * time.Millisecond):
	}
	s.zero(8*K, 4*K)
	s.data(0, a, func() { released <- "a" })
	if r1, r2 := <-released, <-released; r1 != "a" || r2 != "b" {
		t.Fatalf("released %s, %s; want a, b", r1, r2)
	}
	got, err := s.finish()
	if want := sum(append(append(a, b...), make([]byte, 4*K)...)); err != nil || got != want {
		t.Fatalf("finish = %s, %v; want %s", got, err, want)
	}

	// After abort, what is held and what comes later is released unhashed.
	s = newSequencer(8*K, new(atomic.Int64))
	s.data(4*K, b, func() { released <- "held" })
	s.abort()
	s.data(0, a, func() { released <- "late" })
	if r1, r2 := <-released, <-released; r1 != "held" || r2 != "late" {
		t.Fatalf("released %s, %s after abort", r1, r2)
	}
	s.stop()
	if len(released) != 0 {
		t.Fatal("a piece was released twice")
	}
}

// concurrentDest is a memDest whose requests run off the event loop
// (Concurrent); it counts the requests running at once.
type concurrentDest struct {
	*memDest
	mu         sync.Mutex
	running    int
	maxRunning int
}

func (d *concurrentDest) Concurrent() bool { return true }

func (d *concurrentDest) track(req func() error) error {
	d.mu.Lock()
	d.running++
	d.maxRunning = max(d.maxRunning, d.running)
	d.mu.Unlock()
	time.Sleep(time.Millisecond) // as if encrypting
	err := req()
	d.mu.Lock()
	d.running--
	d.mu.Unlock()
	return err
}

func (d *concurrentDest) WriteAt(p []byte, off uint64) error {
	return d.track(func() error { return d.memDest.WriteAt(p, off) })
}

func (d *concurrentDest) Zero(off, n uint64) error {
	return d.track(func() error { return d.memDest.Zero(off, n) })
}

// TestCopyConcurrentDestination: a Concurrent destination gets several
// requests at once, the copy is whole and its hashes right, and a failed
// request fails the copy.
func TestCopyConcurrentDestination(t *testing.T) {
	src := image(5, 512*K, 0, -1, 64*K, 0, 0, 256*K, 1, 3)
	dst := &concurrentDest{memDest: newMemDest(len(src.data), 0xaa)}
	res, err := Copy(context.Background(), src, dst, Options{RequestSize: 16 * K, Requests: 8, Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst.data, src.data) || res.SHA256 != sum(src.data) {
		t.Fatal("destination differs from the source")
	}
	if dst.maxRunning < 2 {
		t.Fatalf("at most %d request ran at once; want several", dst.maxRunning)
	}
	if dst.flushes != 1 {
		t.Fatalf("%d flushes, want 1", dst.flushes)
	}
	bad := &concurrentDest{memDest: newMemDest(len(src.data), 0)}
	bad.writeErr, bad.writeErrAt = errors.New("disk full"), 300*K
	if _, err := Copy(context.Background(), src, bad, Options{RequestSize: 16 * K, Requests: 8}); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("a failed write: %v", err)
	}
}
