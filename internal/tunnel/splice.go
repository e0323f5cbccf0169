package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"

	"golang.org/x/crypto/ssh"
)

// spliceBufSize is the read size of each direction of a splice.
const spliceBufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, spliceBufSize); return &b }}

// splice copies between a local connection and a channel, both ways, until
// both directions end; an error in either closes both at once.
func (t *Tunnel) splice(local *net.UnixConn, ch ssh.Channel) {
	var once sync.Once
	abort := func() {
		once.Do(func() {
			local.Close()
			ch.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := t.pump(ch, local); err != nil {
			abort()
			return
		}
		ch.CloseWrite()
	}()
	if err := t.pump(local, ch); err != nil {
		abort()
	} else {
		local.CloseWrite()
	}
	wg.Wait()
	abort()
}

// pump copies src to dst through the rate limiter until EOF (nil) or an
// error.
func (t *Tunnel) pump(dst io.Writer, src io.Reader) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf[:t.lim.chunk(len(buf))])
		if n > 0 {
			if werr := t.lim.wait(t.ctx, n); werr != nil {
				return werr
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
