package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/lab"
)

// trap is a TCP listener and a unix socket that must see no connection.
type trap struct {
	port     int
	sock     string
	accepted atomic.Int32
}

func newTrap(t *testing.T, dir string) *trap {
	tr := &trap{sock: filepath.Join(dir, "trap.sock")}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ux, err := net.Listen("unix", tr.sock)
	if err != nil {
		t.Fatal(err)
	}
	tr.port = tcp.Addr().(*net.TCPAddr).Port
	for _, ln := range []net.Listener{tcp, ux} {
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				tr.accepted.Add(1)
				c.Close()
			}
		}()
	}
	return tr
}

// freePort is a loopback port nothing listens on.
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestAPIAuthorization: repositories, targets and ssh:// destinations an
// API caller names are accepted only when configured; every refusal is a
// 403 naming the setting, and causes no connection, file or directory.
func TestAPIAuthorization(t *testing.T) {
	e := newEnv(t, []lab.VMSpec{webVM})
	tr := newTrap(t, e.dir)
	e.cfg.Tunnel = config.Tunnel{Host: "127.0.0.1", Port: freePort(t), User: "sendense", Connections: 1} // no API forward
	allowed := filepath.Join(e.dir, "allowed")
	home := filepath.Join(e.dir, "home") // dot-files only
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".bashrc"), []byte("# mine\n"), 0o600)
	listedSSH := fmt.Sprintf("ssh://sendense@127.0.0.1:%d/srv/x", tr.port) // listed, but not the [tunnel] endpoint
	e.cfg.API.AllowedRepositories = []string{allowed + "/*", home, listedSSH}
	e.cfg.API.AllowedTargets = []string{"nbd://dr.example/*", fmt.Sprintf("ssh://sendense@127.0.0.1:%d/run/x.sock", tr.port)}
	a := e.start()

	deep := filepath.Join(e.dir, "nowhere", "deep", "x")
	trapTCP := fmt.Sprintf("127.0.0.1:%d", tr.port)
	status := "/api/v1/vms/web/cbt-status?repository="
	for _, tc := range []struct {
		method, path string
		body         map[string]any
		code         int
		msg          string
	}{
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "repository": deep}, 403, "[api] allowed_repositories"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "repository": allowed + "/a/b"}, 403, "[api] allowed_repositories"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "repository": allowed + "/../nowhere"}, 403, "[api] allowed_repositories"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "repository": allowed + "/.hidden"}, 403, "[api] allowed_repositories"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "repository": "ssh://root@" + trapTCP + "/srv/x"}, 403, "[api] allowed_repositories"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "repository": listedSSH}, 403, "[tunnel]"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "repository": home}, 400, "is not empty (it holds .bashrc)"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "target": "nbd://" + trapTCP + "/x"}, 403, "[api] allowed_targets"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "target_endpoint": "nbd://" + trapTCP}, 403, "[api] allowed_targets"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "target": "nbd+unix:///?socket=" + tr.sock}, 403, "[api] allowed_targets"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "target": "nbd://dr.example/a/b"}, 403, "[api] allowed_targets"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "target": fmt.Sprintf("ssh://sendense@127.0.0.1:%d/run/x.sock", tr.port)}, 403, "[tunnel]"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "targets": map[string]string{"2000": "nbd://" + trapTCP + "/x"}}, 403, "[api] allowed_targets"},
		{"GET", status + url.QueryEscape("ssh://root@"+trapTCP+"/x"), nil, 403, "[api] allowed_repositories"},
		{"GET", status + url.QueryEscape(listedSSH), nil, 403, "[tunnel]"},
		{"GET", status + url.QueryEscape(deep), nil, 403, "[api] allowed_repositories"},
	} {
		var body any
		if tc.body != nil {
			body = tc.body
		}
		code, b := a.do(tc.method, tc.path, body)
		ae := errBody(t, b)
		if code != tc.code || !strings.Contains(ae.Message+" "+ae.Detail, tc.msg) {
			t.Errorf("%s %s %v: %d %s, want %d %q", tc.method, tc.path, tc.body, code, b, tc.code, tc.msg)
		}
	}
	time.Sleep(300 * time.Millisecond) // what a refused request might have started
	if n := tr.accepted.Load(); n != 0 {
		t.Errorf("the traps saw %d connections", n)
	}
	for _, p := range []string{filepath.Join(e.dir, "nowhere"), allowed, filepath.Join(home, "sendense-repository.json")} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after refused requests (%v)", p, err)
		}
	}
	if entries, _ := os.ReadDir(home); len(entries) != 2 {
		t.Errorf("%s changed: %v", home, entries)
	}
	var list JobList
	a.get("/api/v1/backup", http.StatusOK, &list)
	if len(list.Jobs) != 0 || e.snapshots("web") != nil {
		t.Fatalf("refused requests made jobs %+v or snapshots %v", list.Jobs, e.snapshots("web"))
	}

	// What is allowed works: a new repository in a listed directory.
	repoA := filepath.Join(allowed, "a")
	v := a.waitSucceeded(a.startJob(map[string]any{"vm_path": "web", "repository": repoA}))
	var st CBTStatus
	a.get(status+url.QueryEscape(repoA), http.StatusOK, &st)
	if st.LastBackupID != v.BackupID || st.Repository != repoA {
		t.Fatalf("cbt-status of the allowed repository: %+v", st)
	}
}

