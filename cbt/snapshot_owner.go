package cbt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/sendense/capture/internal/procid"
	"github.com/sendense/capture/internal/version"
)

// OwnerFormat is the version of the owner marker (SnapshotOwner's
// "sendense" field).
const OwnerFormat = 1

// SnapshotOwner is the owner marker a job writes as the description of
// every snapshot it takes: which job of which process on which host took
// it. Only a snapshot carrying a valid marker may ever be removed by a
// later job, and only once its owner is provably gone (see
// docs/design.md, CBT rule 5).
type SnapshotOwner struct {
	Format   int       `json:"sendense"`  // OwnerFormat
	Job      string    `json:"job"`       // the job's id
	Host     string    `json:"host"`      // procid.Self.Host
	Boot     string    `json:"boot"`      // the host's boot id ("" if unknown)
	PID      int       `json:"pid"`       // the process
	PIDStart uint64    `json:"pid_start"` // its start time, clock ticks after boot
	Started  time.Time `json:"started"`   // when the job started (RFC 3339)
	Version  string    `json:"version"`   // the sendense version
}

var (
	ownerJob     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	ownerHost    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{7,63}$`)
	ownerBoot    = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	ownerVersion = regexp.MustCompile(`^[A-Za-z0-9.+~_-]{1,64}$`)
)

// NewSnapshotOwner is the marker of a snapshot that job (an id matching
// [A-Za-z0-9][A-Za-z0-9._-]*), started at started, of this process takes.
// It fails when the process cannot identify itself (no /proc): then a
// snapshot it leaves behind can only be removed by hand.
func NewSnapshotOwner(job string, started time.Time) (SnapshotOwner, error) {
	me, err := procid.Current()
	if err != nil {
		return SnapshotOwner{}, err
	}
	v := strings.Map(func(r rune) rune {
		if r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".+~_-", r)) {
			return r
		}
		return '_'
	}, version.Version)
	o := SnapshotOwner{Format: OwnerFormat, Job: job, Host: me.Host, Boot: me.Boot, PID: me.PID, PIDStart: me.Start,
		Started: started.UTC().Truncate(time.Second), Version: v}
	return o, o.check()
}

// maxOwnerLength bounds a description taken for a marker.
const maxOwnerLength = 1024

// Description is the marker as a snapshot description (one JSON object).
func (o SnapshotOwner) Description() string {
	b, _ := json.Marshal(o)
	return string(b)
}

// check validates every field of a marker.
func (o *SnapshotOwner) check() error {
	switch {
	case o.Format != OwnerFormat:
		return fmt.Errorf("marker format %d, not %d", o.Format, OwnerFormat)
	case !ownerJob.MatchString(o.Job):
		return errors.New("bad job id")
	case !ownerHost.MatchString(o.Host):
		return errors.New("bad host id")
	case o.Boot != "" && !ownerBoot.MatchString(o.Boot):
		return errors.New("bad boot id")
	case o.PID <= 0 || o.PID > 1<<22:
		return errors.New("bad pid")
	case o.PIDStart == 0:
		return errors.New("no process start time")
	case o.Started.IsZero() || o.Started.Year() < 2000:
		return errors.New("bad start time")
	case !ownerVersion.MatchString(o.Version):
		return errors.New("bad version")
	}
	return nil
}

// ParseSnapshotOwner reads the owner marker from a snapshot description.
// It is strict: exactly one JSON object with every field present and
// valid, no other field, nothing around it. Anything else is not a
// marker (an error), and such a snapshot is never removed by a job.
func ParseSnapshotOwner(desc string) (*SnapshotOwner, error) {
	if len(desc) > maxOwnerLength || !strings.HasPrefix(desc, "{") {
		return nil, errors.New("not a sendense owner marker")
	}
	if err := checkOwnerKeys(desc); err != nil {
		return nil, fmt.Errorf("not a sendense owner marker: %w", err)
	}
	var o SnapshotOwner
	if err := json.Unmarshal([]byte(desc), &o); err != nil {
		return nil, fmt.Errorf("not a sendense owner marker: %w", err)
	}
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("not a sendense owner marker: %w", err)
	}
	return &o, nil
}

// ownerKeys are the marker's keys, each required exactly once.
var ownerKeys = map[string]bool{"sendense": true, "job": true, "host": true, "boot": true, "pid": true, "pid_start": true, "started": true, "version": true}

// checkOwnerKeys checks that desc is one JSON object holding each of
// ownerKeys exactly once and nothing else, with nothing after it.
func checkOwnerKeys(desc string) error {
	dec := json.NewDecoder(strings.NewReader(desc))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := t.(string)
		switch {
		case !ownerKeys[k]:
			return fmt.Errorf("unknown field %q", k)
		case seen[k]:
			return fmt.Errorf("field %q twice", k)
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the object")
	}
	if len(seen) != len(ownerKeys) {
		for k := range ownerKeys {
			if !seen[k] {
				return fmt.Errorf("no field %q", k)
			}
		}
	}
	return nil
}
