package cbt

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// AllAreas is the special changeId that asks vSphere for every area of a
// disk it considers in use, instead of the areas changed since a point.
const AllAreas = "*"

// ErrDifferentEpoch is returned by Compare when two changeIds have different
// UUIDs: they come from different tracking epochs (CBT was reset or enabled
// anew in between) and cannot be ordered.
var ErrDifferentEpoch = errors.New("changeIds belong to different CBT epochs")

// ChangeID is a parsed vSphere changeId, "UUID/sequence", for example
// "52 de c0 d9 d6 1e 6f 93-f6 e0 01 2c 9a 47 6b a0/4". The UUID names the
// tracking epoch of the disk (it changes whenever CBT is reset or enabled
// again); the sequence grows within an epoch.
type ChangeID struct {
	UUID string // as vSphere wrote it, surrounding spaces trimmed
	Seq  uint64
}

// ParseChangeID parses a changeId. "*" (AllAreas) and "" are not changeIds
// and are rejected.
func ParseChangeID(s string) (ChangeID, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "":
		return ChangeID{}, errors.New("empty changeId")
	case AllAreas:
		return ChangeID{}, errors.New(`"*" is not a changeId (it asks for all areas in use)`)
	}
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return ChangeID{}, fmt.Errorf("malformed changeId %q: want UUID/sequence", s)
	}
	uuid, seq := strings.TrimSpace(s[:i]), strings.TrimSpace(s[i+1:])
	if uuid == "" {
		return ChangeID{}, fmt.Errorf("malformed changeId %q: the UUID part is empty", s)
	}
	for _, r := range uuid {
		if !isHex(r) && r != ' ' && r != '-' {
			return ChangeID{}, fmt.Errorf("malformed changeId %q: the UUID part may hold only hex digits, spaces and dashes", s)
		}
	}
	n, err := strconv.ParseUint(seq, 10, 64)
	if err != nil {
		return ChangeID{}, fmt.Errorf("malformed changeId %q: the sequence %q is not a number", s, seq)
	}
	return ChangeID{UUID: uuid, Seq: n}, nil
}

func isHex(r rune) bool {
	return (r >= '0' && r <= '9') || (r >= 'a' && r <= 'f') || (r >= 'A' && r <= 'F')
}

// String returns the changeId in vSphere's form.
func (c ChangeID) String() string { return fmt.Sprintf("%s/%d", c.UUID, c.Seq) }

// SameEpoch reports whether c and o have the same UUID (ignoring case,
// spaces and dashes), that is whether they can be compared.
func (c ChangeID) SameEpoch(o ChangeID) bool { return normUUID(c.UUID) == normUUID(o.UUID) }

func normUUID(s string) string {
	return strings.ToLower(strings.NewReplacer(" ", "", "-", "").Replace(s))
}

// Compare orders two changeIds of the same epoch: -1 when a is older than b,
// 0 when equal, +1 when newer. It returns ErrDifferentEpoch when the UUIDs
// differ.
func Compare(a, b ChangeID) (int, error) {
	if !a.SameEpoch(b) {
		return 0, fmt.Errorf("%w: %q and %q", ErrDifferentEpoch, a.UUID, b.UUID)
	}
	switch {
	case a.Seq < b.Seq:
		return -1, nil
	case a.Seq > b.Seq:
		return 1, nil
	}
	return 0, nil
}

// DiskState is what a backup remembers of a disk to decide whether the next
// backup can be incremental: its identity (device key and disk UUID, never
// the file name, which vMotion changes), its capacity and the changeId of the
// snapshot disk that was copied.
type DiskState struct {
	Key      int32  `json:"key"`
	UUID     string `json:"uuid,omitempty"`
	Capacity uint64 `json:"capacity"`
	ChangeID string `json:"change_id,omitempty"`
}

// NeedFull decides whether the next backup of a disk must be full, and says
// why. prev is the state recorded by the previous backup of that disk (nil
// when there is none), cur the state of the disk in the new snapshot, and
// queryErr the error of the QueryChangedDiskAreas loop for that disk, if it
// was already run (nil otherwise).
//
// A backup must be full when there is no previous changeId, when the disk's
// identity or capacity changed, when CBT is not active on the new snapshot,
// when the changeId's UUID changed (CBT was reset, or enabled again, for
// example while snapshots existed) or its sequence went backwards, and when
// the query failed. Otherwise reason names the changeId the incremental
// starts from.
func NeedFull(prev *DiskState, cur DiskState, queryErr error) (full bool, reason string) {
	if prev == nil || strings.TrimSpace(prev.ChangeID) == "" {
		return true, fmt.Sprintf("disk %d has no previous changeId (first backup of this disk)", cur.Key)
	}
	if strings.TrimSpace(cur.ChangeID) == "" {
		return true, fmt.Sprintf("disk %d has no changeId in the snapshot: CBT is not active on it (tracking starts at the first snapshot after CBT is enabled)", cur.Key)
	}
	if prev.Key != cur.Key {
		return true, fmt.Sprintf("disk identity changed: device key %d, previously %d", cur.Key, prev.Key)
	}
	if prev.UUID != "" && cur.UUID != "" && !strings.EqualFold(prev.UUID, cur.UUID) {
		return true, fmt.Sprintf("disk %d identity changed: disk UUID %s, previously %s", cur.Key, cur.UUID, prev.UUID)
	}
	if prev.Capacity != cur.Capacity {
		return true, fmt.Sprintf("disk %d capacity changed from %d to %d bytes", cur.Key, prev.Capacity, cur.Capacity)
	}
	p, err := ParseChangeID(prev.ChangeID)
	if err != nil {
		return true, fmt.Sprintf("disk %d: previous %v", cur.Key, err)
	}
	c, err := ParseChangeID(cur.ChangeID)
	if err != nil {
		return true, fmt.Sprintf("disk %d: snapshot's %v", cur.Key, err)
	}
	if !p.SameEpoch(c) {
		return true, fmt.Sprintf("disk %d: CBT was reset or enabled again since the previous backup (changeId UUID %q, previously %q)", cur.Key, c.UUID, p.UUID)
	}
	if c.Seq < p.Seq {
		return true, fmt.Sprintf("disk %d: changeId went backwards (%s, previously %s)", cur.Key, c, p)
	}
	if queryErr != nil {
		return true, fmt.Sprintf("disk %d: QueryChangedDiskAreas failed: %v", cur.Key, queryErr)
	}
	return false, fmt.Sprintf("disk %d: incremental since changeId %s", cur.Key, p)
}
