package plugin

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sendense/capture/internal/extent"
)

// ReadChangedAreas parses a changed-areas= file: one "OFFSET LENGTH" pair
// of byte counts per line (decimal, or 0x hexadecimal), blank lines and
// "#" comments ignored. Areas may overlap and come in any order; the
// result is in normal form.
func ReadChangedAreas(path string) (extent.List, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("changed-areas: %w", err)
	}
	defer f.Close()
	var areas []extent.Extent
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		bad := func(why string) error {
			return fmt.Errorf("changed-areas: %s line %d: %s (expected 'OFFSET LENGTH' in bytes): %q", path, line, why, sc.Text())
		}
		if len(fields) != 2 {
			return nil, bad(fmt.Sprintf("%d fields", len(fields)))
		}
		off, err := strconv.ParseUint(fields[0], 0, 64)
		if err != nil {
			return nil, bad("bad offset")
		}
		length, err := strconv.ParseUint(fields[1], 0, 64)
		if err != nil {
			return nil, bad("bad length")
		}
		if off+length < off {
			return nil, bad("area wraps around")
		}
		areas = append(areas, extent.Extent{Offset: off, Length: length})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("changed-areas: %s: %w", path, err)
	}
	return extent.Normalize(areas), nil
}
