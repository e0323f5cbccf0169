package sshtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy on a loopback port that forwards every connection
// to a target address and can fail on demand: cut all connections now or
// after N more bytes, stall them (stop forwarding but keep them open, like
// a dead network path), or refuse new ones. Point a client at Proxy.Addr
// instead of the server.
//
// Bytes are counted in both directions together, over all connections.
type Proxy struct {
	Addr   string // "127.0.0.1:PORT" to connect to
	target string
	ln     net.Listener

	mu        sync.Mutex
	cond      *sync.Cond
	conns     map[*proxyConn]struct{}
	accepted  int
	forwarded int64
	budget    int64  // bytes left before the action below; -1 = no limit
	action    string // "cut" or "stall", applied when budget reaches 0
	stalled   bool
	refuse    bool
	closed    bool
	wg        sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn
	eof            int // directions that ended cleanly
}

// StartProxy starts a Proxy to target for the test; it is closed in
// t.Cleanup.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// NewProxy starts a Proxy to target. Close it with Close.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sshtest: proxy: %w", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[*proxyConn]struct{}{}, budget: -1}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse || p.closed
		if !refuse {
			p.accepted++
		}
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		pc := &proxyConn{client: c, server: s}
		p.mu.Lock()
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pc, s, c)
		go p.pipe(pc, c, s)
	}
}

// pipe copies src to dst, obeying stalls, budgets and cuts.
func (p *Proxy) pipe(pc *proxyConn, dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			m, ok := p.take(pc, len(data))
			if !ok {
				return
			}
			if _, werr := dst.Write(data[:m]); werr != nil {
				p.drop(pc)
				return
			}
			data = data[m:]
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok && p.halfClose(pc) {
					tc.CloseWrite()
					return
				}
			}
			p.drop(pc)
			return
		}
	}
}

// take waits until n bytes may pass on pc and returns how many may (fewer
// when a budget runs out); false means the connection was cut.
func (p *Proxy) take(pc *proxyConn, n int) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if _, ok := p.conns[pc]; !ok {
			return 0, false
		}
		if p.budget == 0 {
			switch p.action {
			case "cut":
				p.cutLocked()
				return 0, false
			case "stall":
				p.stalled = true
				p.budget = -1
			}
		}
		if !p.stalled {
			break
		}
		p.cond.Wait()
	}
	if p.budget > 0 && int64(n) > p.budget {
		n = int(p.budget)
	}
	if p.budget > 0 {
		p.budget -= int64(n)
	}
	p.forwarded += int64(n)
	return n, true
}

// halfClose records a clean end of one direction of pc; false when both
// have ended (then pc should be dropped).
func (p *Proxy) halfClose(pc *proxyConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc.eof++
	return pc.eof < 2
}

func (p *Proxy) drop(pc *proxyConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.conns[pc]; ok {
		delete(p.conns, pc)
		pc.client.Close()
		pc.server.Close()
		p.cond.Broadcast()
	}
}

func (p *Proxy) cutLocked() {
	for pc := range p.conns {
		pc.client.Close()
		pc.server.Close()
		delete(p.conns, pc)
	}
	p.budget, p.action = -1, ""
	p.cond.Broadcast()
}

// Cut closes every open connection now (new ones are still accepted).
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutLocked()
}

// CutAfter cuts every open connection once n more bytes have been
// forwarded (n = 0 cuts at the next byte).
func (p *Proxy) CutAfter(n int64) { p.after(n, "cut") }

// StallAfter stalls all connections once n more bytes have been forwarded.
func (p *Proxy) StallAfter(n int64) { p.after(n, "stall") }

func (p *Proxy) after(n int64, action string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.budget, p.action = n, action
	p.cond.Broadcast()
}

// Stall stops forwarding on all connections, which stay open: to the
// client the server simply goes silent.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

// Resume undoes Stall.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = false
	p.cond.Broadcast()
}

// Refuse makes the proxy close new connections at once (on) or accept
// them again (off), like a server that is down.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = on
}

// Forwarded is the number of bytes forwarded so far, both directions.
func (p *Proxy) Forwarded() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forwarded
}

// Accepted is the number of connections accepted so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Open is the number of connections open now.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.stalled = false
	p.cutLocked()
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}
