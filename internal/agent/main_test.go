package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/orchestrator"
)

const mib = 1 << 20

var (
	topDir   = func() string { _, f, _, _ := runtime.Caller(0); return filepath.Dir(filepath.Dir(filepath.Dir(f))) }()
	buildDir = filepath.Join(topDir, "build")
	plugin   = filepath.Join(buildDir, "nbdkit-sendense-plugin.so")
	fakeVDDK = filepath.Join(buildDir, "fakevddk")
)

// childEnv makes the test binary an agent process (TestRestart): its value
// is a JSON file of the configuration.
const childEnv = "SENDENSE_AGENT_TEST_CHILD"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(childEnv); cfg != "" {
		os.Exit(childMain(cfg))
	}
	for _, f := range []string{plugin, filepath.Join(buildDir, "sendense-plugin-go.so"), filepath.Join(fakeVDDK, "lib64/libvixDiskLib.so.8")} {
		if _, err := os.Stat(f); err != nil {
			fmt.Fprintf(os.Stderr, "internal/agent tests: %s is missing: run make first (make test builds and runs everything)\n", f)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// testToken is the bearer token of the test agents.
const testToken = "0123456789abcdef0123456789abcdef"

// env is a lab, a repository and an agent configuration.
type env struct {
	t      *testing.T
	lab    *lab.Lab
	dir    string
	cfg    *config.Config
	client *cbt.Client // the test's own session, for checks
}

// newEnv starts a lab with vms and prepares a configuration: token file,
// state directory, repository, the fake VDDK and the built plugin.
func newEnv(t *testing.T, vms []lab.VMSpec) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	l, err := lab.Start(ctx, lab.Options{Dir: filepath.Join(dir, "lab"), VMs: vms})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	t.Setenv("FAKEVDDK_ROOT", l.DatastoreRoot()) // nbdkit, started by the agent, inherits it
	t.Setenv("FAKEVDDK_READ_DELAY_US", "")
	c, err := cbt.Connect(ctx, cbt.Config{Server: l.URL().String(), User: lab.User, Password: lab.Password, Thumbprint: l.Thumbprint()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.VCenter = config.VCenter{URL: l.URL().String(), User: lab.User, PasswordFile: l.PasswordFile(), Thumbprint: l.Thumbprint()}
	cfg.VDDK.Libdir = fakeVDDK
	cfg.CBT.AutoEnable = true
	cfg.Backup.MaxConcurrentDisks = 2
	// Few requests in flight: a cancelled copy waits for those it sent,
	// and the tests slow every read down (FAKEVDDK_READ_DELAY_US).
	cfg.Copy.Requests = 4
	cfg.Repository.Path = filepath.Join(dir, "repo")
	cfg.API = config.API{Listen: "127.0.0.1:0", TokenFile: tokenFile, StateDir: filepath.Join(dir, "state")}
	cfg.State.Dir = filepath.Join(dir, "locks") // the VM locks
	return &env{t: t, lab: l, dir: dir, cfg: cfg, client: c}
}

// connect is what cmd/sendense's newServices does, with the built plugin.
func connectFunc(cfg *config.Config) func(context.Context) (*orchestrator.Services, error) {
	return func(ctx context.Context) (*orchestrator.Services, error) {
		client, cred, err := orchestrator.Connect(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return &orchestrator.Services{Config: cfg, Client: client, Cred: cred, Plugin: plugin}, nil
	}
}

func testLogger() *slog.Logger {
	var w io.Writer = io.Discard
	if testing.Verbose() {
		w = os.Stderr
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// agent is a Server serving on loopback in the test process.
type agent struct {
	*Server
	t      *testing.T
	url    string
	cancel context.CancelFunc
	done   chan error
	http   *http.Client
}

// start starts an agent with e's configuration (changed by opts) and
// waits for its vCenter session.
func (e *env) start(opts ...func(*Options)) *agent {
	e.t.Helper()
	o := Options{Config: e.cfg, Connect: connectFunc(e.cfg), Version: "test", Logger: testLogger()}
	for _, f := range opts {
		f(&o)
	}
	a := startAgent(e.t, o)
	a.waitVCenter()
	return a
}

// startAgent starts an agent serving on loopback (HTTPS with [api] tls_cert).
func startAgent(t *testing.T, o Options) *agent {
	t.Helper()
	srv, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	scheme := "http://"
	if o.Config.API.TLSCert != "" {
		scheme = "https://"
	}
	a := &agent{Server: srv, t: t, url: scheme + ln.Addr().String(), cancel: cancel, done: make(chan error, 1),
		http: &http.Client{Timeout: 30 * time.Second}}
	go func() { a.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { a.stop() })
	return a
}

// stop shuts the agent down (as SIGTERM does) and returns Serve's error.
func (a *agent) stop() error {
	a.cancel()
	select {
	case err, ok := <-a.done:
		if ok {
			close(a.done)
		}
		return err
	case <-time.After(2 * time.Minute):
		a.t.Fatal("the agent did not shut down")
	}
	return nil
}

// waitVCenter waits until the agent has its vCenter session.
func (a *agent) waitVCenter() {
	a.t.Helper()
	select {
	case <-a.vc.connected:
	case <-time.After(30 * time.Second):
		a.t.Fatal("the agent never connected to the lab")
	}
}

// do sends a request with the token and returns the status and body.
func (a *agent) do(method, path string, body any) (int, []byte) {
	a.t.Helper()
	return a.doToken(testToken, method, path, body)
}

func (a *agent) doToken(token, method, path string, body any) (int, []byte) {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.http.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return resp.StatusCode, out
}

// get decodes a GET's JSON answer, which must have status want.
func (a *agent) get(path string, want int, v any) {
	a.t.Helper()
	code, body := a.do("GET", path, nil)
	if code != want {
		a.t.Fatalf("GET %s: %d %s, want %d", path, code, body, want)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			a.t.Fatalf("GET %s: %v: %s", path, err, body)
		}
	}
}

// startJob starts a backup and returns the job id.
func (a *agent) startJob(req map[string]any) string {
	a.t.Helper()
	code, body := a.do("POST", "/api/v1/backup/start", req)
	if code != http.StatusAccepted {
		a.t.Fatalf("start %v: %d %s", req, code, body)
	}
	var r StartResponse
	if err := json.Unmarshal(body, &r); err != nil || r.JobID == "" {
		a.t.Fatalf("start: %v %s", err, body)
	}
	return r.JobID
}

// progress returns a job's progress.
func (a *agent) progress(id string) JobView {
	a.t.Helper()
	var v JobView
	a.get("/api/v1/backup/"+id+"/progress", http.StatusOK, &v)
	return v
}

// wait polls a job until cond holds (or the job ended, if cond is nil).
func (a *agent) wait(id string, timeout time.Duration, cond func(JobView) bool) JobView {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := a.progress(id)
		if cond == nil && !v.State.Active() || cond != nil && cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("job %s: still %s/%s after %v: %+v", id, v.State, v.Phase, timeout, v)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitSucceeded waits for a job to end and checks that it succeeded.
func (a *agent) waitSucceeded(id string) JobView {
	a.t.Helper()
	v := a.wait(id, 2*time.Minute, nil)
	if v.State != StateSucceeded {
		a.t.Fatalf("job %s: %s: %s", id, v.State, v.Error)
	}
	return v
}

// errBody decodes an error answer and checks its shape.
func errBody(t *testing.T, body []byte) apiError {
	t.Helper()
	var e apiError
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, body)
	}
	if _, ok := raw["error"]; !ok {
		t.Fatalf("error body has no \"error\": %s", body)
	}
	if _, ok := raw["detail"]; !ok {
		t.Fatalf("error body has no \"detail\": %s", body)
	}
	json.Unmarshal(body, &e)
	return e
}

// snapshots lists the names of a lab VM's snapshots.
func (e *env) snapshots(vm string) []string {
	e.t.Helper()
	ctx := context.Background()
	v, err := e.client.FindVM(ctx, vm)
	if err != nil {
		e.t.Fatal(err)
	}
	snaps, err := e.client.Snapshots(ctx, v)
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, s := range snaps {
		names = append(names, s.Name+" "+s.Moref)
	}
	return names
}

// points returns the restore points of a VM in the repository.
func (e *env) points(vm string) []string {
	e.t.Helper()
	r, err := repo.Open(e.cfg.Repository.Path)
	if err != nil {
		return nil
	}
	res, err := r.List(context.Background(), vm)
	if err != nil {
		return nil
	}
	var ids []string
	for _, p := range res.Points {
		ids = append(ids, p.ID)
	}
	return ids
}

// childMain is the agent process of TestRestart: it serves with the
// configuration in the JSON file cfgPath and writes its address to
// cfgPath+".addr", until killed.
func childMain(cfgPath string) int {
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var cfg config.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := New(Options{Config: &cfg, Connect: connectFunc(&cfg), Version: "child", Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = srv.ListenAndServe(context.Background(), func(addr net.Addr) {
		os.WriteFile(cfgPath+".addr.tmp", []byte(addr.String()), 0o600)
		os.Rename(cfgPath+".addr.tmp", cfgPath+".addr")
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
