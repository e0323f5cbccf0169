package agent

import (
	"context"
	"fmt"
	"strings"

	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/orchestrator"
)

// applyRetention prunes the backed-up VM's restore points in the job's
// repository with [retention] after a succeeded backup. What it removed,
// or why it could not, becomes a notice of the job: the backup itself
// stays succeeded, and the next job tries again.
func (s *Server) applyRetention(ctx context.Context, svc *orchestrator.Services, dir, moref string) {
	pol := s.cfg.Retention.Policy()
	if pol.Empty() {
		return
	}
	notice := func(format string, a ...any) {
		msg := fmt.Sprintf("retention (%s): ", pol) + fmt.Sprintf(format, a...)
		svc.Reporter.Notice(moref, msg)
		s.log.Info(msg, "vm", moref, "repository", dir)
	}
	r, err := orchestrator.OpenRepository(ctx, svc, dir)
	if err != nil {
		notice("not applied: %v", err)
		return
	}
	defer r.Close()
	reps, err := r.Prune(ctx, repo.PruneOptions{VM: moref, Select: orchestrator.RetentionSelect(pol)})
	if err != nil {
		notice("not applied: %v", err)
		return
	}
	for _, rep := range reps {
		if len(rep.Dropped) == 0 {
			notice("nothing to remove, %d backups kept", len(rep.Kept))
			continue
		}
		notice("removed %d %s (%s), kept %d", len(rep.Dropped), plural(len(rep.Dropped), "backup", "backups"),
			strings.Join(rep.Dropped, ", "), len(rep.Kept))
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
