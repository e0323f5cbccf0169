package config

import (
	"os"
	"path/filepath"
	"reflect"
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
	p := write(t, "[vcenter]\nurl = \"https://file.example.com/sdk\"\nuser = \"file-user\"\npassword_env = \"PW\"\n"+
		"[repository]\npath = \"/file/repo\"\n[copy]\nrate = \"100M\"\n")
	c, err := Load(p, env(map[string]string{
		"SENDENSE_VCENTER_URL":           "https://env.example.com/sdk",
		"SENDENSE_VDDK_LIBDIR":           "/env/vddk",
		"SENDENSE_REPOSITORY":            "/env/repo",
		"SENDENSE_VCENTER_PASSWORD_FILE": "/env/pw",
	}))
	if err != nil {
		t.Fatal(err)
	}
	// flag > environment > file: the environment overrides the file.
	if c.VCenter.URL != "https://env.example.com/sdk" || c.Repository.Path != "/env/repo" || c.VDDK.Libdir != "/env/vddk" {
		t.Errorf("the environment must override the file: %+v %+v %+v", c.VCenter, c.Repository, c.VDDK)
	}
	if c.VCenter.User != "file-user" {
		t.Errorf("file values not overridden are kept: user = %q", c.VCenter.User)
	}
	// The variable's password file replaces the file's password_env.
	if c.VCenter.PasswordFile != "/env/pw" || c.VCenter.PasswordEnv != "" {
		t.Errorf("password source: %+v", c.VCenter)
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
	if l, _ := c.State.Lease(); c.State.Dir != "/run/sendense" || l != 0 {
		t.Fatalf("the environment must win over the file: %+v, lease %v", c.State, l)
	}
	if c, _ := Load("", env(nil)); c.State.Dir != DefaultStateDir {
		t.Fatalf("default state dir %q", c.State.Dir)
	}
}

func TestSearchPaths(t *testing.T) {
	home := t.TempDir()
	e := env(map[string]string{"HOME": home})
	paths := SearchPaths(e)
	if len(paths) != 2 || paths[0] != "/etc/sendense/sendense.toml" || paths[1] != filepath.Join(home, ".config/sendense/sendense.toml") {
		t.Fatalf("search paths %q", paths)
	}
	xdg := t.TempDir()
	if p := SearchPaths(env(map[string]string{"HOME": home, "XDG_CONFIG_HOME": xdg}))[1]; p != filepath.Join(xdg, "sendense/sendense.toml") {
		t.Fatalf("XDG_CONFIG_HOME ignored: %s", p)
	}
	if _, err := os.Stat(paths[0]); err == nil {
		t.Skip("this machine has /etc/sendense/sendense.toml")
	}
	if p, err := Find(e); p != "" || err != nil {
		t.Fatalf("no file: %q, %v", p, err)
	}
	user := paths[1]
	os.MkdirAll(filepath.Dir(user), 0o700)
	os.WriteFile(user, []byte("[repository]\npath = \"/user/repo\"\n"), 0o600)
	if p, err := Find(e); p != user || err != nil {
		t.Fatalf("user file: %q, %v", p, err)
	}
}

func TestRetentionAndVMTables(t *testing.T) {
	c, err := Load(write(t, `
[retention]
keep_last = 2
keep_daily = 7
keep_monthly = -1
keep_within = "1y6m"

[[vm]]
name = "db*"
exclude_disks = [2001, 2002]

[[vm]]
path = "/DC0/vm/prod/*"
exclude_disks = [2003]
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Retention.Policy(); p.Last != 2 || p.Daily != 7 || p.Monthly != -1 || p.Within.String() != "1y6m" {
		t.Fatalf("retention %+v", p)
	}
	if got := c.ExcludedDisks("db01", "/DC0/vm/prod/db01", "vm-1"); len(got) != 3 {
		t.Fatalf("excluded disks of db01: %v", got)
	}
	if got := c.ExcludedDisks("web", "/DC0/vm/web", "vm-2"); len(got) != 0 {
		t.Fatalf("excluded disks of web: %v", got)
	}
	for _, tc := range []struct{ text, want string }{
		{"[retention]\nkeep_within = \"3w\"\n", "unknown unit"},
		{"[retention]\nkeep_daily = -5\n", "keep_daily must be"},
		{"[[vm]]\nexclude_disks = [2001]\n", "matches every VM"},
		{"[[vm]]\nname = \"[x\"\n", "bad pattern"},
	} {
		if _, err := Load(write(t, tc.text), env(nil)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%q) = %v, want %q", tc.text, err, tc.want)
		}
	}
}

func TestParallelBackups(t *testing.T) {
	c, _ := Load(write(t, "[performance]\nmax_concurrent_backups = 3\n"), env(nil))
	if c.ParallelBackups() != 3 {
		t.Fatalf("parallel %d", c.ParallelBackups())
	}
	c, _ = Load(write(t, "[performance]\nmax_concurrent_backups = 3\n[backup]\nmax_concurrent_vms = 2\n"), env(nil))
	if c.ParallelBackups() != 2 {
		t.Fatalf("parallel with max_concurrent_vms %d", c.ParallelBackups())
	}
}

// TestDocumented: docs/configuration.md's table has every key of the file
// and every variable.
func TestDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	var walk func(section string, typ reflect.Type)
	walk = func(section string, typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			tag := strings.Split(f.Tag.Get("toml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			switch {
			case section == "" && f.Type.Kind() == reflect.Slice:
				walk("[["+tag+"]]", f.Type.Elem())
			case section == "":
				walk("["+tag+"]", f.Type)
			case !strings.Contains(text, "`"+section+" "+tag+"`") && !strings.Contains(text, section+" "+tag):
				t.Errorf("docs/configuration.md does not document %s %s", section, tag)
			}
		}
	}
	walk("", reflect.TypeOf(Config{}))
	for _, e := range Env {
		if !strings.Contains(text, "`"+e.Name+"`") || !strings.Contains(text, "`"+e.Key+"`") {
			t.Errorf("docs/configuration.md does not document %s (%s)", e.Name, e.Key)
		}
	}
}

func TestRepositoryPassphraseAndCredentials(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	os.Mkdir(creds, 0o700)
	os.WriteFile(filepath.Join(creds, "repository"), []byte("from credential\n"), 0o600)
	os.WriteFile(filepath.Join(creds, "vcenter"), []byte("vc secret"), 0o600)
	envFile := filepath.Join(dir, "env.pass")
	os.WriteFile(envFile, []byte("from env\r\nsecond line\n"), 0o600)
	cfg := filepath.Join(dir, "s.toml")
	os.WriteFile(cfg, []byte("[vcenter]\npassword_credential = \"vcenter\"\n[repository]\nencryption = \"aes-256\"\npassword_credential = \"repository\"\n"), 0o600)
	env := map[string]string{"CREDENTIALS_DIRECTORY": creds}
	c, err := Load(cfg, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if p, err := c.Repository.Passphrase(func(k string) string { return env[k] }); err != nil || string(p) != "from credential" {
		t.Fatalf("credential: %q %v", p, err)
	}
	if p, err := c.VCenter.Password(func(k string) string { return env[k] }); err != nil || p != "vc secret" {
		t.Fatalf("vcenter credential: %q %v", p, err)
	}
	// The variable overrides the file's credential.
	env["SENDENSE_REPOSITORY_PASSWORD_FILE"] = envFile
	c, err = Load(cfg, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if p, err := c.Repository.Passphrase(func(k string) string { return env[k] }); err != nil || string(p) != "from env" {
		t.Fatalf("variable: %q %v", p, err)
	}
	// Without $CREDENTIALS_DIRECTORY: an error naming what sets it.
	c.Repository.PasswordFile, c.Repository.PasswordCredential = "", "repository"
	if _, err := c.Repository.Passphrase(func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "LoadCredentialEncrypted") {
		t.Fatalf("no credentials directory: %v", err)
	}
	for _, bad := range []string{"[repository]\nencryption = \"aes-128\"\n", "[repository]\npassword_credential = \"../x\"\n",
		"[repository]\npassword_file = \"a\"\npassword_credential = \"b\"\n"} {
		os.WriteFile(cfg, []byte(bad), 0o600)
		if _, err := Load(cfg, func(string) string { return "" }); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
}
