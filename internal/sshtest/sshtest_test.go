package sshtest

import (
	"bytes"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestServerOpenSSHClient(t *testing.T) {
	s := Start(t)
	out, err := exec.Command("ssh", append(s.SSHArgs(), "echo hello; id -un")...).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh: %v: %s", err, out)
	}
	if want := "hello\n" + s.User + "\n"; string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
}

func TestProxyForwardsAndCuts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	p := StartProxy(t, ln.Addr().String())
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("ping")
	c.Write(msg)
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %q %v", got, err)
	}
	if p.Forwarded() != 8 {
		t.Fatalf("forwarded %d, want 8", p.Forwarded())
	}

	p.Stall()
	c.Write(msg)
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(got); err == nil {
		t.Fatal("read through a stalled proxy")
	}
	p.Resume()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("after resume: %v", err)
	}

	p.CutAfter(6) // 4 bytes up, 2 down, then cut
	c.Write(msg)
	n, err := io.ReadFull(c, got)
	if err == nil || n != 2 {
		t.Fatalf("after CutAfter(6): read %d bytes, err %v; want 2 and an error", n, err)
	}
	if p.Open() != 0 {
		t.Fatalf("%d connections open after the cut", p.Open())
	}

	p.Refuse(true)
	c2, err := net.Dial("tcp", p.Addr)
	if err == nil {
		c2.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c2.Read(got); err == nil || strings.Contains(err.Error(), "timeout") {
			t.Fatalf("refused proxy: read err %v", err)
		}
		c2.Close()
	}
}
