// Package retention decides which restore points a calendar retention
// policy keeps, with the semantics of restic's `forget` (docs/retention.md):
//
//   - the points are considered newest first;
//   - --keep-last N keeps the N newest points;
//   - --keep-hourly/daily/weekly/monthly/yearly N keep, for each of the N
//     newest hours, days, ISO weeks, months or years that have a point,
//     the newest point of that period; when fewer than N such periods
//     exist, the oldest point is kept too (the longest history the count
//     allows);
//   - N = -1 means every period (unlimited);
//   - --keep-within D keeps every point taken less than D (years, months,
//     days, hours: "1y6m", "30d", "12h") before the newest point that is
//     not in the future;
//   - a point is kept when any rule keeps it (the union), and the rules
//     that keep it are its reasons.
//
// Periods are calendar periods in Policy.Location (the local time zone of
// the machine unless set), as restic counts them in the backup host's
// local time.
package retention

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Unlimited as a count keeps every period.
const Unlimited = -1

// Policy is a retention policy. The zero value keeps everything.
type Policy struct {
	Last    int // the newest N points
	Hourly  int // the newest point of each of the N newest hours
	Daily   int
	Weekly  int // ISO weeks (Monday to Sunday)
	Monthly int
	Yearly  int
	Within  Duration // every point less than Within older than the newest

	// Location is the time zone of the calendar periods (nil: time.Local).
	Location *time.Location
	// Now is the present: points after it are never the newest point
	// Within counts from (zero: time.Now()).
	Now time.Time
}

// Point is a restore point as the policy sees it.
type Point struct {
	ID   string
	Time time.Time // when the backup started
}

// Empty reports whether the policy has no rule (it keeps everything).
func (p Policy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0 && p.Within.Zero()
}

// Check validates the counts and the duration, naming the flag to fix.
func (p Policy) Check() error {
	for _, c := range p.counts() {
		if *c.n < Unlimited {
			return fmt.Errorf("--keep-%s must be a count of at least 0, or -1 for unlimited, not %d", c.name, *c.n)
		}
	}
	if p.Within.negative() {
		return fmt.Errorf("--keep-within must not be negative, not %s", p.Within)
	}
	return nil
}

type count struct {
	name   string
	n      *int
	period func(t time.Time) string // the calendar period of t ("" for last)
}

func (p *Policy) counts() []count {
	return []count{
		{"last", &p.Last, nil},
		{"hourly", &p.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15h") }},
		{"daily", &p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", &p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%04d-W%02d", y, w) }},
		{"monthly", &p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", &p.Yearly, func(t time.Time) string { return t.Format("2006") }},
	}
}

