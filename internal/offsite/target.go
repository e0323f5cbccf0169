// Package offsite copies restore points of a repository to an S3 bucket
// with Object Lock, and reads them back (docs/offsite.md).
//
// The bucket holds the repository's own files, byte for byte, under the
// target's prefix, plus one seal per restore point that lists the point's
// objects with their sizes, SHA-256 and versions:
//
//	PREFIX/sendense-repository.json             the repository marker
//	PREFIX/<vm-dir>/<backup-id>-disk<key>.qcow2  images, exactly as in the repository
//	PREFIX/<vm-dir>/<backup-id>.json             manifests, exactly as in the repository
//	PREFIX/<vm-dir>/<backup-id>.offsite.json     the seal, written last
//
// A point is in the bucket once its seal is. Reads pin the versions the
// seal names, so a later overwrite or delete marker changes nothing.
package offsite

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/sendense/capture/internal/config"
)

// Target is an opened [[offsite]] target: a bucket (and prefix) reached
// with its credentials.
type Target struct {
	Name     string
	Bucket   string
	Prefix   string // "" or "site-a/" (with the slash)
	Mode     minio.RetentionMode
	Days     int
	Conns    int
	PartSize int64

	endpoint string
	c        *minio.Core
	now      func() time.Time
	// afterPart, in tests, runs after each part uploaded (cut simulation).
	afterPart func(key string, part int)
}

// IsURL says whether a repository location is an offsite target (s3://NAME/).
func IsURL(location string) bool { return strings.HasPrefix(location, "s3://") }

// ParseURL returns the target name of s3://NAME or s3://NAME/.
func ParseURL(location string) (string, error) {
	u, err := url.Parse(location)
	if err != nil || u.Scheme != "s3" {
		return "", fmt.Errorf("repository %q: not an s3://NAME/ location", location)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") || u.Host == "" {
		return "", fmt.Errorf("repository %q: use s3://NAME/ where NAME is an [[offsite]] target of the configuration (bucket and prefix come from there)", location)
	}
	return u.Host, nil
}

// Location names the target in messages: s3://NAME/ (bucket/prefix).
func (t *Target) Location() string {
	return fmt.Sprintf("s3://%s/ (bucket %s%s)", t.Name, t.Bucket, strings.TrimSuffix("/"+t.Prefix, "/"))
}

