// Package tailbuf keeps the end of a child process's standard error: the
// part that says why it failed, bounded however much it writes.
package tailbuf

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer that keeps the last Max bytes written to it (all
// of them when Max is 0). It is safe for concurrent use.
type Buffer struct {
	Max int

	mu  sync.Mutex
	buf []byte
}

// New returns a Buffer keeping the last max bytes.
func New(max int) *Buffer { return &Buffer{Max: max} }

func (t *Buffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.Max; t.Max > 0 && over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

// Bytes returns a copy of what is kept.
func (t *Buffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.buf...)
}

func (t *Buffer) String() string { return string(t.Bytes()) }

// Lines is an io.Writer that keeps the last N complete lines written to
// it for which Match returns true (every line when Match is nil), without
// repeating a line equal to the one kept before it: a child that says the
// same error once per connection is quoted once. It is safe for
// concurrent use.
type Lines struct {
	N     int
	Match func(line string) bool

	mu      sync.Mutex
	partial []byte
	lines   []string
}

func (l *Lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	buf := append(l.partial, p...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		l.add(string(bytes.TrimRight(buf[:i], "\r")))
		buf = buf[i+1:]
	}
	if len(buf) > 4096 { // a line that never ends: keep its start
		buf = buf[:4096]
	}
	l.partial = append(l.partial[:0], buf...)
	return len(p), nil
}

func (l *Lines) add(line string) {
	if l.Match != nil && !l.Match(line) {
		return
	}
	if n := len(l.lines); n > 0 && l.lines[n-1] == line {
		return
	}
	l.lines = append(l.lines, line)
	if max := max(l.N, 1); len(l.lines) > max {
		l.lines = append(l.lines[:0], l.lines[len(l.lines)-max:]...)
	}
}

// Lines returns the lines kept, oldest first, with a last unfinished line
// if it matches.
func (l *Lines) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]string(nil), l.lines...)
	if p := string(l.partial); p != "" && (l.Match == nil || l.Match(p)) && (len(out) == 0 || out[len(out)-1] != p) {
		out = append(out, p)
	}
	return out
}
