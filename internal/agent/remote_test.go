package agent

import (
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/sshtest"
)

// TestRemoteRepositoryJob: a backup job into an ssh:// repository (real
// OpenSSH; qemu-img and qemu-nbd run on the "control plane"), full then
// incremental; the points are in the repository's directory there, and
// cbt-status reads the latest one through SSH. A malformed ssh:// location
// is a 400 before anything is queued.
func TestRemoteRepositoryJob(t *testing.T) {
	srv := sshtest.StartWith(t, sshtest.Options{QuietHome: true})
	e := newEnv(t, []lab.VMSpec{{Name: "web", PowerOn: true, CBT: true, Disks: []lab.DiskSpec{{Capacity: 16 * lab.MiB, Data: 4 * lab.MiB, Seed: 7}}}})
	e.cfg.Tunnel.Key, e.cfg.Tunnel.KnownHosts = srv.UserKeyFile, srv.KnownHostsFile
	dir := filepath.Join(e.dir, "remote-repo")
	location := fmt.Sprintf("ssh://%s@%s:%d%s", srv.User, srv.Host, srv.Port, dir)
	// ssh:// repositories must be listed and on the [tunnel] endpoint.
	e.cfg.Tunnel.Host, e.cfg.Tunnel.Port, e.cfg.Tunnel.User, e.cfg.Tunnel.APIForward = srv.Host, srv.Port, srv.User, ""
	e.cfg.API.AllowedRepositories = []string{location}
	a := e.start()
	a.waitVCenter()

	statusPath := "/api/v1/vms/" + url.PathEscape("/DC0/vm/web") + "/cbt-status?repository=" + url.QueryEscape(location)
	var st CBTStatus
	a.get(statusPath, http.StatusOK, &st)
	if st.LastBackupID != "" || st.RepoError != "" {
		t.Fatalf("cbt-status before the repository exists: %+v", st)
	}

	var ids []string
	for i, want := range []string{"full", "incremental"} {
		if i > 0 {
			if err := e.lab.WriteRandom("web", 2000, 4*lab.MiB, 512<<10, 3); err != nil {
				t.Fatal(err)
			}
		}
		v := a.waitSucceeded(a.startJob(map[string]any{"vm_path": "/DC0/vm/web", "repository": location}))
		if v.Level != want || v.Repo != location || v.BackupID == "" {
			t.Fatalf("job %d: level %s repository %s backup %q, want %s into %s", i, v.Level, v.Repo, v.BackupID, want, location)
		}
		ids = append(ids, v.BackupID)
	}
	r, err := repo.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	l, err := r.List(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range l.Points {
		got = append(got, p.ID)
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("points in the remote repository %v, the jobs made %v", got, ids)
	}
	st = CBTStatus{}
	a.get(statusPath, http.StatusOK, &st)
	if st.LastBackupID != ids[1] || st.RepoError != "" || st.Disks[0].LastChangeID == "" {
		t.Fatalf("cbt-status with the ssh:// repository: %+v", st)
	}
	e.noSnapshots("web")

	code, body := a.do("POST", "/api/v1/backup/start", map[string]any{"vm_path": "/DC0/vm/web", "repository": "ssh://" + srv.Host + "/"})
	if ae := errBody(t, body); code != http.StatusBadRequest || ae.Message != `invalid field "repository"` || !strings.Contains(ae.Detail, "needs a host and the repository's path") {
		t.Fatalf("a malformed ssh:// repository: %d %s", code, body)
	}
}
