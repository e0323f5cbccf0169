package agent

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/offsite"
	"github.com/sendense/capture/internal/s3test"
)

// TestSyncAfterBackup: with sync_after_backup, a successful backup job
// copies the VM's new point to the offsite target and says so in its
// notices; a target that fails is a notice, not a failed backup.
func TestSyncAfterBackup(t *testing.T) {
	srv, err := s3test.Start(s3test.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	e := newEnv(t, []lab.VMSpec{webVM})
	access, secret := s3test.Credentials(t, e.dir)
	e.cfg.Offsite = []config.Offsite{
		{Name: "dr", Endpoint: srv.Endpoint, Bucket: srv.Bucket(t, true), PathStyle: true, AccessKeyFile: access, SecretKeyFile: secret,
			ObjectLockMode: "COMPLIANCE", RetentionDays: 1, SyncAfterBackup: true},
		{Name: "gone", Endpoint: srv.Endpoint, Bucket: "no-such-bucket", PathStyle: true, AccessKeyFile: access, SecretKeyFile: secret,
			SyncAfterBackup: true},
		{Name: "manual", Endpoint: srv.Endpoint, Bucket: "no-such-bucket-either", PathStyle: true, AccessKeyFile: access, SecretKeyFile: secret},
	}
	if err := e.cfg.Check(); err != nil {
		t.Fatal(err)
	}
	a := e.start()
	id := a.startJob(map[string]any{"vm_path": "/DC0/vm/web", "backup_type": "full"})
	v := a.waitSucceeded(id)
	notices := strings.Join(v.Notices, "\n")
	if !strings.Contains(notices, "offsite sync to dr: 1 uploaded, 0 already there") ||
		!strings.Contains(notices, "offsite sync to gone failed (the backup itself succeeded") || strings.Contains(notices, "manual") {
		t.Fatalf("notices: %q", v.Notices)
	}
	tg, err := offsite.Open(context.Background(), &e.cfg.Offsite[0], os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := tg.Index(context.Background(), "")
	if err != nil || len(ix.Seals("web")) != 1 || ix.Seals("web")[0].ID != v.BackupID {
		t.Fatalf("bucket after the job: %+v %v", ix, err)
	}
}
