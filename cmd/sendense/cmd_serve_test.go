package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/repo"
)

const serveToken = "serve-test-token-0123456789abcdef"

// lockedBuffer is a bytes.Buffer safe for the agent's logging goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// resetServeFlags puts serve's (and the global) flags back to their
// defaults, and forgets the context of the last run (cobra gives a
// subcommand the root's context only when it has none): the cobra tree is
// global.
func resetServeFlags() {
	reset := func(f *pflag.Flag) {
		f.Value.Set(f.DefValue)
		f.Changed = false
	}
	rootCmd.PersistentFlags().VisitAll(reset)
	for _, c := range rootCmd.Commands() {
		if c.Name() == "serve" {
			c.Flags().VisitAll(reset)
			c.SetContext(nil) //nolint:staticcheck // cleared so that the next run's context is used
		}
	}
}

// serveEnv sets a vCenter configuration that resolves (nothing listens
// there) and a token file; it returns the token file and a state dir.
func serveEnv(t *testing.T) (string, string) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "password")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	tf := filepath.Join(dir, "token")
	os.WriteFile(tf, []byte(serveToken+"\n"), 0o600)
	for k, v := range map[string]string{
		"SENDENSE_CONFIG": "", "SENDENSE_REPOSITORY": "", "SENDENSE_VCENTER_URL": "https://127.0.0.1:1/sdk",
		"SENDENSE_VCENTER_USER": "u", "SENDENSE_VCENTER_PASSWORD_FILE": pw,
		"SENDENSE_VCENTER_THUMBPRINT": strings.Repeat("AA:", 19) + "AA",
		"SENDENSE_STATE_DIR":          filepath.Join(dir, "locks"),
	} {
		t.Setenv(k, v)
	}
	return tf, filepath.Join(dir, "state")
}

func TestServeConfigErrors(t *testing.T) {
	tf, state := serveEnv(t)
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	base := []string{"serve", "--state-dir", state}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--listen", "127.0.0.1:0"}, exitUsage, "no API token"},
		{[]string{"--token-file", short}, exitUsage, "shorter than 16"},
		{[]string{"--token-file", tf, "--listen", "0.0.0.0:0"}, exitUsage, "not a loopback address"},
		{[]string{"--token-file", tf, "--listen", ":8081"}, exitUsage, "not a loopback address"},
		{[]string{"--insecure-no-auth", "--listen", "0.0.0.0:0"}, exitUsage, "not a loopback address"},
		{[]string{"--token-file", tf, "--tls-cert", tf}, exitUsage, "tls_cert and tls_key go together"},
		{[]string{"--token-file", tf, "--tls-cert", tf, "--tls-key", tf}, exitUsage, "tls_cert"},
		{[]string{"--token-file", tf, "--backup-window", "22:00-30:00"}, exitUsage, "backup_window"},
		{[]string{"--token-file", tf, "--max-concurrent-backups", "0"}, exitUsage, "max_concurrent_backups"},
		{[]string{"--token-file", tf, "--listen", "nonsense"}, exitUsage, "[api] listen"},
		{[]string{"--token-file", tf, "extra"}, exitUsage, "unknown command"},
		{[]string{"--token-file", tf, "--listen", busy.Addr().String()}, exitError, "address already in use"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append(append([]string{}, base...), tc.args...), &stdout, &stderr)
		resetServeFlags()
		if code != tc.code || !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("serve %v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.msg)
		}
		if strings.Contains(stderr.String(), serveToken) || strings.Contains(stderr.String(), "secret") {
			t.Errorf("serve %v: a secret in the output: %s", tc.args, stderr.String())
		}
	}
	t.Setenv("SENDENSE_VCENTER_URL", "")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), append(base, "--token-file", tf), &stdout, &stderr); code != exitUsage || !strings.Contains(stderr.String(), "no vCenter given") {
		t.Errorf("serve without a vCenter: exit %d, %s", code, stderr.String())
	}
	resetServeFlags()
}

// serving is a `sendense serve` running in the test process.
type serving struct {
	url    string
	cancel context.CancelFunc
	code   chan int
	stderr *lockedBuffer
}

func startServe(t *testing.T, args ...string) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	s := &serving{cancel: cancel, code: make(chan int, 1), stderr: &lockedBuffer{}}
	go func() {
		code := run(ctx, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...), pw, s.stderr)
		pw.Close()
		resetServeFlags()
		s.code <- code
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		cancel()
		t.Fatalf("serve printed no address: %v\n%s", err, s.stderr.String())
	}
	go io.Copy(io.Discard, pr)
	f := strings.Fields(line)
	if len(f) < 5 || !strings.HasPrefix(f[4], "http://127.0.0.1:") {
		t.Fatalf("serve's first line: %q", line)
	}
	s.url = f[4]
	return s
}

// stop cancels the context (what SIGTERM does) and returns the exit status.
func (s *serving) stop(t *testing.T) int {
	t.Helper()
	s.cancel()
	select {
	case code := <-s.code:
		return code
	case <-time.After(2 * time.Minute):
		t.Fatalf("serve did not stop:\n%s", s.stderr.String())
	}
	return -1
}

