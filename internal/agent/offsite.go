package agent

import (
	"context"
	"fmt"
	"os"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/offsite"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/orchestrator"
)

// offsiteAfterBackup copies the backed-up VM's new restore points to every
// [[offsite]] target with sync_after_backup = true (docs/offsite.md). A
// failure is a notice on the job and a warning in the log, not a failed
// backup: the point is in the repository, and the next sync copies what
// is missing.
func (s *Server) offsiteAfterBackup(ctx context.Context, j *job, rep *orchestrator.BackupReport) {
	if rep == nil {
		return
	}
	for i := range s.cfg.Offsite {
		o := &s.cfg.Offsite[i]
		if !o.SyncAfterBackup || ctx.Err() != nil {
			continue
		}
		msg, err := syncAfterBackup(ctx, o, rep)
		if err != nil {
			s.log.Warn("offsite sync after the backup failed", "vm", rep.Moref, "target", o.Name, "err", err)
			msg = fmt.Sprintf("offsite sync to %s failed (the backup itself succeeded; the next sync copies what is missing): %v", o.Name, err)
		}
		jobReporter{s: s, j: j}.Notice("", msg)
	}
}

// syncAfterBackup syncs the points of the report's VM to target o.
func syncAfterBackup(ctx context.Context, o *config.Offsite, rep *orchestrator.BackupReport) (string, error) {
	if orchestrator.IsRemoteRepository(rep.Repo) {
		return "", fmt.Errorf("the repository %s is not on this machine: run 'sendense offsite sync' where it is", rep.Repo)
	}
	t, err := offsite.Open(ctx, o, os.Getenv)
	if err != nil {
		return "", err
	}
	r, err := repo.OpenContext(ctx, rep.Repo)
	if err != nil {
		return "", err
	}
	defer r.Close()
	res, err := offsite.Sync(ctx, r, t, offsite.SyncOptions{VMs: []string{rep.Moref}})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("offsite sync to %s: %d uploaded, %d already there", o.Name, res.Uploaded, res.Present), nil
}