// String describes the policy: "keep 7 daily, 4 weekly and all within 30d
// of the newest".
func (p Policy) String() string {
	var parts []string
	for _, c := range p.counts() {
		switch {
		case *c.n > 0:
			parts = append(parts, fmt.Sprintf("%d %s", *c.n, c.name))
		case *c.n == Unlimited:
			parts = append(parts, "all "+c.name)
		}
	}
	if !p.Within.Zero() {
		parts = append(parts, "all within "+p.Within.String()+" of the newest")
	}
	switch len(parts) {
	case 0:
		return "keep everything"
	case 1:
		return "keep " + parts[0]
	}
	return "keep " + strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// Apply returns the ids of the points the policy keeps, each with the
// reasons it is kept (in the order of the rules: last, hourly, daily,
// weekly, monthly, yearly, within). The others are to be removed. Points
// with the same time are taken in the order given. An empty policy keeps
// every point ("no retention rule").
func (p Policy) Apply(points []Point) map[string][]string {
	list := append([]Point(nil), points...)
	sort.SliceStable(list, func(i, j int) bool { return list[i].Time.After(list[j].Time) })
	keep := map[string][]string{}
	if p.Empty() {
		for _, pt := range list {
			keep[pt.ID] = []string{"no retention rule"}
		}
		return keep
	}
	if len(list) == 0 {
		return keep
	}
	loc := p.Location
	if loc == nil {
		loc = time.Local
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	var newest time.Time // the newest point not in the future
	for _, pt := range list {
		if pt.Time.After(newest) && !pt.Time.After(now) {
			newest = pt.Time
		}
	}
	since := p.Within.Before(newest.In(loc))

	rules := p.counts()
	left := make([]int, len(rules))
	last := make([]string, len(rules))
	for i, r := range rules {
		left[i] = *r.n
	}
	for nr, pt := range list {
		t := pt.Time.In(loc)
		oldest := nr == len(list)-1
		var why []string
		for i, r := range rules {
			if left[i] == 0 {
				continue
			}
			period := strconv.Itoa(nr) // "last": every point is its own period
			if r.period != nil {
				period = r.period(t)
			}
			if period == last[i] && !oldest {
				continue
			}
			reason := r.name
			if r.period != nil {
				reason += " " + period
			}
			if period == last[i] {
				reason += " (oldest point)"
			}
			why = append(why, reason)
			last[i] = period
			if left[i] > 0 {
				left[i]--
			}
		}
		if !p.Within.Zero() && pt.Time.After(since) {
			why = append(why, "within "+p.Within.String())
		}
		if len(why) > 0 {
			keep[pt.ID] = why
		}
	}
	return keep
}

// Duration is a calendar duration, as restic's --keep-within takes it:
// years, months, days and hours ("1y6m", "30d", "2d12h").
type Duration struct {
	Years, Months, Days, Hours int
}

// ParseDuration parses "6y5m234d37h" (any of the parts, in any order, each
// at most once).
func ParseDuration(s string) (Duration, error) {
	var d Duration
	rest := strings.TrimSpace(s)
	if rest == "" {
		return d, fmt.Errorf("empty duration: use years, months, days and hours, e.g. 30d, 1y6m, 12h")
	}
	seen := map[byte]bool{}
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 {
			return Duration{}, fmt.Errorf("invalid duration %q: a number must come before each unit (y, m, d, h), e.g. 30d, 1y6m", s)
		}
		if i == len(rest) {
			return Duration{}, fmt.Errorf("invalid duration %q: no unit after %s (y, m, d or h)", s, rest)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil || n > 100000 {
			return Duration{}, fmt.Errorf("invalid duration %q: number %s too large", s, rest[:i])
		}
		unit := rest[i]
		if seen[unit] {
			return Duration{}, fmt.Errorf("invalid duration %q: unit %c given twice", s, unit)
		}
		seen[unit] = true
		switch unit {
		case 'y':
			d.Years = n
		case 'm':
			d.Months = n
		case 'd':
			d.Days = n
		case 'h':
			d.Hours = n
		default:
			return Duration{}, fmt.Errorf("invalid duration %q: unknown unit %q (y, m, d or h)", s, unit)
		}
		rest = rest[i+1:]
	}
	return d, nil
}

// Zero reports whether the duration is empty.
func (d Duration) Zero() bool { return d == Duration{} }

func (d Duration) negative() bool { return d.Years < 0 || d.Months < 0 || d.Days < 0 || d.Hours < 0 }

// Before returns t minus the duration (calendar arithmetic, as restic).
func (d Duration) Before(t time.Time) time.Time {
	return t.AddDate(-d.Years, -d.Months, -d.Days).Add(-time.Duration(d.Hours) * time.Hour)
}

func (d Duration) String() string {
	var b strings.Builder
	for _, p := range []struct {
		n    int
		unit string
	}{{d.Years, "y"}, {d.Months, "m"}, {d.Days, "d"}, {d.Hours, "h"}} {
		if p.n != 0 {
			fmt.Fprintf(&b, "%d%s", p.n, p.unit)
		}
	}
	return b.String() // "" for zero
}

// Set implements pflag.Value (--keep-within); "" is zero (no rule).
func (d *Duration) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		*d = Duration{}
		return nil
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Type implements pflag.Value.
func (d *Duration) Type() string { return "duration" }

// UnmarshalText reads the duration from the configuration file.
func (d *Duration) UnmarshalText(b []byte) error { return d.Set(string(b)) }

// MarshalText writes the duration as ParseDuration reads it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }
