package cbt

import (
	"strings"
	"testing"
	"time"
)

func TestSnapshotOwner(t *testing.T) {
	o := SnapshotOwner{Format: OwnerFormat, Job: "20260101T101010Z-abc123", Host: "0123456789abcdef0123456789abcdef",
		Boot: "fd2488e3-9e4c-4fc1-b0cd-3cbfb6f3e901", PID: 4242, PIDStart: 123456,
		Started: time.Date(2026, 1, 1, 10, 10, 10, 0, time.UTC), Version: "0.3.0"}
	desc := o.Description()
	got, err := ParseSnapshotOwner(desc)
	if err != nil || *got != o {
		t.Fatalf("round trip of %s: %+v, %v", desc, got, err)
	}
	replace := func(old, new string) string {
		if !strings.Contains(desc, old) {
			t.Fatalf("%q not in %s", old, desc)
		}
		return strings.Replace(desc, old, new, 1)
	}
	for name, bad := range map[string]string{
		"empty":            "",
		"plain text":       "Sendense capture; removed when the job ends",
		"text before":      "note " + desc,
		"data after":       desc + " {}",
		"two objects":      desc + desc,
		"unknown field":    replace(`"version"`, `"extra":1,"version"`),
		"duplicate field":  replace(`"pid":4242`, `"pid":4242,"pid":1`),
		"missing field":    replace(`"boot":"fd2488e3-9e4c-4fc1-b0cd-3cbfb6f3e901",`, ""),
		"other format":     replace(`"sendense":1`, `"sendense":2`),
		"capitalised key":  replace(`"job"`, `"Job"`),
		"pid as string":    replace(`"pid":4242`, `"pid":"4242"`),
		"negative pid":     replace(`"pid":4242`, `"pid":-1`),
		"zero start":       replace(`"pid_start":123456`, `"pid_start":0`),
		"bad host":         replace(`"host":"0123456789abcdef0123456789abcdef"`, `"host":"../x"`),
		"bad job":          replace(`"job":"20260101T101010Z-abc123"`, `"job":""`),
		"bad boot":         replace(`"boot":"fd2488e3-9e4c-4fc1-b0cd-3cbfb6f3e901"`, `"boot":"yesterday"`),
		"no time":          replace(`"started":"2026-01-01T10:10:10Z"`, `"started":"0001-01-01T00:00:00Z"`),
		"bad version":      replace(`"version":"0.3.0"`, `"version":"0.3 beta"`),
		"null":             "null",
		"array":            "[" + desc + "]",
		"truncated":        desc[:len(desc)-2],
		"huge":             replace(`"version":"0.3.0"`, `"version":"`+strings.Repeat("1", 2000)+`"`),
		"nested in string": `{"sendense":"` + strings.ReplaceAll(desc, `"`, `\"`) + `"}`,
	} {
		if got, err := ParseSnapshotOwner(bad); err == nil {
			t.Errorf("%s: %q parsed as %+v", name, bad, got)
		}
	}
	// An empty boot id (unreadable on the owner's host) is valid.
	if _, err := ParseSnapshotOwner(replace(`"boot":"fd2488e3-9e4c-4fc1-b0cd-3cbfb6f3e901"`, `"boot":""`)); err != nil {
		t.Errorf("empty boot id: %v", err)
	}
}
