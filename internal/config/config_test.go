package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sendense.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestPrecedence(t *testing.T) {
	p := write(t, "[vcenter]\nurl = \"https://file.example.com/sdk\"\n[copy]\nrate = \"100M\"\n")
	c, err := Load(p, env(map[string]string{
		"SENDENSE_VCENTER_URL":  "https://env.example.com/sdk",
		"SENDENSE_VCENTER_USER": "env-user",
		"SENDENSE_VDDK_LIBDIR":  "/env/vddk",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.VCenter.URL != "https://file.example.com/sdk" {
		t.Errorf("file must override the environment: url = %q", c.VCenter.URL)
	}
	if c.VCenter.User != "env-user" || c.VDDK.Libdir != "/env/vddk" {
		t.Errorf("environment defaults lost: %+v %+v", c.VCenter, c.VDDK)
	}
	if r, _ := c.Copy.RateBytes(); r != 100<<20 {
		t.Errorf("rate = %d", r)
	}
	if c.Backup.MaxConcurrentDisks != 4 {
		t.Errorf("default max_concurrent_disks lost: %d", c.Backup.MaxConcurrentDisks)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"[vcenter]\nurl = \"x\"\n\n[backup]\nquiesce = true\nmax_concurent_disks = 3\n", `line 6: unknown key "backup.max_concurent_disks"`},
		{"[vcenter]\nuser = \"u\"\npasword_file = \"/x\"\n", `line 3: unknown key "vcenter.pasword_file"`},
		{"[vcentre]\nurl = \"x\"\n", `line 1: unknown key "vcentre"`},
		{"[backup]\nquiesce = yes\n", "line 2"},
		{"[copy]\nrate = \"fast\"\n", "[copy] rate"},
		{"[vcenter]\npassword_file = \"/a\"\npassword_env = \"B\"\n", "mutually exclusive"},
		{"[backup]\nmax_concurrent_disks = 0\n", "at least 1"},
		{"[cbt]\nfault = \"maybe\"\n", `[cbt] fault must be "full" or "fail"`},
		{"[state]\nsnapshot_lease = \"5s\"\n", "[state] snapshot_lease"},
		{"[state]\nsnapshot_lease = \"soon\"\n", "[state] snapshot_lease"},
		{"[state]\ndir = \"\"\n", "[state] dir must not be empty"},
		{"[api]\nallowed_repositories = \"/srv\"\n", "allowed_repositories"},
	} {
		_, err := Load(write(t, tc.text), env(nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%q) = %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}

func TestPassword(t *testing.T) {
	dir := t.TempDir()
	pf := filepath.Join(dir, "pw")
	os.WriteFile(pf, []byte("s3cret\nignored\n"), 0o600)
	if pw, err := (VCenter{PasswordFile: pf}).Password(env(nil)); err != nil || pw != "s3cret" {
		t.Fatalf("password file: %q, %v", pw, err)
	}
	if pw, err := (VCenter{PasswordEnv: "PW"}).Password(env(map[string]string{"PW": "x"})); err != nil || pw != "x" {
		t.Fatalf("password env: %q, %v", pw, err)
	}
	if _, err := (VCenter{PasswordEnv: "PW"}).Password(env(nil)); err == nil || !strings.Contains(err.Error(), "PW") {
		t.Fatalf("unset env: %v", err)
	}
	if _, err := (VCenter{}).Password(env(nil)); err == nil {
		t.Fatal("no password source accepted")
	}
}

func TestExampleConfigLoads(t *testing.T) {
	c, err := Load("../../examples/sendense.toml", env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.VCenter.URL == "" || c.Repository.Path == "" {
		t.Fatalf("example config incomplete: %+v", c)
	}
}

func TestState(t *testing.T) {
	c, err := Load(write(t, "[cbt]\nauto_enable = true\n"), env(map[string]string{"SENDENSE_STATE_DIR": "/run/sendense"}))
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := c.State.Lease(); c.State.Dir != "/run/sendense" || l != 24*time.Hour || c.CBT.Fault != "full" {
		t.Fatalf("state %+v, lease %v, cbt %+v", c.State, l, c.CBT)
	}
	c, err = Load(write(t, "[state]\ndir = \"/srv/state\"\nsnapshot_lease = \"0\"\n"), env(map[string]string{"SENDENSE_STATE_DIR": "/run/sendense"}))
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := c.State.Lease(); c.State.Dir != "/srv/state" || l != 0 {
		t.Fatalf("the file must win: %+v, lease %v", c.State, l)
	}
	if c, _ := Load("", env(nil)); c.State.Dir != DefaultStateDir {
		t.Fatalf("default state dir %q", c.State.Dir)
	}
}
