package cbt

import (
	"errors"
	"strings"
	"testing"
)

const u1 = "52 de c0 d9 d6 1e 6f 93-f6 e0 01 2c 9a 47 6b a0"
const u2 = "52 11 22 33 44 55 66 77-88 99 aa bb cc dd ee ff"

func TestParseChangeID(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    ChangeID
		wantErr string
	}{
		{u1 + "/4", ChangeID{u1, 4}, ""},
		{"  " + u1 + "/0 ", ChangeID{u1, 0}, ""},
		{"52DEC0D9/18446744073709551615", ChangeID{"52DEC0D9", 18446744073709551615}, ""},
		{"", ChangeID{}, "empty"},
		{"*", ChangeID{}, "all areas"},
		{u1, ChangeID{}, "want UUID/sequence"},
		{"/4", ChangeID{}, "UUID part is empty"},
		{u1 + "/x", ChangeID{}, "not a number"},
		{u1 + "/-1", ChangeID{}, "not a number"},
		{"zz/1", ChangeID{}, "hex digits"},
	} {
		got, err := ParseChangeID(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseChangeID(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseChangeID(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if err == nil && got.String() != strings.TrimSpace(tc.in) {
			t.Errorf("String() = %q, want %q", got.String(), strings.TrimSpace(tc.in))
		}
	}
}

func TestCompare(t *testing.T) {
	a := ChangeID{u1, 3}
	for _, tc := range []struct {
		b    ChangeID
		want int
		err  bool
	}{
		{ChangeID{u1, 3}, 0, false},
		{ChangeID{u1, 4}, -1, false},
		{ChangeID{u1, 2}, 1, false},
		{ChangeID{strings.ToUpper(strings.ReplaceAll(u1, " ", "")), 3}, 0, false}, // same UUID, other spelling
		{ChangeID{u2, 3}, 0, true},
	} {
		got, err := Compare(a, tc.b)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("Compare(%v, %v) = %d, %v", a, tc.b, got, err)
		}
		if tc.err && !errors.Is(err, ErrDifferentEpoch) {
			t.Errorf("Compare error %v is not ErrDifferentEpoch", err)
		}
	}
}

func TestNeedFull(t *testing.T) {
	prev := &DiskState{Key: 2000, UUID: "6000C29a", Capacity: 1 << 30, ChangeID: u1 + "/4"}
	cur := DiskState{Key: 2000, UUID: "6000C29a", Capacity: 1 << 30, ChangeID: u1 + "/6"}
	with := func(f func(*DiskState)) DiskState { d := cur; f(&d); return d }
	for _, tc := range []struct {
		name   string
		prev   *DiskState
		cur    DiskState
		qerr   error
		full   bool
		reason string
	}{
		{"incremental", prev, cur, nil, false, "incremental since changeId " + u1 + "/4"},
		{"same changeId", prev, with(func(d *DiskState) { d.ChangeID = prev.ChangeID }), nil, false, "incremental"},
		{"no previous backup", nil, cur, nil, true, "no previous changeId"},
		{"no previous changeId", &DiskState{Key: 2000}, cur, nil, true, "no previous changeId"},
		{"CBT not active", prev, with(func(d *DiskState) { d.ChangeID = "" }), nil, true, "CBT is not active"},
		{"key changed", prev, with(func(d *DiskState) { d.Key = 2001 }), nil, true, "device key 2001, previously 2000"},
		{"disk UUID changed", prev, with(func(d *DiskState) { d.UUID = "6000C29b" }), nil, true, "disk UUID 6000C29b, previously 6000C29a"},
		{"capacity changed", prev, with(func(d *DiskState) { d.Capacity = 2 << 30 }), nil, true, "capacity changed from 1073741824 to 2147483648"},
		{"changeId UUID changed", prev, with(func(d *DiskState) { d.ChangeID = u2 + "/1" }), nil, true, "CBT was reset or enabled again"},
		{"changeId went backwards", prev, with(func(d *DiskState) { d.ChangeID = u1 + "/2" }), nil, true, "went backwards"},
		{"malformed previous", &DiskState{Key: 2000, UUID: "6000C29a", Capacity: 1 << 30, ChangeID: "junk"}, cur, nil, true, "previous malformed changeId"},
		{"query fault", prev, cur, errors.New("FileFault: cannot get changes"), true, "QueryChangedDiskAreas failed: FileFault"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			full, reason := NeedFull(tc.prev, tc.cur, tc.qerr)
			if full != tc.full || !strings.Contains(reason, tc.reason) {
				t.Fatalf("NeedFull = %v, %q; want %v, containing %q", full, reason, tc.full, tc.reason)
			}
		})
	}
}
