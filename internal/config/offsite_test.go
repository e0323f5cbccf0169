package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOffsite(t *testing.T) {
	p := write(t, `
[[offsite]]
name = "dr"
endpoint = "https://s3.example.com"
bucket = "sendense-dr"
prefix = "/site-a/"
access_key_file = "/etc/sendense/s3.access"
secret_key_file = "/etc/sendense/s3.secret"
object_lock_mode = "COMPLIANCE"
retention_days = 30
sync_after_backup = true
`)
	c, err := Load(p, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	o, err := c.OffsiteTarget("dr")
	if err != nil {
		t.Fatal(err)
	}
	if o.Prefix != "site-a" || o.Region != DefaultOffsiteRegion || o.Connections != DefaultOffsiteConnections || !o.SyncAfterBackup {
		t.Errorf("defaults: %+v", o)
	}
	if ps, _ := o.PartSizeBytes(); ps != DefaultOffsitePartSize {
		t.Errorf("part size %d", ps)
	}
	if _, err := c.OffsiteTarget("nope"); err == nil || !strings.Contains(err.Error(), "it has dr") {
		t.Errorf("unknown target: %v", err)
	}

	base := "[[offsite]]\nname = \"dr\"\nendpoint = \"https://s3.example.com\"\nbucket = \"sendense-dr\"\n"
	for _, tc := range []struct{ extra, want string }{
		{"object_lock_mode = \"COMPLIANCE\"\n", "needs retention_days"},
		{"object_lock_mode = \"LEGAL\"\nretention_days = 3\n", "must be COMPLIANCE, GOVERNANCE"},
		{"retention_days = 3\n", "retention_days needs object_lock_mode"},
		{"prefix = \"a/../b\"\n", "plain key prefix"},
		{"part_size = \"1M\"\n", "between 5M and 5G"},
		{"access_key_file = \"/x\"\n", "set both access_key_file and secret_key_file"},
		{"connections = 100\n", "between 1 and 64"},
		{"[[offsite]]\nname = \"dr\"\nendpoint = \"https://b.example.com\"\nbucket = \"other\"\n", "used twice"},
	} {
		_, err := Load(write(t, base+tc.extra), env(nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.extra, err, tc.want)
		}
	}
	for _, tc := range []struct{ text, want string }{
		{"[[offsite]]\nname = \"Bad Name\"\n", "name \"Bad Name\""},
		{"[[offsite]]\nname = \"dr\"\nendpoint = \"ftp://x\"\nbucket = \"b-b\"\n", "must be https://HOST"},
		{"[[offsite]]\nname = \"dr\"\nendpoint = \"https://k:s@x\"\nbucket = \"b-b\"\n", "must not hold credentials"},
		{"[[offsite]]\nname = \"dr\"\nendpoint = \"https://x\"\nbucket = \"B_b\"\n", "not a valid S3 bucket name"},
	} {
		_, err := Load(write(t, tc.text), env(nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.text, err, tc.want)
		}
	}
}

func TestOffsiteCredentials(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), []byte("AKIA1\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "s"), []byte("very-secret\r\nignored\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600)
	o := Offsite{Name: "dr", AccessKeyFile: filepath.Join(dir, "a"), SecretKeyFile: filepath.Join(dir, "s")}
	a, s, err := o.Credentials(env(nil))
	if err != nil || a != "AKIA1" || s != "very-secret" {
		t.Fatalf("%q %q %v", a, s, err)
	}
	o.SecretKeyFile = filepath.Join(dir, "empty")
	if _, _, err := o.Credentials(env(nil)); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("empty secret: %v", err)
	}
	// systemd credentials
	os.WriteFile(filepath.Join(dir, "sendense-offsite-dr.access"), []byte("AKIA2"), 0o600)
	os.WriteFile(filepath.Join(dir, "sendense-offsite-dr.secret"), []byte("s2"), 0o600)
	o = Offsite{Name: "dr"}
	a, s, err = o.Credentials(env(map[string]string{"CREDENTIALS_DIRECTORY": dir}))
	if err != nil || a != "AKIA2" || s != "s2" {
		t.Fatalf("systemd: %q %q %v", a, s, err)
	}
	if _, _, err := o.Credentials(env(nil)); err == nil || !strings.Contains(err.Error(), "LoadCredential=sendense-offsite-dr.access") {
		t.Fatalf("none: %v", err)
	}
}
