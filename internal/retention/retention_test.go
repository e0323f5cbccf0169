package retention

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// zone is the local time zone of the synthetic repository: its calendar
// days differ from UTC's for backups taken after 22:00 UTC.
var zone = time.FixedZone("UTC+2", 2*3600)

// twoYears is a backup every day at 22:00 local time from 2025-01-01 to
// 2026-12-31, plus three more on the last day (08:00, 09:15, 09:45).
// Ids are "YYYY-MM-DD HH:MM" local.
func twoYears() []Point {
	var pts []Point
	for d := time.Date(2025, 1, 1, 22, 0, 0, 0, zone); d.Year() < 2027; d = d.AddDate(0, 0, 1) {
		pts = append(pts, point(d))
	}
	for _, hm := range [][2]int{{8, 0}, {9, 15}, {9, 45}} {
		pts = append(pts, point(time.Date(2026, 12, 31, hm[0], hm[1], 0, 0, zone)))
	}
	return pts
}

func point(t time.Time) Point {
	// Stored as the repository stores start times: in UTC.
	return Point{ID: t.Format("2006-01-02 15:04"), Time: t.UTC()}
}

// days names the 22:00 backups of the given days.
func days(ds ...string) []string {
	var ids []string
	for _, d := range ds {
		ids = append(ids, d+" 22:00")
	}
	return ids
}

