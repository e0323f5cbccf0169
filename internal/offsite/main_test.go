package offsite

import (
	"os"
	"testing"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/s3test"
)

// The tests run against a real SeaweedFS (internal/s3test), started once.

func TestMain(m *testing.M) {
	code := m.Run()
	s3test.StopShared()
	os.Exit(code)
}

// testTarget returns the configuration of a target on bucket.
func testTarget(t *testing.T, srv *s3test.Server, bucket string) *config.Offsite {
	t.Helper()
	access, secret := s3test.Credentials(t, t.TempDir())
	c := config.Defaults()
	c.Offsite = []config.Offsite{{Name: "dr", Endpoint: srv.Endpoint, Bucket: bucket, Prefix: "site-a", PathStyle: true,
		AccessKeyFile: access, SecretKeyFile: secret, ObjectLockMode: "COMPLIANCE", RetentionDays: 1, PartSize: "5M"}}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	return &c.Offsite[0]
}
