package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/s3test"
)

// TestOffsite: backups of a VM are copied to a real S3 server with Object
// Lock (SeaweedFS) by the CLI; with the repository gone, every point
// restores from the bucket alone, byte for byte; verify reads the bucket;
// the objects cannot be deleted with the same credentials; prune reports
// the locked points without failing; bad targets are clear errors.
func TestOffsite(t *testing.T) {
	srv, err := s3test.Start(s3test.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	b := startBackupLab(t, []lab.VMSpec{multiDiskVM})
	b.backup("db")
	b.write("db", 2000, 1*mib, 256*kib, 21)
	b.write("db", 2002, 8*mib, mib, 22)
	b.backup("db")
	b.write("db", 2001, 2*mib, 64*kib, 23)
	b.backup("db", "--full") // a new chain: prune may drop the first
	ids := b.backupIDs("db")

	bucket := srv.Bucket(t, true)
	access, secret := s3test.Credentials(t, b.dir)
	cfg := filepath.Join(b.dir, "sendense.toml")
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, `
[[offsite]]
name = "dr"
endpoint = %q
bucket = %q
prefix = "site-a"
path_style = true
access_key_file = %q
secret_key_file = %q
object_lock_mode = "COMPLIANCE"
retention_days = 1
part_size = "5M"

[[offsite]]
name = "plain"
endpoint = %[1]q
bucket = "sendense-no-such-bucket"
path_style = true
access_key_file = %[3]q
secret_key_file = %[4]q
`, srv.Endpoint, bucket, access, secret)
	f.Close()

	out := b.mustRun("offsite", "sync", "--target", "dr")
	if !strings.Contains(out, "3 uploaded, 0 already there") {
		t.Fatalf("first sync:\n%s", out)
	}
	out = b.mustRun("offsite", "sync", "--target", "dr", "--json", "db")
	if !strings.Contains(out, `"uploaded":0`) || !strings.Contains(out, `"present":3`) {
		t.Fatalf("second sync:\n%s", out)
	}

	// The same credentials cannot delete a locked version.
	c := srv.Client()
	var deleted, refused int
	for oi := range c.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: "site-a/db/", Recursive: true, WithVersions: true}) {
		err := c.RemoveObject(context.Background(), bucket, oi.Key, minio.RemoveObjectOptions{VersionID: oi.VersionID})
		if err == nil {
			deleted++
			t.Errorf("%s version %s was deleted", oi.Key, oi.VersionID)
		} else if minio.ToErrorResponse(err).Code == "AccessDenied" {
			refused++
		}
	}
	if refused < 3*(3+2) { // 3 points of 3 images, a manifest and a seal
		t.Fatalf("%d deletes refused, %d done", refused, deleted)
	}

	// Disaster: the repository is gone. The bucket alone restores.
	os.RemoveAll(b.repo)
	out = b.mustRun("list", "--repo", "s3://dr/", "--json")
	if n := strings.Count(out, `"message_type":"backup"`); n != 3 || !strings.Contains(out, `"manifest":"s3://dr/db/`) {
		t.Fatalf("list of the bucket:\n%s", out)
	}
	for _, id := range ids {
		to := filepath.Join(b.dir, "s3-restore-"+id)
		b.mustRun("restore", "--repo", "s3://dr/", "db", "--backup", id, "--to", to)
		for key, exp := range b.expected["db"][id] {
			run(t, "cmp", exp, filepath.Join(to, fmt.Sprintf("db-disk%d.raw", key)))
		}
		entries, _ := os.ReadDir(to)
		if len(entries) != 3 {
			t.Fatalf("restore left other files in %s: %v", to, entries)
		}
	}
	out = b.mustRun("verify", "--repo", "s3://dr/", "--json")
	var sum struct {
		Images int  `json:"images"`
		OK     bool `json:"ok"`
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if json.Unmarshal([]byte(lines[len(lines)-1]), &sum); sum.Images != 9 || !sum.OK {
		t.Fatalf("verify of the bucket:\n%s", out)
	}

	// Prune: the first chain is locked; reported, not an error.
	out = b.mustRun("offsite", "prune", "--target", "dr", "--keep", "1")
	if !strings.Contains(out, "locked        db "+ids[0]) || !strings.Contains(out, "2 still locked") {
		t.Fatalf("prune:\n%s", out)
	}

	// Clear errors.
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"list", "--repo", "s3://nope/"}, 2, `no offsite target "nope"`},
		{[]string{"offsite", "sync", "--target", "plain"}, 1, "bucket sendense-no-such-bucket does not exist"},
		{[]string{"offsite", "sync"}, 2, "--target NAME is required"},
		{[]string{"restore", "--repo", "s3://dr/", "db", "--backup", "20990101T000000Z", "--to", filepath.Join(b.dir, "x")}, 1, "not in the bucket"},
	} {
		_, errOut, code := b.run(nil, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("sendense %s: exit %d, %q; want exit %d saying %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.want)
		}
	}
	os.WriteFile(secret, []byte("not-the-secret\n"), 0o600)
	_, errOut, code := b.run(nil, "list", "--repo", "s3://dr/")
	if code != 1 || !strings.Contains(errOut, "the secret key is wrong") || strings.Contains(errOut, "not-the-secret") {
		t.Errorf("wrong secret: exit %d: %s", code, errOut)
	}
}