// Open connects to the target and checks it: the credentials work, the
// bucket exists, and (when the target locks objects) the bucket has
// Object Lock enabled. getenv reads $CREDENTIALS_DIRECTORY.
func Open(ctx context.Context, o *config.Offsite, getenv func(string) string) (*Target, error) {
	access, secret, err := o.Credentials(getenv)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(o.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("offsite target %s: endpoint: %w", o.Name, err)
	}
	secure := u.Scheme == "https"
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("offsite target %s: ca_file: %w", o.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("offsite target %s: ca_file %s holds no PEM certificate", o.Name, o.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	tr.MaxIdleConnsPerHost = max(o.Connections*2, 8)
	lookup := minio.BucketLookupAuto
	if o.PathStyle {
		lookup = minio.BucketLookupPath
	}
	c, err := minio.NewCore(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(access, secret, ""),
		Secure:       secure,
		Region:       o.Region,
		BucketLookup: lookup,
		Transport:    tr,
		MaxRetries:   5, // 5xx and network errors, backing off up to 1 s
	})
	if err != nil {
		return nil, fmt.Errorf("offsite target %s: %w", o.Name, err)
	}
	ps, err := o.PartSizeBytes()
	if err != nil {
		return nil, err
	}
	t := &Target{Name: o.Name, Bucket: o.Bucket, Mode: minio.RetentionMode(o.ObjectLockMode), Days: o.RetentionDays,
		Conns: o.Connections, PartSize: ps, endpoint: o.Endpoint, c: c, now: time.Now}
	if o.Prefix != "" {
		t.Prefix = strings.Trim(o.Prefix, "/") + "/"
	}
	if err := t.check(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// check asks the bucket whether it exists and is locked as configured.
func (t *Target) check(ctx context.Context) error {
	// A listing (not HEAD, whose errors have no code) of one key.
	if _, err := t.c.ListObjectsV2(t.Bucket, t.Prefix, "", "", "/", 1); err != nil {
		if code(err) == "NoSuchBucket" {
			return fmt.Errorf("offsite target %s: bucket %s does not exist at the endpoint: create it with Object Lock enabled (docs/offsite.md), or fix bucket", t.Name, t.Bucket)
		}
		return t.wrap(err, "checking bucket "+t.Bucket)
	}
	if t.Mode == "" {
		return nil
	}
	enabled, _, _, _, err := t.c.GetObjectLockConfig(ctx, t.Bucket)
	if err != nil {
		if code(err) == "ObjectLockConfigurationNotFoundError" || code(err) == "ObjectLockConfigurationNotFound" {
			return fmt.Errorf("offsite target %s: bucket %s does not have Object Lock enabled, so object_lock_mode = %q cannot protect anything: create a new bucket with Object Lock enabled (it cannot be switched on later on every server), or set object_lock_mode = \"\"", t.Name, t.Bucket, t.Mode)
		}
		return t.wrap(err, "reading the Object Lock configuration of bucket "+t.Bucket)
	}
	if enabled != "Enabled" {
		return fmt.Errorf("offsite target %s: bucket %s does not have Object Lock enabled (ObjectLockEnabled is %q): create a new bucket with Object Lock enabled, or set object_lock_mode = \"\"", t.Name, t.Bucket, enabled)
	}
	return nil
}

// code is the S3 error code of err ("" for other errors).
func code(err error) string { return minio.ToErrorResponse(err).Code }

// wrap explains an S3 error: bad credentials, missing permissions,
// unreachable endpoint. It never includes the credentials.
func (t *Target) wrap(err error, doing string) error {
	if err == nil {
		return nil
	}
	prefix := fmt.Sprintf("offsite target %s: %s", t.Name, doing)
	switch code(err) {
	case "InvalidAccessKeyId", "InvalidAccessKeyID":
		return fmt.Errorf("%s: the endpoint does not know the access key (InvalidAccessKeyId): check access_key_file", prefix)
	case "SignatureDoesNotMatch":
		return fmt.Errorf("%s: the secret key is wrong (SignatureDoesNotMatch): check secret_key_file", prefix)
	case "AccessDenied":
		return fmt.Errorf("%s: access denied: the credentials lack the permission (see docs/offsite.md for the permissions sendense needs): %v", prefix, err)
	case "NoSuchBucket":
		return fmt.Errorf("%s: bucket %s does not exist: create it with Object Lock enabled (docs/offsite.md)", prefix, t.Bucket)
	}
	var ne net.Error
	var ue *url.Error
	if errors.As(err, &ne) || errors.As(err, &ue) {
		return fmt.Errorf("%s: cannot reach the endpoint: %v", prefix, err)
	}
	return fmt.Errorf("%s: %w", prefix, err)
}

// key is the object key of name (relative to the prefix).
func (t *Target) key(name string) string { return t.Prefix + name }

// vmKey is the key of file in VM directory dir.
func (t *Target) vmKey(dir, file string) string { return t.Prefix + path.Join(dir, file) }

// dirKey is the key prefix of VM directory dir ("PREFIX/dir/").
func (t *Target) dirKey(dir string) string { return t.Prefix + dir + "/" }

// lockUntil is the retention date of objects uploaded now ("" mode: none).
func (t *Target) lockUntil() time.Time {
	if t.Mode == "" {
		return time.Time{}
	}
	return t.now().UTC().Add(time.Duration(t.Days) * 24 * time.Hour).Truncate(time.Second)
}

// putOptions are the options of a new object: retention, and the
// object's SHA-256 as metadata when known.
func (t *Target) putOptions(until time.Time, sha string) minio.PutObjectOptions {
	o := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	if !until.IsZero() {
		o.Mode, o.RetainUntilDate = t.Mode, until
	}
	if sha != "" {
		o.UserMetadata = map[string]string{"sendense-sha256": sha}
	}
	return o
}

// httpStatus is the HTTP status of an S3 error (0 for others).
func httpStatus(err error) int { return minio.ToErrorResponse(err).StatusCode }
