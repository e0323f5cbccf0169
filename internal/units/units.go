// Package units parses and formats byte sizes for command-line flags such
// as --request-size 256K and --rate 100M.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize parses a non-negative byte count: a decimal number with an
// optional binary suffix K, M, G, T, P or E (powers of 1024), optionally
// followed by "iB" or "B" ("64K", "64KiB", "64KB" are all 65536; "1.5G" is
// allowed when the result is a whole number of bytes). Case does not matter.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("invalid size %q: empty", s)
	}
	u := strings.ToUpper(t)
	needUnit := false
	switch {
	case strings.HasSuffix(u, "IB"):
		u, needUnit = u[:len(u)-2], true
	case strings.HasSuffix(u, "B"):
		u = u[:len(u)-1]
	}
	shift := 0
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		case 'P':
			shift = 50
		case 'E':
			shift = 60
		}
		if shift > 0 {
			u = u[:n-1]
		}
	}
	if needUnit && shift == 0 {
		return 0, fmt.Errorf("invalid size %q: expected a unit (K, M, G…) before iB", s)
	}
	if u == "" || strings.HasPrefix(u, "-") || strings.HasPrefix(u, "+") {
		return 0, fmt.Errorf("invalid size %q: expected a number such as 256K or 100M", s)
	}
	if i, err := strconv.ParseUint(u, 10, 64); err == nil {
		if shift > 0 && i > math.MaxInt64>>shift || shift == 0 && i > math.MaxInt64 {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		return int64(i) << shift, nil
	}
	f, err := strconv.ParseFloat(u, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid size %q: expected a number such as 256K or 100M", s)
	}
	v := f * float64(uint64(1)<<shift)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("invalid size %q: not a whole number of bytes", s)
	}
	return int64(v), nil
}

// FormatSize formats n bytes for people: "512 B", "1.5 KiB", "4.0 GiB".
func FormatSize(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// FormatRate formats a throughput given in MiB/s for people: "850 KiB/s",
// "7.5 MiB/s", "120 MiB/s" (never "0 MiB/s" for a slow but moving copy).
func FormatRate(mibps float64) string {
	switch {
	case mibps <= 0:
		return "0 B/s"
	case mibps < 1:
		return fmt.Sprintf("%.0f KiB/s", mibps*1024)
	case mibps < 10:
		return fmt.Sprintf("%.1f MiB/s", mibps)
	}
	return fmt.Sprintf("%.0f MiB/s", mibps)
}

// FormatDuration formats seconds as a clock: "0:07", "12:30", "1:02:03".
func FormatDuration(seconds float64) string {
	s := int64(math.Round(max(seconds, 0)))
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}
