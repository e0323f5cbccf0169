package repo

import "time"

// SetHook makes r call f between the steps of a prune (fault injection):
// "journal", "dropped", "commit", "manifest-new", "rename", "switch",
// "delete". An error from f stops the prune there, as a crash would.
func SetHook(r *Repo, f func(step string) error) { r.hook = f }

// SetClock makes r use now as the time of new backups.
func SetClock(r *Repo, now func() time.Time) { r.now = now }

var (
	NextID   = nextID
	SafeName = safeName
)