func (s *serving) call(t *testing.T, method, path, body string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(method, s.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+serveToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

type serveJob struct {
	JobID     string `json:"job_id"`
	State     string `json:"state"`
	Phase     string `json:"phase"`
	BytesDone uint64 `json:"bytes_done"`
	Error     string `json:"error"`
}

// TestServe: `sendense serve` against the lab: a backup through the API,
// then SIGTERM (the context run gets) in the middle of a copy: exit 0, the
// job canceled, its snapshot removed, nothing committed, and the next
// start still knows the job.
func TestServe(t *testing.T) {
	_, f, _, _ := runtime.Caller(0)
	build := filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(f))), "build")
	plugin := filepath.Join(build, "nbdkit-sendense-plugin.so")
	for _, p := range []string{plugin, filepath.Join(build, "fakevddk/lib64/libvixDiskLib.so.8")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing: run make first", p)
		}
	}
	tf, state := serveEnv(t)
	dir := t.TempDir()
	ctx := context.Background()
	l, err := lab.Start(ctx, lab.Options{Dir: filepath.Join(dir, "lab"), VMs: []lab.VMSpec{
		{Name: "web", PowerOn: true, Disks: []lab.DiskSpec{{Capacity: 32 << 20, Data: 16 << 20, Seed: 1}}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := filepath.Join(dir, "sendense.toml")
	os.WriteFile(cfg, []byte("[cbt]\nauto_enable = true\n[copy]\nrequests = 4\n"), 0o600)
	repoDir := filepath.Join(dir, "repo")
	for k, v := range map[string]string{
		"SENDENSE_CONFIG": cfg, "SENDENSE_VCENTER_URL": l.URL().String(), "SENDENSE_VCENTER_USER": lab.User,
		"SENDENSE_VCENTER_PASSWORD_FILE": l.PasswordFile(), "SENDENSE_VCENTER_THUMBPRINT": l.Thumbprint(),
		"SENDENSE_VDDK_LIBDIR": filepath.Join(build, "fakevddk"), "SENDENSE_PLUGIN": plugin,
		"FAKEVDDK_ROOT": l.DatastoreRoot(), "FAKEVDDK_READ_DELAY_US": "",
	} {
		t.Setenv(k, v)
	}
	s := startServe(t, "--token-file", tf, "--state-dir", state, "--repo", repoDir)
	defer s.cancel()
	var health struct {
		VCenter string `json:"vcenter_connection"`
	}
	for i := 0; health.VCenter != "ok"; i++ {
		if i > 100 {
			t.Fatalf("vCenter never ok: %+v\n%s", health, s.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
		s.call(t, "GET", "/api/v1/health", "", &health)
	}
	waitJob := func(id string, cond func(serveJob) bool) serveJob {
		t.Helper()
		for i := 0; ; i++ {
			var j serveJob
			if code := s.call(t, "GET", "/api/v1/backup/"+id+"/progress", "", &j); code != 200 {
				t.Fatalf("progress: %d", code)
			}
			if cond(j) {
				return j
			}
			if i > 1200 {
				t.Fatalf("job %s: %+v", id, j)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var started serveJob
	if code := s.call(t, "POST", "/api/v1/backup/start", `{"vm_path": "/DC0/vm/web"}`, &started); code != http.StatusAccepted {
		t.Fatalf("start: %d %+v\n%s", code, started, s.stderr.String())
	}
	if j := waitJob(started.JobID, func(j serveJob) bool { return j.State != "queued" && j.State != "running" }); j.State != "succeeded" {
		t.Fatalf("backup through serve: %+v\n%s", j, s.stderr.String())
	}

	t.Setenv("FAKEVDDK_READ_DELAY_US", "100000")
	if code := s.call(t, "POST", "/api/v1/backup/start", `{"vm_path": "web", "backup_type": "full"}`, &started); code != http.StatusAccepted {
		t.Fatalf("start: %d", code)
	}
	waitJob(started.JobID, func(j serveJob) bool { return j.Phase == "copying" && j.BytesDone > 0 })
	if code := s.stop(t); code != exitOK {
		t.Fatalf("serve after SIGTERM: exit %d\n%s", code, s.stderr.String())
	}
	c, err := cbt.Connect(ctx, cbt.Config{Server: l.URL().String(), User: lab.User, Password: lab.Password, Thumbprint: l.Thumbprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	vm, _ := c.FindVM(ctx, "web")
	if snaps, err := c.Snapshots(ctx, vm); err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots after SIGTERM: %v %v", snaps, err)
	}
	r, err := repo.Open(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.List(ctx, "web"); err != nil || len(res.Points) != 1 {
		t.Fatalf("restore points after SIGTERM: %v %v", res, err)
	}
	if log := s.stderr.String(); strings.Contains(log, serveToken) || strings.Contains(log, lab.Password) {
		t.Fatalf("a secret in the log:\n%s", log)
	}

	// The next start knows the job: canceled by the shutdown.
	t.Setenv("FAKEVDDK_READ_DELAY_US", "")
	s = startServe(t, "--token-file", tf, "--state-dir", state, "--repo", repoDir)
	var j serveJob
	if code := s.call(t, "GET", "/api/v1/backup/"+started.JobID+"/progress", "", &j); code != 200 || j.State != "canceled" || !strings.Contains(j.Error, "shutting down") {
		t.Fatalf("the job after a restart: %d %+v", code, j)
	}
	if code := s.stop(t); code != exitOK {
		t.Fatalf("second serve: exit %d", code)
	}
}
