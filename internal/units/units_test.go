package units

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"512", 512, true},
		{"512B", 512, true},
		{"256K", 256 << 10, true},
		{"256k", 256 << 10, true},
		{"64KiB", 64 << 10, true},
		{"64KB", 64 << 10, true},
		{"100M", 100 << 20, true},
		{"1G", 1 << 30, true},
		{"1.5G", 3 << 29, true},
		{" 4T ", 4 << 40, true},
		{"1E", 1 << 60, true},
		{"8E", 0, false},
		{"", 0, false},
		{"K", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"1.5", 0, false},
		{"0.1K", 0, false},
		{"12iB", 0, false},
		{"abc", 0, false},
		{"10X", 0, false},
		{"NaN", 0, false},
		{"99999999999999999999", 0, false},
	} {
		got, err := ParseSize(tc.in)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
		if !tc.ok && err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", tc.in, got)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   uint64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{4 << 30, "4.0 GiB"},
		{1 << 62, "4.0 EiB"},
	} {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestFormatRateAndDuration(t *testing.T) {
	for _, tc := range []struct {
		mibps float64
		want  string
	}{{0, "0 B/s"}, {0.3, "307 KiB/s"}, {2, "2.0 MiB/s"}, {7.46, "7.5 MiB/s"}, {120.4, "120 MiB/s"}} {
		if got := FormatRate(tc.mibps); got != tc.want {
			t.Errorf("FormatRate(%v) = %q, want %q", tc.mibps, got, tc.want)
		}
	}
	for _, tc := range []struct {
		s    float64
		want string
	}{{0, "0:00"}, {7.4, "0:07"}, {750, "12:30"}, {3723, "1:02:03"}, {-1, "0:00"}} {
		if got := FormatDuration(tc.s); got != tc.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", tc.s, got, tc.want)
		}
	}
}
