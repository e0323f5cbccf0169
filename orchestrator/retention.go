package orchestrator

import (
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/retention"
)

// RetentionSelect is repo.PruneOptions.Select for a retention policy:
// restic's forget rules applied to each VM's restore points by their
// start times.
func RetentionSelect(p retention.Policy) func([]repo.PrunePoint) map[string][]string {
	return func(points []repo.PrunePoint) map[string][]string {
		pts := make([]retention.Point, len(points))
		for i, pt := range points {
			pts[i] = retention.Point{ID: pt.ID, Time: pt.Time}
		}
		return p.Apply(pts)
	}
}
