package agent

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/lab"
)

var (
	webVM = lab.VMSpec{Name: "web", PowerOn: true, Disks: []lab.DiskSpec{{Capacity: 32 * mib, Data: 16 * mib, Seed: 1}}}
	dbVM  = lab.VMSpec{Name: "db", Folder: "prod", CBT: true, Disks: []lab.DiskSpec{
		{Capacity: 16 * mib, Data: 8 * mib, Seed: 2},
		{Capacity: 8 * mib, Data: 4 * mib, Seed: 3},
	}}
)

// esc is how a client puts an inventory path in a URL.
func esc(p string) string { return url.PathEscape(p) }

// TestAPIRequests: authentication, discovery, and every kind of bad input
// (401, 404, 405, 400, 409 is in TestBackupJobs) with JSON error bodies.
func TestAPIRequests(t *testing.T) {
	e := newEnv(t, []lab.VMSpec{webVM, dbVM})
	e.cfg.API.AllowedRepositories = []string{e.dir} // allowed, but not empty
	a := e.start()

	// 401: no token, a wrong one, on every path (unknown ones too).
	for _, tc := range []struct{ token, method, path string }{
		{"", "GET", "/api/v1/health"},
		{"wrong-token-wrong-token", "GET", "/api/v1/health"},
		{"", "GET", "/metrics"},
		{"", "POST", "/api/v1/backup/start"},
		{"", "GET", "/api/v1/nowhere"},
		{testToken + "x", "GET", "/api/v1/vms"},
	} {
		code, body := a.doToken(tc.token, tc.method, tc.path, nil)
		if code != http.StatusUnauthorized {
			t.Fatalf("%s %s with token %q: %d %s", tc.method, tc.path, tc.token, code, body)
		}
		if ae := errBody(t, body); ae.Message != "unauthorized" {
			t.Fatalf("401 body: %s", body)
		}
		if strings.Contains(string(body), testToken) {
			t.Fatal("the token leaks into an answer")
		}
	}

	var h Health
	a.get("/api/v1/health", http.StatusOK, &h)
	if h.Status != "healthy" || h.VCenterConnection != "ok" || h.CBTSupport != "available" || h.TunnelStatus != "not configured" ||
		h.LastBackup != nil || h.Performance.ActiveJobs != 0 || h.Performance.MaxConcurrentBackups != 1 || !h.BackupWindow.Open {
		t.Fatalf("health: %+v", h)
	}

	var vms struct{ VMs []cbt.VMInfo }
	a.get("/api/v1/vms", http.StatusOK, &vms)
	paths := map[string]cbt.VMInfo{}
	for _, v := range vms.VMs {
		paths[v.Path] = v
	}
	web, db := paths["/DC0/vm/web"], paths["/DC0/vm/prod/db"]
	if web.Moref == "" || db.Moref == "" || len(db.Disks) != 2 || !db.CBT.Enabled || web.CBT.Enabled {
		t.Fatalf("vms: %+v", vms)
	}

	// The same VM by escaped inventory path, unescaped path, moref and name.
	for _, spec := range []string{esc("/DC0/vm/prod/db"), "DC0/vm/prod/db", db.Moref, "db"} {
		var s VMSpecs
		a.get("/api/v1/vms/"+spec+"/specs", http.StatusOK, &s)
		if s.Moref != db.Moref || s.Path != "/DC0/vm/prod/db" || len(s.Disks) != 2 || s.Capacity != 24*mib || s.Hardware.NumCPU < 1 || s.Hardware.MemoryMB < 1 {
			t.Fatalf("specs of %s: %+v", spec, s)
		}
	}
	var d VMDisks
	a.get("/api/v1/vms/"+esc("/DC0/vm/prod/db")+"/disks", http.StatusOK, &d)
	if len(d.Disks) != 2 || d.Disks[0].Key != 2000 || d.Disks[1].Capacity != 8*mib || d.VM.Moref != db.Moref {
		t.Fatalf("disks: %+v", d)
	}
	var cs CBTStatus
	a.get("/api/v1/vms/"+esc("/DC0/vm/web")+"/cbt-status", http.StatusOK, &cs)
	if cs.Enabled || !cs.Supported || cs.PowerState != "poweredOn" || cs.VMName != "web" || cs.LastChangeID != "" || len(cs.Disks) != 1 {
		t.Fatalf("cbt-status: %+v", cs)
	}

	// 404: unknown VM (with its path), job, endpoint; 405.
	for _, tc := range []struct {
		method, path string
		body         any
		code         int
		msg          string
	}{
		{"GET", "/api/v1/vms/" + esc("/DC0/vm/nope") + "/specs", nil, 404, "/DC0/vm/nope"},
		{"GET", "/api/v1/vms/" + esc("/DC0/vm/nope") + "/cbt-status", nil, 404, "/DC0/vm/nope"},
		{"GET", "/api/v1/vms/vm-999/disks", nil, 404, "vm-999"},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "/DC0/vm/nope"}, 404, "/DC0/vm/nope"},
		{"GET", "/api/v1/backup/20250101T000000Z-abcdef/progress", nil, 404, "20250101T000000Z-abcdef"},
		{"GET", "/api/v1/backup/nope", nil, 404, "nope"},
		{"DELETE", "/api/v1/backup/20250101T000000Z-abcdef", nil, 404, "job not found"},
		{"DELETE", "/api/v1/backup/..%2F..", nil, 404, "job not found"},
		{"GET", "/api/v1/nowhere", nil, 404, "not found"},
		{"GET", "/api/v1/vms/" + esc("/DC0/vm/web") + "/nonsense", nil, 404, "not found"},
		{"PUT", "/api/v1/health", nil, 405, "method not allowed"},
		{"GET", "/api/v1/backup/start", nil, 404, "job not found"},
		// 400: malformed JSON, unknown fields, wrong types, bad values.
		{"POST", "/api/v1/backup/start", "{", 400, "malformed JSON"},
		{"POST", "/api/v1/backup/start", "", 400, "empty request body"},
		{"POST", "/api/v1/backup/start", `{"vm_path": "web"} {}`, 400, "malformed JSON"},
		{"POST", "/api/v1/backup/start", `["web"]`, 400, "JSON object"},
		{"POST", "/api/v1/backup/start", `{"vm_path": "web", "bakup_type": "full"}`, 400, `unknown field "bakup_type"`},
		{"POST", "/api/v1/backup/start", `{"vm_path": 42}`, 400, `invalid field "vm_path"`},
		{"POST", "/api/v1/backup/start", `{"vm_path": "web", "force": "yes"}`, 400, `invalid field "force"`},
		{"POST", "/api/v1/backup/start", `{"backup_type": "full"}`, 400, `missing field "vm_path"`},
		{"POST", "/api/v1/backup/start", `{"vm_path": "web", "backup_type": "differential"}`, 400, `invalid field "backup_type"`},
		{"POST", "/api/v1/backup/start", `{"vm_path": "web", "repository": "relative/dir"}`, 400, `invalid field "repository"`},
		{"POST", "/api/v1/backup/start", map[string]any{"vm_path": "web", "repository": e.dir}, 400, "is not empty"},
		{"POST", "/api/v1/backup/start", `{"vm_path": "web", "target": "http://cp/x"}`, 400, `invalid field "target"`},
		{"POST", "/api/v1/backup/start", `{"vm_path": "/DC0/vm/web", "backup_type": "incremental", "target_endpoint": "control.sendense.com:10809/backup-export"}`, 400, `invalid field "target_endpoint"`},
		{"POST", "/api/v1/backup/start", `{"vm_path": "web", "target": "nbd://cp/x", "repository": "/srv/r"}`, 400, "not both"},
		{"POST", "/api/v1/backup/start", `{"vm_path": "web", "targets": {"disk1": "nbd://cp/x"}}`, 400, `invalid field "targets"`},
		{"GET", "/api/v1/backup?limit=0", nil, 400, `invalid parameter "limit"`},
		{"GET", "/api/v1/backup?state=sleeping", nil, 400, `invalid parameter "state"`},
	} {
		code, body := a.do(tc.method, tc.path, tc.body)
		if code != tc.code {
			t.Errorf("%s %s %v: %d %s, want %d", tc.method, tc.path, tc.body, code, body, tc.code)
			continue
		}
		if ae := errBody(t, body); !strings.Contains(ae.Message+" "+ae.Detail, tc.msg) {
			t.Errorf("%s %s %v: %s, want %q", tc.method, tc.path, tc.body, body, tc.msg)
		}
	}
	// Unknown fields are named in "error"; the accepted ones in "detail".
	code, body := a.do("POST", "/api/v1/backup/start", `{"vm_path": "web", "colour": "blue"}`)
	if ae := errBody(t, body); code != 400 || ae.Message != `unknown field "colour"` || !strings.Contains(ae.Detail, `"backup_type"`) {
		t.Fatalf("unknown field: %d %s", code, body)
	}
	if e.snapshots("web") != nil || e.points("web") != nil {
		t.Fatal("a refused request did something")
	}
	var list JobList
	a.get("/api/v1/backup", http.StatusOK, &list)
	if len(list.Jobs) != 0 {
		t.Fatalf("jobs after refused requests: %+v", list)
	}
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestDecodeStart: the messages of bad start requests, without a lab.
func TestDecodeStart(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"vm_path": true}`, `field "vm_path" must be a string, not bool`},
		{`{"vm_path": "x", "quiesce": 1}`, `field "quiesce" must be a boolean, not number`},
		{`{"vm_path": "x",}`, "at byte 17"},
		{`{"vm_path": "x", "vm_path": "y", "x": 1}`, `field "x" is not accepted`},
		{strings.Repeat(" ", maxBody+1), "at most"},
	} {
		r, _ := http.NewRequest("POST", "/", strings.NewReader(tc.body))
		var req StartRequest
		aerr := decodeJSON(nil, r, &req, startFields)
		if aerr == nil || !strings.Contains(aerr.Detail, tc.want) {
			t.Errorf("%.40q: %v, want %q", tc.body, aerr, tc.want)
		}
	}
	r, _ := http.NewRequest("POST", "/", strings.NewReader(`{"vm_path": "/DC0/vm/web", "backup_type": "full", "force": true, "quiesce": false}`))
	var req StartRequest
	if aerr := decodeJSON(nil, r, &req, startFields); aerr != nil || req.VMPath != "/DC0/vm/web" || !req.Force || req.Quiesce == nil || *req.Quiesce {
		t.Fatalf("good request: %v %+v", aerr, req)
	}
	b, _ := json.Marshal(&apiError{Status: 400, Message: "m", Detail: "d"})
	if string(b) != `{"error":"m","detail":"d"}` {
		t.Fatalf("error body %s", b)
	}
}
