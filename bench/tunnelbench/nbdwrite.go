package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// NBD protocol constants (newstyle fixed negotiation, simple replies).
const (
	nbdMagic         = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic      = 0x49484156454f5054 // "IHAVEOPT"
	nbdOptExportName = 1
	nbdFlagFixed     = 1 << 0
	nbdFlagNoZeroes  = 1 << 1
	nbdRequestMagic  = 0x25609513
	nbdReplyMagic    = 0x67446698
	nbdCmdWrite      = 1
	nbdCmdDisc       = 2
	nbdCmdFlush      = 3

	fSetPipeSize   = 1031 // F_SETPIPE_SZ
	spliceMove     = 1    // SPLICE_F_MOVE
	spliceNonblock = 2    // SPLICE_F_NONBLOCK
)

// nbdwrite writes FILE to the NBD server at the unix socket SOCKET (a
// nbd+unix:///?socket= URI is accepted too) with pipelined NBD_CMD_WRITE
// requests whose payload goes from the page cache to the socket with
// splice(2), so that the file's data crosses into user space only in the
// tunnel, as it does only in ssh when ssh reads the file. Then it flushes
// and disconnects. Requests are 256 KiB (as in nbdcopy and sendense copy),
// 16 in flight, on one connection; $NBDW_REQ (bytes), $NBDW_INFLIGHT and
// $NBDW_CONNS (connections, each writing a contiguous part of the file)
// change that for experiments.
func nbdwrite(args []string) error {
	if len(args) != 2 {
		return errors.New("nbdwrite FILE SOCKET|URI")
	}
	sock := strings.TrimPrefix(args[1], "nbd+unix:///?socket=")
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	conns := 1
	if v, err := strconv.Atoi(os.Getenv("NBDW_CONNS")); err == nil && v > 0 {
		conns = v
	}
	const align = 1 << 20
	part := (st.Size()/int64(conns) + align - 1) / align * align
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		start, end := int64(i)*part, min(int64(i+1)*part, st.Size())
		go func() { errs <- writeRange(f, sock, start, end) }()
	}
	for i := 0; i < conns; i++ {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err == nil {
		fmt.Fprintln(os.Stderr, "nbdwrite: wrote", strconv.FormatInt(st.Size(), 10), "bytes")
	}
	return err
}

// writeRange writes bytes [start, end) of f on a new connection to sock.
func writeRange(f *os.File, sock string, start, end int64) error {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	uc := c.(*net.UnixConn)

	// Handshake: greeting, client flags, NBD_OPT_EXPORT_NAME "".
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return fmt.Errorf("nbd greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != nbdOptMagic {
		return errors.New("not an NBD newstyle server")
	}
	var opt [20]byte
	binary.BigEndian.PutUint32(opt[0:], nbdFlagFixed|nbdFlagNoZeroes)
	binary.BigEndian.PutUint64(opt[4:], nbdOptMagic)
	binary.BigEndian.PutUint32(opt[12:], nbdOptExportName)
	binary.BigEndian.PutUint32(opt[16:], 0)
	if _, err := c.Write(opt[:]); err != nil {
		return err
	}
	var export [10]byte
	if _, err := io.ReadFull(c, export[:]); err != nil {
		return fmt.Errorf("nbd export: %w", err)
	}
	if size := int64(binary.BigEndian.Uint64(export[:])); size < end {
		return fmt.Errorf("export is %d bytes, file %d", size, end)
	}

	reqSize, inFlight := int64(256<<10), 16
	if v, err := strconv.ParseInt(os.Getenv("NBDW_REQ"), 10, 64); err == nil {
		reqSize = v
	}
	if v, err := strconv.Atoi(os.Getenv("NBDW_INFLIGHT")); err == nil {
		inFlight = v
	}
	slots := make(chan struct{}, inFlight)
	replies := make(chan error, 1)
	nreq := (end - start + reqSize - 1) / reqSize
	go func() {
		var r [16]byte
		for i := int64(0); i < nreq+1; i++ { // writes and the flush
			if _, err := io.ReadFull(c, r[:]); err != nil {
				replies <- fmt.Errorf("nbd reply: %w", err)
				return
			}
			if binary.BigEndian.Uint32(r[0:]) != nbdReplyMagic {
				replies <- errors.New("bad NBD reply magic")
				return
			}
			if e := binary.BigEndian.Uint32(r[4:]); e != 0 {
				replies <- fmt.Errorf("NBD error %d", e)
				return
			}
			<-slots
		}
		replies <- nil
	}()
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var hdr [28]byte
	request := func(typ uint16, off int64, n int) error {
		binary.BigEndian.PutUint32(hdr[0:], nbdRequestMagic)
		binary.BigEndian.PutUint16(hdr[4:], 0)
		binary.BigEndian.PutUint16(hdr[6:], typ)
		binary.BigEndian.PutUint64(hdr[8:], uint64(off))
		binary.BigEndian.PutUint64(hdr[16:], uint64(off))
		binary.BigEndian.PutUint32(hdr[24:], uint32(n))
		_, err := c.Write(hdr[:])
		return err
	}
	// Each request goes to the socket in one splice from a pipe holding
	// its header (written) and its payload (spliced from the page cache),
	// as a client sending header and payload in one write would.
	var pipe [2]int
	if err := syscall.Pipe2(pipe[:], syscall.O_CLOEXEC); err != nil {
		return err
	}
	defer syscall.Close(pipe[0])
	defer syscall.Close(pipe[1])
	if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(pipe[1]), fSetPipeSize, uintptr(reqSize+4096)); e != 0 {
		return fmt.Errorf("F_SETPIPE_SZ %d: %w", reqSize+4096, e)
	}
	for off := start; off < end; off += reqSize {
		n := int(min(reqSize, end-off))
		slots <- struct{}{}
		binary.BigEndian.PutUint32(hdr[0:], nbdRequestMagic)
		binary.BigEndian.PutUint16(hdr[4:], 0)
		binary.BigEndian.PutUint16(hdr[6:], nbdCmdWrite)
		binary.BigEndian.PutUint64(hdr[8:], uint64(off))
		binary.BigEndian.PutUint64(hdr[16:], uint64(off))
		binary.BigEndian.PutUint32(hdr[24:], uint32(n))
		if _, err := syscall.Write(pipe[1], hdr[:]); err != nil {
			return fmt.Errorf("pipe: %w", err)
		}
		for pos, left := off, n; left > 0; {
			k, err := syscall.Splice(int(f.Fd()), &pos, pipe[1], nil, left, spliceMove)
			if err != nil {
				return fmt.Errorf("splice from the file: %w", err)
			}
			left -= int(k)
		}
		left := n + len(hdr)
		var serr error
		werr := rc.Write(func(fd uintptr) bool {
			for left > 0 {
				k, err := syscall.Splice(pipe[0], nil, int(fd), nil, left, spliceMove|spliceNonblock)
				if errors.Is(err, syscall.EAGAIN) {
					return false
				}
				if err != nil {
					serr = err
					return true
				}
				left -= int(k)
			}
			return true
		})
		if werr != nil {
			return werr
		}
		if serr != nil {
			return fmt.Errorf("splice to the socket: %w", serr)
		}
	}
	slots <- struct{}{}
	if err := request(nbdCmdFlush, 0, 0); err != nil {
		return err
	}
	if err := <-replies; err != nil {
		return err
	}
	request(nbdCmdDisc, 0, 0)
	return nil
}