// TestAuthz: the allow lists' spellings and wildcards, without a lab.
func TestAuthz(t *testing.T) {
	cfg := config.Defaults()
	cfg.Repository.Path = "/srv/backups"
	cfg.Tunnel = config.Tunnel{Host: "CP.example.com", Port: 443, User: "sendense"}
	cfg.API.AllowedRepositories = []string{"/srv/other/", "/data/*", "ssh://cp.example.com/srv/repo", "ssh://sendense@cp.example.com:443/srv/all/*"}
	cfg.API.AllowedTargets = []string{"nbd://DR:10809/db01", "nbd://dr2/*", "nbd+unix:///exp?socket=/run/a/../b.sock", "ssh://cp.example.com/run/db.sock"}
	a, err := newAuthz(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for loc, want := range map[string]int{
		"/srv/backups": 0, "/srv/backups/": 0, "/srv//backups": 0, "/srv/other": 0,
		"/data/x": 0, "/data/x/y": 403, "/data": 403, "/data/..": 403, "/srv/backups/x": 403, "relative": 400,
		"ssh://sendense@cp.example.com:443/srv/repo": 0, "ssh://cp.example.com/srv/repo/": 0, "ssh://CP.EXAMPLE.COM/srv/repo": 0,
		"ssh://root@cp.example.com/srv/repo": 403, "ssh://cp.example.com:22/srv/repo": 403, "ssh://cp.example.com/srv/all/z": 0,
		"ssh://cp.example.com/srv/all/z/w": 403, "ssh://other.example.com/srv/repo": 403, "ssh://cp.example.com/": 400,
	} {
		got := 0
		if aerr := a.repository(cfg, loc, "repository"); aerr != nil {
			got = aerr.Status
		}
		if got != want {
			t.Errorf("repository %q: %d, want %d", loc, got, want)
		}
	}
	for uri, want := range map[string]int{
		"nbd://dr/db01": 0, "nbd://dr:10809/db01": 0, "nbd://dr/db02": 403, "nbd://dr:10810/db01": 403,
		"nbd://dr2/x": 0, "nbd://dr2:10809/y": 0, "nbd://dr2/x/y": 403, "nbd://dr2/x?tls=on": 403,
		"nbd+unix:///exp?socket=/run/b.sock": 0, "nbd+unix:///exp?socket=/run/c.sock": 403, "nbd+unix:///?socket=/run/b.sock": 403,
		"ssh://sendense@cp.example.com:443/run/db.sock": 0, "ssh://cp.example.com/run/other.sock": 403,
	} {
		got := 0
		if aerr := a.target(cfg, uri, "target"); aerr != nil {
			got = aerr.Status
		}
		if got != want {
			t.Errorf("target %q: %d, want %d", uri, got, want)
		}
	}
	// Without [tunnel] host no ssh:// location is allowed, listed or not.
	cfg.Tunnel.Host = ""
	a, _ = newAuthz(cfg)
	if aerr := a.repository(cfg, "ssh://cp.example.com/srv/repo", "repository"); aerr == nil || aerr.Status != 403 || !strings.Contains(aerr.Detail, "[tunnel] host") {
		t.Errorf("ssh:// without a tunnel: %v", aerr)
	}
	for _, bad := range [][2]string{{"relative/dir", ""}, {"/srv/*/x", ""}, {"", "nbd+unix:///?socket=/run/*"}, {"", "http://x/y"}} {
		c := config.Defaults()
		if bad[0] != "" {
			c.API.AllowedRepositories = []string{bad[0]}
		} else {
			c.API.AllowedTargets = []string{bad[1]}
		}
		if _, err := newAuthz(c); err == nil || !strings.Contains(err.Error(), "[api] allowed_") {
			t.Errorf("allow list %q accepted: %v", bad, err)
		}
	}
}

// TestTokenFilePermissions: a token file other users may read, or that is
// not the agent's, is refused with the fix.
func TestTokenFilePermissions(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "token")
	os.WriteFile(p, []byte(testToken+"\n"), 0o600)
	for _, tc := range []struct {
		mode os.FileMode
		want string
	}{{0o644, "chmod 600"}, {0o640, "chmod 600"}, {0o602, "chmod 600"}, {0o400, ""}, {0o600, ""}} {
		os.Chmod(p, tc.mode)
		_, err := readToken(p, testLogger())
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p)) {
			t.Errorf("mode %04o: %v, want %q", tc.mode, err, tc.want)
		}
	}
	os.Chmod(p, 0o600)
	if os.Geteuid() == 0 {
		os.Chown(p, 65534, 65534)
		if _, err := readToken(p, testLogger()); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Errorf("a token file of another user: %v", err)
		}
	}
	if _, err := readToken(dir, testLogger()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory as the token file: %v", err)
	}
}

