// Package ptytest gives tests a pseudo-terminal of a chosen size and a
// small terminal emulator to read what a program drew on it: enough of a
// VT100 for sendense's progress display (printable text, CR, LF, cursor
// up, erase line, erase below), and it records whether a line ever
// reached the right margin and wrapped.
package ptytest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Pty is an open pseudo-terminal: the program gets Slave, the test reads
// Master.
type Pty struct {
	Master, Slave *os.File
}

// Open opens a pseudo-terminal of cols x rows.
func Open(cols, rows int) (*Pty, error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, fmt.Errorf("unlocking the pty: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("pty number: %w", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, err
	}
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Col: uint16(cols), Row: uint16(rows)}); err != nil {
		m.Close()
		s.Close()
		return nil, fmt.Errorf("pty size: %w", err)
	}
	return &Pty{Master: m, Slave: s}, nil
}

// Close closes both ends.
func (p *Pty) Close() {
	p.Slave.Close()
	p.Master.Close()
}

// Screen emulates a terminal of Cols x Rows fed by Write.
type Screen struct {
	Cols, Rows int

	mu       sync.Mutex
	lines    [][]rune // Rows lines; Scrolled keeps what went off the top
	scrolled []string
	row, col int
	esc      []byte // an escape sequence being read
	partial  []byte // an incomplete UTF-8 sequence
	wraps    []string
	raw      []byte // everything written
}

// NewScreen returns an empty screen.
func NewScreen(cols, rows int) *Screen {
	s := &Screen{Cols: cols, Rows: rows}
	s.lines = make([][]rune, rows)
	for i := range s.lines {
		s.lines[i] = blank(cols)
	}
	return s
}

func blank(n int) []rune { return []rune(strings.Repeat(" ", n)) }

// Write feeds output of the program.
func (s *Screen) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.raw = append(s.raw, p...)
	buf := append(s.partial, p...)
	s.partial = nil
	for len(buf) > 0 {
		if s.esc != nil {
			c := buf[0]
			buf = buf[1:]
			s.esc = append(s.esc, c)
			if len(s.esc) == 1 && c != '[' {
				s.esc = nil // not a CSI: ignored
				continue
			}
			if c >= 0x40 && c <= 0x7e && len(s.esc) > 1 {
				s.csi(string(s.esc[1:len(s.esc)-1]), c)
				s.esc = nil
			}
			continue
		}
		r, size := utf8.DecodeRune(buf)
		if r == utf8.RuneError && size <= 1 && !utf8.FullRune(buf) {
			s.partial = append([]byte(nil), buf...)
			break
		}
		buf = buf[size:]
		switch r {
		case 0x1b:
			s.esc = []byte{}
		case '\r':
			s.col = 0
		case '\n':
			s.lineFeed()
		case '\b':
			s.col = max(0, s.col-1)
		case '\t':
			s.col = min(s.Cols-1, (s.col/8+1)*8)
		default:
			if r < 0x20 {
				continue
			}
			if s.col >= s.Cols { // past the margin: the terminal wraps
				s.wraps = append(s.wraps, string(s.lines[s.row]))
				s.col = 0
				s.lineFeed()
			}
			s.lines[s.row][s.col] = r
			s.col++
		}
	}
	return len(p), nil
}

func (s *Screen) lineFeed() {
	if s.row < s.Rows-1 {
		s.row++
		return
	}
	s.scrolled = append(s.scrolled, strings.TrimRight(string(s.lines[0]), " "))
	copy(s.lines, s.lines[1:])
	s.lines[s.Rows-1] = blank(s.Cols)
}

func (s *Screen) csi(params string, cmd byte) {
	n, err := strconv.Atoi(params)
	if err != nil || n < 1 {
		n = 1
	}
	switch cmd {
	case 'A':
		s.row = max(0, s.row-n)
	case 'B':
		s.row = min(s.Rows-1, s.row+n)
	case 'C':
		s.col = min(s.Cols-1, s.col+n)
	case 'D':
		s.col = max(0, s.col-n)
	case 'K': // erase line: 0 to the end, 1 to the start, 2 all
		switch params {
		case "", "0":
			for i := s.col; i < s.Cols; i++ {
				s.lines[s.row][i] = ' '
			}
		case "1":
			for i := 0; i <= min(s.col, s.Cols-1); i++ {
				s.lines[s.row][i] = ' '
			}
		case "2":
			s.lines[s.row] = blank(s.Cols)
		}
	case 'J': // erase below (0) or all (2)
		if params == "2" {
			for i := range s.lines {
				s.lines[i] = blank(s.Cols)
			}
			return
		}
		for i := s.col; i < s.Cols; i++ {
			s.lines[s.row][i] = ' '
		}
		for r := s.row + 1; r < s.Rows; r++ {
			s.lines[r] = blank(s.Cols)
		}
	}
}

// Lines returns what scrolled off the top, then the screen's lines, with
// trailing blanks and empty lines at the bottom removed.
func (s *Screen) Lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]string(nil), s.scrolled...)
	for _, l := range s.lines {
		out = append(out, strings.TrimRight(string(l), " "))
	}
	for len(out) > 0 && out[len(out)-1] == "" {
		out = out[:len(out)-1]
	}
	return out
}

// Wraps returns the lines that reached the right margin and wrapped.
func (s *Screen) Wraps() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.wraps...)
}

// Snapshot is the screen now, one string.
func (s *Screen) Snapshot() string { return strings.Join(s.Lines(), "\n") }

// Raw returns everything the program wrote, escape sequences included.
func (s *Screen) Raw() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.raw)
}
