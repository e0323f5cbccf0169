package tailbuf

import (
	"fmt"
	"strings"
	"testing"
)

func TestKeepsTheEnd(t *testing.T) {
	b := New(10)
	for i := range 5 {
		fmt.Fprintf(b, "line %d\n", i)
	}
	if got := b.String(); got != " 3\nline 4\n" {
		t.Fatalf("kept %q", got)
	}
	if n, _ := b.Write([]byte(strings.Repeat("x", 25))); n != 25 || b.String() != strings.Repeat("x", 10) {
		t.Fatalf("after a write longer than Max: %d %q", n, b.String())
	}
	all := New(0)
	fmt.Fprint(all, strings.Repeat("y", 1000))
	if len(all.Bytes()) != 1000 {
		t.Fatalf("Max 0 kept %d bytes", len(all.Bytes()))
	}
}

func TestLines(t *testing.T) {
	l := &Lines{N: 2, Match: func(s string) bool { return strings.Contains(s, "error:") }}
	for _, chunk := range []string{"debug: a\nnbdkit: error: one\n", "nbdkit: err", "or: two\nnbdkit: error: two\n", "x\nnbdkit: error: three\nnbdkit: error: four"} {
		l.Write([]byte(chunk))
	}
	got := strings.Join(l.Lines(), "|")
	if got != "nbdkit: error: two|nbdkit: error: three|nbdkit: error: four" {
		t.Fatalf("lines %q", got)
	}
	all := &Lines{N: 3}
	all.Write([]byte("a\nb\nc\nd\n"))
	if got := strings.Join(all.Lines(), "|"); got != "b|c|d" {
		t.Fatalf("last lines %q", got)
	}
}
