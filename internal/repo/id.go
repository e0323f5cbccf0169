package repo

import (
	"cmp"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Backup ids are the UTC start time, YYYYMMDDTHHMMSSZ, with -2, -3, … on
// a collision. They sort by time (compareIDs).
const idLayout = "20060102T150405Z"

var idPattern = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z(-[1-9][0-9]{0,8})?$`)

func validID(id string) bool { return idPattern.MatchString(id) }

// ValidID says whether id follows the backup-id grammar
// (YYYYMMDDTHHMMSSZ, then -N for a collision).
func ValidID(id string) bool { return validID(id) }

// CompareIDs orders backup ids by time, then collision number.
func CompareIDs(a, b string) int { return compareIDs(a, b) }

// splitID returns the time part and the collision number (1 for none).
func splitID(id string) (string, int) {
	base, n, ok := strings.Cut(id, "-")
	if !ok {
		return base, 1
	}
	k, _ := strconv.Atoi(n)
	return base, k
}

// compareIDs orders backup ids by time, then collision number.
func compareIDs(a, b string) int {
	ab, an := splitID(a)
	bb, bn := splitID(b)
	if c := cmp.Compare(ab, bb); c != 0 {
		return c
	}
	return cmp.Compare(an, bn)
}

// nextID returns the id for a backup starting at now: later than after
// (the latest existing id, or "") even if the clock went back, and not
// taken.
func nextID(now time.Time, after string, taken func(string) bool) string {
	base := now.UTC().Format(idLayout)
	n := 1
	if after != "" {
		ab, an := splitID(after)
		if ab >= base {
			base, n = ab, an+1
		}
	}
	for {
		id := base
		if n > 1 {
			id = fmt.Sprintf("%s-%d", base, n)
		}
		if !taken(id) {
			return id
		}
		n++
	}
}

// IDTime is the time a backup id names.
func IDTime(id string) (time.Time, error) {
	base, _ := splitID(id)
	return time.Parse(idLayout, base)
}
