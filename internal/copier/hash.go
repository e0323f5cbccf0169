package copier

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"
	"time"
)

// sequencer computes the SHA-256 of the whole image while requests finish
// out of order: pieces wait, keyed by offset, until everything before them
// has been hashed. A data piece is hashed in its request buffer, which
// stays with the sequencer until its release function is called, so the
// memory held is the requests in flight and nothing more. That cannot
// deadlock: the planner hands out work in offset order, so the piece the
// sequencer waits for is a zero range it already has or a read that
// already owns a request slot. After abort, every piece held or given is
// released at once and nothing more is hashed.
type sequencer struct {
	mu      sync.Mutex
	cond    sync.Cond
	pending map[uint64]piece
	closed  bool
	aborted bool
	next    uint64 // everything before next is hashed (owned by run)

	size  uint64
	h     hash.Hash
	done  chan struct{}
	nanos *atomic.Int64 // time spent hashing is added here
}

type piece struct {
	n       uint64
	data    []byte // nil: n zero bytes
	release func() // data pieces: gives the buffer back
}

var zeroBlock [1 << 20]byte

func newSequencer(size uint64, nanos *atomic.Int64) *sequencer {
	s := &sequencer{
		pending: make(map[uint64]piece),
		size:    size,
		h:       sha256.New(),
		done:    make(chan struct{}),
		nanos:   nanos,
	}
	s.cond.L = &s.mu
	go s.run()
	return s
}

// data queues p, the content at off; release is called once p has been
// hashed (or the hashing aborted) and p is no longer used.
func (s *sequencer) data(off uint64, p []byte, release func()) {
	s.put(off, piece{uint64(len(p)), p, release})
}

// zero queues n zero bytes at off.
func (s *sequencer) zero(off, n uint64) {
	if n > 0 {
		s.put(off, piece{n: n})
	}
}

func (s *sequencer) put(off uint64, p piece) {
	s.mu.Lock()
	if s.aborted {
		s.mu.Unlock()
		if p.release != nil {
			p.release()
		}
		return
	}
	s.pending[off] = p
	s.mu.Unlock()
	s.cond.Signal()
}

func (s *sequencer) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		p, ok := s.pending[s.next]
		for !ok && !s.closed && !s.aborted {
			s.cond.Wait()
			p, ok = s.pending[s.next]
		}
		if !ok { // closed with nothing more in order, or aborted
			s.mu.Unlock()
			return
		}
		delete(s.pending, s.next)
		s.mu.Unlock()
		t := time.Now()
		if p.data != nil {
			s.h.Write(p.data)
			p.release()
		} else {
			for left := p.n; left > 0; {
				k := min(left, uint64(len(zeroBlock)))
				s.h.Write(zeroBlock[:k])
				left -= k
			}
		}
		s.nanos.Add(int64(time.Since(t)))
		s.next += p.n
	}
}

// abort stops the hashing (the copy failed): the pieces waiting are
// released, and so will be those given later.
func (s *sequencer) abort() {
	s.mu.Lock()
	if s.aborted {
		s.mu.Unlock()
		return
	}
	s.aborted = true
	held := s.pending
	s.pending = nil
	s.mu.Unlock()
	s.cond.Broadcast()
	for _, p := range held {
		if p.release != nil {
			p.release()
		}
	}
}

// finish waits for the hashing to end and returns the hex digest, or an
// error if some of the image never arrived (a bug).
func (s *sequencer) finish() (string, error) {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cond.Broadcast()
	<-s.done
	if s.next != s.size {
		return "", fmt.Errorf("checksum: hashed %d of %d bytes", s.next, s.size)
	}
	return hex.EncodeToString(s.h.Sum(nil)), nil
}

// stop ends the hashing goroutine, whatever it has left.
func (s *sequencer) stop() {
	s.abort()
	<-s.done
}