func TestTwoYears(t *testing.T) {
	pts := twoYears()
	if len(pts) != 733 {
		t.Fatalf("%d points", len(pts))
	}
	monthEnds2026 := days("2026-12-31", "2026-11-30", "2026-10-31", "2026-09-30", "2026-08-31", "2026-07-31",
		"2026-06-30", "2026-05-31", "2026-04-30", "2026-03-31", "2026-02-28", "2026-01-31")
	monthEnds2025 := days("2025-12-31", "2025-11-30", "2025-10-31", "2025-09-30", "2025-08-31", "2025-07-31",
		"2025-06-30", "2025-05-31", "2025-04-30", "2025-03-31", "2025-02-28", "2025-01-31")
	for _, tc := range []struct {
		name string
		p    Policy
		want []string
	}{
		{"last 3", Policy{Last: 3}, []string{"2026-12-31 22:00", "2026-12-31 09:45", "2026-12-31 09:15"}},
		// The newest point of each of the 3 newest hours.
		{"hourly 3", Policy{Hourly: 3}, []string{"2026-12-31 22:00", "2026-12-31 09:45", "2026-12-31 08:00"}},
		{"daily 7", Policy{Daily: 7}, days("2026-12-31", "2026-12-30", "2026-12-29", "2026-12-28", "2026-12-27", "2026-12-26", "2026-12-25")},
		// ISO weeks: 2026-12-31 is a Thursday of week 53; weeks end on Sundays.
		{"weekly 4", Policy{Weekly: 4}, days("2026-12-31", "2026-12-27", "2026-12-20", "2026-12-13")},
		{"monthly 3", Policy{Monthly: 3}, days("2026-12-31", "2026-11-30", "2026-10-31")},
		// Only two years have points: the oldest point is kept as well.
		{"yearly 5", Policy{Yearly: 5}, days("2026-12-31", "2025-12-31", "2025-01-01")},
		// Every month, and the oldest point (an unlimited count never runs out).
		{"monthly unlimited", Policy{Monthly: Unlimited}, append(append(slices.Clone(monthEnds2026), monthEnds2025...), "2025-01-01 22:00")},
		// Newer than 2026-12-29 22:00 local: that one is not kept.
		{"within 2d", Policy{Within: Duration{Days: 2}}, []string{"2026-12-31 22:00", "2026-12-31 09:45", "2026-12-31 09:15", "2026-12-31 08:00", "2026-12-30 22:00"}},
		{"within 1m", Policy{Within: Duration{Months: 1}}, func() []string {
			ids := []string{"2026-12-31 09:45", "2026-12-31 09:15", "2026-12-31 08:00"}
			// One month before 2026-12-31 is "2026-11-31", that is
			// 2026-12-01 (calendar arithmetic normalises, as restic's):
			// 2026-12-01 22:00 is not newer, so not kept.
			for d := 31; d >= 2; d-- {
				ids = append(ids, fmt.Sprintf("2026-12-%02d 22:00", d))
			}
			return ids
		}()},
		// A typical policy: the union of the rules.
		{"daily 7 weekly 4 monthly 12 yearly 2", Policy{Daily: 7, Weekly: 4, Monthly: 12, Yearly: 2},
			append(append(days("2026-12-30", "2026-12-29", "2026-12-28", "2026-12-27", "2026-12-26", "2026-12-25",
				"2026-12-20", "2026-12-13"), monthEnds2026...), "2025-12-31 22:00")},
		{"last 1 within 1d", Policy{Last: 1, Within: Duration{Days: 1}},
			[]string{"2026-12-31 22:00", "2026-12-31 09:45", "2026-12-31 09:15", "2026-12-31 08:00"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Location, tc.p.Now = zone, time.Date(2027, 1, 1, 0, 0, 0, 0, zone)
			if err := tc.p.Check(); err != nil {
				t.Fatal(err)
			}
			got := tc.p.Apply(pts)
			var ids []string
			for id := range got {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			want = slices.Compact(want)
			if !slices.Equal(ids, want) {
				t.Fatalf("kept %d:\n%s\nwant %d:\n%s", len(ids), strings.Join(ids, "\n"), len(want), strings.Join(want, "\n"))
			}
		})
	}
}

func TestReasons(t *testing.T) {
	p := Policy{Last: 1, Daily: 7, Weekly: 4, Monthly: 12, Yearly: 5, Within: Duration{Days: 2}, Location: zone,
		Now: time.Date(2027, 1, 1, 0, 0, 0, 0, zone)}
	got := p.Apply(twoYears())
	for id, want := range map[string][]string{
		"2026-12-31 22:00": {"last", "daily 2026-12-31", "weekly 2026-W53", "monthly 2026-12", "yearly 2026", "within 2d"},
		"2026-12-31 09:45": {"within 2d"},
		"2026-12-27 22:00": {"daily 2026-12-27", "weekly 2026-W52"},
		"2025-12-31 22:00": {"yearly 2025"},
		"2025-01-01 22:00": {"yearly 2025 (oldest point)"},
	} {
		if !slices.Equal(got[id], want) {
			t.Errorf("%s: reasons %q, want %q", id, got[id], want)
		}
	}
	if s := p.String(); s != "keep 1 last, 7 daily, 4 weekly, 12 monthly, 5 yearly and all within 2d of the newest" {
		t.Errorf("String: %q", s)
	}
}

// TestTimeZone: calendar periods are those of Policy.Location.
func TestTimeZone(t *testing.T) {
	a := point(time.Date(2026, 6, 10, 0, 30, 0, 0, zone))  // 2026-06-09 22:30 UTC
	b := point(time.Date(2026, 6, 10, 23, 30, 0, 0, zone)) // 2026-06-10 21:30 UTC
	c := point(time.Date(2026, 6, 9, 12, 0, 0, 0, zone))   // 2026-06-09 10:00 UTC
	pts := []Point{a, b, c}
	for _, tc := range []struct {
		loc  *time.Location
		want []string
	}{
		{zone, []string{b.ID, c.ID}},     // days 06-10 (b), 06-09 (c)
		{time.UTC, []string{b.ID, a.ID}}, // days 06-10 (b), 06-09 (a); c is the oldest, but the count is used up
	} {
		got := Policy{Daily: 2, Location: tc.loc}.Apply(pts)
		var ids []string
		for id := range got {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		slices.Sort(tc.want)
		if !slices.Equal(ids, tc.want) {
			t.Errorf("%s: kept %v, want %v", tc.loc, ids, tc.want)
		}
	}
}

// TestFuture: a point from the future (a wrong clock) is not the newest
// point --keep-within counts from.
func TestFuture(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	pts := []Point{
		{"future", now.Add(10 * 24 * time.Hour)},
		{"hour-ago", now.Add(-time.Hour)},
		{"30h-ago", now.Add(-30 * time.Hour)},
	}
	got := Policy{Within: Duration{Days: 1}, Now: now, Location: time.UTC}.Apply(pts)
	if _, ok := got["30h-ago"]; ok || len(got) != 2 {
		t.Fatalf("kept %v", got)
	}
}

func TestEmptyAndEdges(t *testing.T) {
	pts := twoYears()[:5]
	if got := (Policy{}).Apply(pts); len(got) != 5 {
		t.Fatalf("empty policy kept %d of 5", len(got))
	}
	if got := (Policy{Daily: 3}).Apply(nil); len(got) != 0 {
		t.Fatalf("no points: %v", got)
	}
	// Points with the same time: the first given counts as the newer.
	same := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := Policy{Last: 1}.Apply([]Point{{"x", same}, {"y", same}})
	if _, ok := got["x"]; !ok || len(got) != 1 {
		t.Fatalf("same time: %v", got)
	}
	if err := (Policy{Daily: -2}).Check(); err == nil || !strings.Contains(err.Error(), "--keep-daily") {
		t.Fatalf("Check(-2): %v", err)
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Duration
		err  string
	}{
		{"30d", Duration{Days: 30}, ""},
		{"1y6m", Duration{Years: 1, Months: 6}, ""},
		{"2d12h", Duration{Days: 2, Hours: 12}, ""},
		{" 12h ", Duration{Hours: 12}, ""},
		{"", Duration{}, "empty duration"},
		{"30", Duration{}, "no unit"},
		{"d", Duration{}, "a number must come before"},
		{"3w", Duration{}, "unknown unit"},
		{"1d1d", Duration{}, "given twice"},
		{"-1d", Duration{}, "a number must come before"},
	} {
		got, err := ParseDuration(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("%q: %+v, %v", tc.in, got, err)
		case tc.err == "" && got.String() != strings.TrimSpace(tc.in):
			t.Errorf("%q: String %q", tc.in, got.String())
		}
	}
}