// TestKeyPathsInAnswers: API answers name the [tunnel] key by its
// fingerprint, never by its path; and cbt-status and specs show the
// snapshots named like a job's that are not sendense's as foreign.
func TestKeyPathsInAnswers(t *testing.T) {
	e := newEnv(t, []lab.VMSpec{webVM})
	t.Setenv("SSH_AUTH_SOCK", "")
	key := filepath.Join(e.dir, "keys", "agent_key")
	os.MkdirAll(filepath.Dir(key), 0o700)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-C", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	fp := keyFingerprint(key) // from agent_key.pub: the key is encrypted
	if !strings.HasPrefix(fp, "SHA256:") {
		t.Fatalf("fingerprint %q", fp)
	}
	port := freePort(t)
	e.cfg.Tunnel = config.Tunnel{Host: "127.0.0.1", Port: port, User: "sendense", Key: key, Connections: 1}
	e.cfg.Repository.Path = fmt.Sprintf("ssh://sendense@127.0.0.1:%d/srv/repo", port)
	a := e.start()
	if _, err := e.lab.CreateSnapshot(context.Background(), "web", "sendense-mine"); err != nil {
		t.Fatal(err)
	}

	var st CBTStatus
	a.get("/api/v1/vms/web/cbt-status", http.StatusOK, &st)
	if !strings.Contains(st.RepoError, "[tunnel] key "+fp) || strings.Contains(st.RepoError, key) {
		t.Errorf("cbt-status repository error: %q", st.RepoError)
	}
	if len(st.Foreign) != 1 || st.Foreign[0].Name != "sendense-mine" {
		t.Errorf("foreign snapshots in cbt-status: %+v", st.Foreign)
	}
	var specs VMSpecs
	a.get("/api/v1/vms/web/specs", http.StatusOK, &specs)
	if len(specs.Snapshots) != 1 || !specs.Snapshots[0].Foreign {
		t.Errorf("specs snapshots: %+v", specs.Snapshots)
	}
	v := a.wait(a.startJob(map[string]any{"vm_path": "web"}), time.Minute, nil)
	_, body := a.do("GET", "/api/v1/backup/"+v.ID, nil)
	if v.State != StateFailed || !strings.Contains(string(body), fp) || strings.Contains(string(body), key) || strings.Contains(string(body), filepath.Dir(key)) {
		t.Errorf("the failed job names the key by path or not by fingerprint: %s", body)
	}
}

// TestRecordedJobsRecheck: jobs recorded before a restart are held to the
// new configuration: a queued job whose repository or target is no longer
// allowed fails with the 403's message and touches nothing.
func TestRecordedJobsRecheck(t *testing.T) {
	e := newEnv(t, []lab.VMSpec{webVM})
	gone := filepath.Join(e.dir, "no-longer-allowed")
	srv, err := New(Options{Config: e.cfg, Connect: connectFunc(e.cfg), Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := e.client.FindVM(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	backup := &Job{ID: newJobID(now), Kind: KindBackup, VMPath: "web", VM: *vm, Type: TypeAuto, Repo: gone,
		State: StateQueued, Phase: phaseQueued, Created: now}
	repl := &Job{ID: newJobID(now.Add(time.Second)), Kind: KindReplicate, VMPath: "web", VM: *vm, Type: TypeAuto,
		Targets: map[string]string{"": "nbd://127.0.0.1:1/x"}, State: StateQueued, Phase: phaseQueued, Created: now.Add(time.Second)}
	for _, j := range []*Job{backup, repl} {
		if err := srv.store.put(j); err != nil {
			t.Fatal(err)
		}
	}
	srv.Close()

	a := e.start()
	for _, id := range []string{backup.ID, repl.ID} {
		v := a.wait(id, time.Minute, nil)
		if v.State != StateFailed || !strings.Contains(v.Error, "not allowed") {
			t.Fatalf("recorded job %s: %s %q", id, v.State, v.Error)
		}
	}
	if _, err := os.Lstat(gone); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s was created: %v", gone, err)
	}
	e.noSnapshots("web")
}

// TestKeyRedactor: the key's path in its spellings becomes its
// fingerprint; a bare file name is left alone.
func TestKeyRedactor(t *testing.T) {
	cfg := config.Defaults()
	cfg.Tunnel.Key = "/etc/sendense/ssh/id key"
	r := keyRedactor(cfg)
	got := r.Replace(`{"error":"ssh key /etc/sendense/ssh/id key: denied","detail":"offered: SHA256:x from /etc/sendense/ssh/id key.pub"}`)
	if strings.Contains(got, "/etc/sendense") || strings.Count(got, "the [tunnel] key") != 2 {
		t.Fatalf("redacted: %s", got)
	}
	cfg.Tunnel.Key = "id"
	if got := keyRedactor(cfg).Replace(`{"job_id":"x"}`); got != `{"job_id":"x"}` {
		t.Fatalf("a bare file name garbled the answer: %s", got)
	}
	if keyRedactor(config.Defaults()) != nil {
		t.Fatal("a redactor without a key")
	}
}
