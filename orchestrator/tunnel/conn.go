package tunnel

import (
	"net"
	"os"
	"sync"
	"time"
)

// wrapConn returns the connection the SSH transport runs over: writes are
// queued and written by a separate goroutine, so the many small writes
// x/crypto/ssh makes (two per packet, each flushed) reach the socket as
// few large ones while the next packets are being encrypted.
func wrapConn(c net.Conn) net.Conn {
	if os.Getenv("X_NAGLE") != "" {
		c.(*net.TCPConn).SetNoDelay(false)
	}
	if os.Getenv("X_COMBINE") != "" {
		return &combineConn{Conn: c}
	}
	if os.Getenv("X_PLAIN") != "" {
		return c
	}
	w := &asyncConn{Conn: c, buf: make([]byte, 0, asyncHighWater), spare: make([]byte, 0, asyncHighWater)}
	w.cond = sync.NewCond(&w.mu)
	go w.writer()
	return w
}

// asyncHighWater bounds the bytes queued before Write blocks.
const asyncHighWater = 1 << 20

type asyncConn struct {
	net.Conn
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte // queued by Write
	spare  []byte
	busy   bool // writer is writing
	err    error
	closed bool
}

func (w *asyncConn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.err == nil && !w.closed && len(w.buf) > 0 && len(w.buf)+len(p) > asyncHighWater {
		w.cond.Wait()
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, net.ErrClosed
	}
	wake := len(w.buf) == 0 && !w.busy
	w.buf = append(w.buf, p...)
	if wake {
		w.cond.Broadcast()
	}
	return len(p), nil
}

func (w *asyncConn) writer() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for len(w.buf) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.buf) == 0 {
			return
		}
		w.buf, w.spare = w.spare[:0], w.buf
		w.busy = true
		w.cond.Broadcast()
		w.mu.Unlock()
		_, err := w.Conn.Write(w.spare)
		w.mu.Lock()
		w.busy = false
		if err != nil {
			w.err = err
			w.cond.Broadcast()
			return
		}
	}
}

// Close writes what is queued (for at most a second) and closes.
func (w *asyncConn) Close() error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		w.cond.Broadcast()
	}
	w.mu.Unlock()
	w.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	return w.Conn.Close()
}

type combineConn struct {
	net.Conn
	held []byte
	has  bool
}

func (c *combineConn) Write(p []byte) (int, error) {
	if !c.has && len(p) == 4096 {
		c.held = append(c.held[:0], p...)
		c.has = true
		return len(p), nil
	}
	if c.has {
		c.has = false
		bufs := net.Buffers{c.held, p}
		_, err := bufs.WriteTo(c.Conn)
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}
