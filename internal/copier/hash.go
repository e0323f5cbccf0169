package copier

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"
)

// sequencer computes the SHA-256 of the whole image while requests finish
// out of order: pieces wait, keyed by offset, until everything before them
// has been hashed. Data pieces are copied so that request buffers can be
// reused at once; workers stop taking new work while more than limit bytes
// wait (the piece everybody waits for is always already in flight, so this
// cannot deadlock).
type sequencer struct {
	mu      sync.Mutex
	cond    sync.Cond
	pending map[uint64]piece
	closed  bool
	next    uint64 // everything before next is hashed (owned by run)

	held  atomic.Int64 // data bytes waiting
	limit int64
	size  uint64
	pool  sync.Pool
	h     hash.Hash
	done  chan struct{}
}

type piece struct {
	n    uint64
	data *[]byte // nil: n zero bytes
}

var zeroBlock [1 << 20]byte

func newSequencer(size uint64, bufSize int, limit int64) *sequencer {
	s := &sequencer{
		pending: make(map[uint64]piece),
		limit:   limit,
		size:    size,
		h:       sha256.New(),
		done:    make(chan struct{}),
	}
	s.cond.L = &s.mu
	s.pool.New = func() any { b := make([]byte, bufSize); return &b }
	go s.run()
	return s
}

// data queues a copy of p, the content at off.
func (s *sequencer) data(off uint64, p []byte) {
	b := s.pool.Get().(*[]byte)
	if cap(*b) < len(p) {
		nb := make([]byte, len(p))
		b = &nb
	}
	*b = (*b)[:len(p)]
	copy(*b, p)
	s.held.Add(int64(len(p)))
	s.put(off, piece{uint64(len(p)), b})
}

// zero queues n zero bytes at off.
func (s *sequencer) zero(off, n uint64) {
	if n > 0 {
		s.put(off, piece{n, nil})
	}
}

func (s *sequencer) put(off uint64, p piece) {
	s.mu.Lock()
	s.pending[off] = p
	s.mu.Unlock()
	s.cond.Signal()
}

// gated reports whether workers should wait before reading more.
func (s *sequencer) gated() bool { return s.held.Load() > s.limit }

func (s *sequencer) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		p, ok := s.pending[s.next]
		for !ok && !s.closed {
			s.cond.Wait()
			p, ok = s.pending[s.next]
		}
		if !ok {
			s.mu.Unlock()
			return
		}
		delete(s.pending, s.next)
		s.mu.Unlock()
		if p.data != nil {
			s.h.Write(*p.data)
			s.held.Add(-int64(len(*p.data)))
			s.pool.Put(p.data)
		} else {
			for left := p.n; left > 0; {
				k := min(left, uint64(len(zeroBlock)))
				s.h.Write(zeroBlock[:k])
				left -= k
			}
		}
		s.next += p.n
	}
}

// finish waits for the hashing to end and returns the hex digest, or an
// error if some of the image never arrived (a bug).
func (s *sequencer) finish() (string, error) {
	s.stop()
	if s.next != s.size {
		return "", fmt.Errorf("checksum: hashed %d of %d bytes", s.next, s.size)
	}
	return hex.EncodeToString(s.h.Sum(nil)), nil
}

// stop ends the hashing goroutine.
func (s *sequencer) stop() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cond.Broadcast()
	<-s.done
}

// sumHex returns the hex SHA-256 of p.
func sumHex(p []byte) string {
	sum := sha256.Sum256(p)
	return hex.EncodeToString(sum[:])
}
