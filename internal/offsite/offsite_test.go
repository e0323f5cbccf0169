package offsite

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
	"github.com/sendense/capture/internal/retention"
	"github.com/sendense/capture/internal/s3test"
	"github.com/sendense/capture/internal/sshtest"
)

const mib = 1 << 20

var vm = repo.VMRef{Moref: "vm-7", Name: "db 01", InstanceUUID: "5012bbbb-0000-0000-0000-000000000007"}

// newRepo builds a repository with backups of vm: a full then
// incrementals (specs[i] for point i).
func newRepo(t *testing.T, specs ...[]repotest.Disk) (*repo.Repo, *repotest.Builder) {
	t.Helper()
	repotest.Require(t)
	r, err := repo.Init(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	b := repotest.New(t, r, vm, 7)
	for _, s := range specs {
		b.Backup(s...)
	}
	return r, b
}

func full(capacity uint64, writes ...repotest.Write) []repotest.Disk {
	return []repotest.Disk{{Key: 2000, Capacity: capacity, Full: true, Writes: writes}}
}

func incr(capacity uint64, writes ...repotest.Write) []repotest.Disk {
	return []repotest.Disk{{Key: 2000, Capacity: capacity, Writes: writes}}
}

func open(t *testing.T, o *config.Offsite) *Target {
	t.Helper()
	tg, err := Open(context.Background(), o, os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// stageAndRestore reads backup id (the latest if "") of the VM from the
// bucket alone and checks that every disk restores to what was backed up
// and that the staged repository verifies.
func stageAndRestore(t *testing.T, tg *Target, b *repotest.Builder, id string) {
	t.Helper()
	ctx := context.Background()
	st, err := tg.Stage(ctx, StageOptions{VM: vm.Name, Backup: id, Latest: id == "", Images: true, In: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if len(st.Problems) > 0 {
		t.Fatalf("stage: %v", st.Problems)
	}
	if fi, err := os.Stat(filepath.Dir(st.Dir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("staging directory: %v %v", fi.Mode(), err)
	}
	r, err := repo.Open(st.Dir)
	if err != nil {
		t.Fatal(err)
	}
	sb := *b
	sb.Repo = r
	sb.CheckRestore(st.Backup)
	res, err := r.Verify(ctx, repo.VerifyOptions{VM: vm.Moref, Backup: st.Backup})
	if err != nil || !res.OK() {
		t.Fatalf("verify of the staged chain: %v %+v", err, res)
	}
}

// TestSyncRestore: three points are uploaded (multipart, locked), a second
// sync uploads nothing, the points restore from the bucket alone, and a
// later point's sync extends the lock of the chain it needs.
func TestSyncRestore(t *testing.T) {
	srv := s3test.Shared(t)
	ctx := context.Background()
	r, b := newRepo(t,
		full(24*mib, repotest.Write{Off: 0, Len: 12 * mib}, repotest.Write{Off: 20 * mib, Len: 64 << 10}),
		incr(24*mib, repotest.Write{Off: 1 * mib, Len: 6 * mib}, repotest.Write{Off: 8 * mib, Len: 64 << 10, Zero: true}),
		incr(24*mib, repotest.Write{Off: 16 * mib, Len: 128 << 10}),
	)
	bucket := srv.Bucket(t, true)
	tg := open(t, testTarget(t, srv, bucket))
	t0 := time.Now().UTC()
	tg.now = func() time.Time { return t0 }
	var seen []PointResult
	rep, err := Sync(ctx, r, tg, SyncOptions{OnPoint: func(p PointResult) { seen = append(seen, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Uploaded != 3 || rep.Present != 0 || len(seen) != 3 {
		t.Fatalf("first sync: %+v", rep)
	}
	if rep.Stats.Parts < 4 { // the full's 12 MiB image is 3 parts of 5 MiB
		t.Errorf("expected multipart uploads, got %+v", rep.Stats)
	}
	rep, err = Sync(ctx, r, tg, SyncOptions{})
	if err != nil || rep.Uploaded != 0 || rep.Present != 3 || rep.Stats.Bytes != 0 {
		t.Fatalf("second sync: %+v %v", rep, err)
	}

	// Every object is locked until the upload + retention_days, and the
	// seal records the SHA-256 of the file.
	c := srv.Client()
	ix, err := tg.Index(ctx, "")
	if err != nil || len(ix.Errors) > 0 || len(ix.Unsealed) > 0 {
		t.Fatalf("index: %v %+v", err, ix)
	}
	seals := ix.Seals("db_01")
	if len(seals) != 3 {
		t.Fatalf("seals: %+v", ix.VMs)
	}
	until := t0.Add(24 * time.Hour).Truncate(time.Second)
	for _, s := range seals {
		for _, o := range s.Objects {
			mode, u, err := c.GetObjectRetention(ctx, bucket, "site-a/db_01/"+o.Name, o.VersionID)
			if err != nil || *mode != minio.Compliance || u.Before(until) {
				t.Errorf("%s: retention %v %v %v, want COMPLIANCE until %v", o.Name, mode, u, err, until)
			}
			want, _ := os.ReadFile(filepath.Join(r.Dir, "db_01", o.Name))
			if sum := sha256.Sum256(want); hex.EncodeToString(sum[:]) != o.SHA256 || int64(len(want)) != o.Size {
				t.Errorf("%s: seal records %d bytes %s", o.Name, o.Size, o.SHA256)
			}
		}
	}

	// A new point two hours later: the lock of the chain it needs is
	// extended to its own date.
	b.Backup(incr(24*mib, repotest.Write{Off: 2 * mib, Len: 64 << 10})...)
	tg.now = func() time.Time { return t0.Add(2 * time.Hour) }
	rep, err = Sync(ctx, r, tg, SyncOptions{})
	if err != nil || rep.Uploaded != 1 || rep.Stats.LockExtended < 9 {
		t.Fatalf("third sync: %+v %v", rep, err)
	}
	for _, s := range seals {
		for _, o := range s.Objects {
			_, u, err := c.GetObjectRetention(ctx, bucket, "site-a/db_01/"+o.Name, o.VersionID)
			if err != nil || u.Before(until.Add(2*time.Hour)) {
				t.Errorf("%s: retention until %v %v, want %v", o.Name, u, err, until.Add(2*time.Hour))
			}
		}
	}

	// Restore from the bucket alone: the local repository is gone.
	os.RemoveAll(r.Dir)
	stageAndRestore(t, tg, b, "")
	stageAndRestore(t, tg, b, b.Points[1].ID)
}

// TestLockedObjectsStay: with the agent's own credentials, a locked
// version cannot be deleted or shortened; a delete marker (a plain
// delete) hides nothing from a restore, which reads the versions the seal
// names.
func TestLockedObjectsStay(t *testing.T) {
	srv := s3test.Shared(t)
	ctx := context.Background()
	r, b := newRepo(t, full(8*mib, repotest.Write{Off: 0, Len: 6 * mib}), incr(8*mib, repotest.Write{Off: 7 * mib, Len: 64 << 10}))
	bucket := srv.Bucket(t, true)
	tg := open(t, testTarget(t, srv, bucket))
	if _, err := Sync(ctx, r, tg, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	ix, err := tg.Index(ctx, "db_01")
	if err != nil {
		t.Fatal(err)
	}
	c := srv.Client()
	first := ix.Seals("db_01")[0]
	img := first.Objects[0]
	key := "site-a/db_01/" + img.Name
	err = c.RemoveObject(ctx, bucket, key, minio.RemoveObjectOptions{VersionID: img.VersionID})
	if err == nil || minio.ToErrorResponse(err).Code != "AccessDenied" {
		t.Fatalf("deleting a locked version: %v, want AccessDenied", err)
	}
	shorter := time.Now().Add(time.Hour)
	mode := minio.Compliance
	if err := c.PutObjectRetention(ctx, bucket, key, minio.PutObjectRetentionOptions{Mode: &mode, RetainUntilDate: &shorter, VersionID: img.VersionID}); err == nil {
		t.Fatal("the retention of a COMPLIANCE-locked version was shortened")
	}
	err = c.RemoveObject(ctx, bucket, key, minio.RemoveObjectOptions{VersionID: img.VersionID, GovernanceBypass: true})
	if err == nil {
		t.Fatal("a COMPLIANCE lock was bypassed")
	}
	// Plain deletes and an overwrite: restore still reads the sealed versions.
	for _, k := range []string{key, "site-a/db_01/" + sealName(first.ID)} {
		if err := c.RemoveObject(ctx, bucket, k, minio.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.PutObject(ctx, bucket, "site-a/db_01/"+manifestName(first.ID), strings.NewReader("{}"), 2, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(r.Dir)
	stageAndRestore(t, tg, b, b.Points[0].ID)
	stageAndRestore(t, tg, b, "")
}

// TestResume: the connection is cut in the middle of an image's upload;
// the next sync keeps the parts the server has (their MD5 matches the
// file) and sends only the others.
func TestResume(t *testing.T) {
	srv := s3test.Shared(t)
	ctx := context.Background()
	r, b := newRepo(t, full(40*mib, repotest.Write{Off: 0, Len: 36 * mib}))
	bucket := srv.Bucket(t, true)
	proxy, err := sshtest.NewProxy(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	o := testTarget(t, srv, bucket)
	o.Endpoint = "http://" + proxy.Addr
	o.Connections = 2
	tg := open(t, o)
	img := b.Points[0].ID + "-disk2000.qcow2"
	key := "site-a/db_01/" + img
	var done int
	tg.afterPart = func(k string, part int) {
		if done++; done == 3 {
			proxy.Refuse(true)
			proxy.Cut()
		}
	}
	if _, err := Sync(ctx, r, tg, SyncOptions{}); err == nil {
		t.Fatal("the sync did not notice the cut")
	}
	// What the server holds: an unfinished upload with some parts.
	core := &minio.Core{Client: srv.Client()}
	ups, err := core.ListMultipartUploads(ctx, bucket, key, "", "", "", 100)
	if err != nil || len(ups.Uploads) != 1 {
		t.Fatalf("unfinished uploads: %+v %v", ups.Uploads, err)
	}
	parts, err := core.ListObjectParts(ctx, bucket, key, ups.Uploads[0].UploadID, 0, 1000)
	if err != nil || len(parts.ObjectParts) < 3 {
		t.Fatalf("parts on the server: %+v %v", parts.ObjectParts, err)
	}
	have := len(parts.ObjectParts)
	proxy.Refuse(false)
	tg.afterPart = nil
	rep, err := Sync(ctx, r, tg, SyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(r.Dir, "db_01", img))
	n := int((fi.Size() + 5*mib - 1) / (5 * mib))
	if rep.Stats.PartsResumed != have || rep.Stats.Parts != n-have {
		t.Fatalf("resumed sync: %+v; the server had %d of %d parts", rep.Stats, have, n)
	}
	if ups, _ := core.ListMultipartUploads(ctx, bucket, key, "", "", "", 100); len(ups.Uploads) != 0 {
		t.Fatalf("unfinished uploads left: %+v", ups.Uploads)
	}
	os.RemoveAll(r.Dir)
	stageAndRestore(t, tg, b, "")
}

// TestPrune: prune keeps the newest points and those they need, reports
// locked points without error, removes the others only when their lock
// allows (GOVERNANCE with the bypass flag).
func TestPrune(t *testing.T) {
	srv := s3test.Shared(t)
	ctx := context.Background()
	w := repotest.Write{Off: 0, Len: 1 * mib}
	r, b := newRepo(t, full(4*mib, w), incr(4*mib, w), full(4*mib, w), incr(4*mib, w))
	bucket := srv.Bucket(t, true)
	o := testTarget(t, srv, bucket)
	o.ObjectLockMode = "GOVERNANCE"
	tg := open(t, o)
	if _, err := Sync(ctx, r, tg, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	ids := []string{b.Points[0].ID, b.Points[1].ID, b.Points[2].ID, b.Points[3].ID}
	actions := func(rep *PruneReport) map[string]string {
		out := map[string]string{}
		for _, p := range rep.Points {
			out[p.ID] = p.Action
		}
		return out
	}
	rep, err := Prune(ctx, tg, PruneOptions{Keep: 1})
	if err != nil {
		t.Fatal(err)
	}
	a := actions(rep)
	if a[ids[3]] != PruneKept || a[ids[2]] != PruneKept || a[ids[1]] != PruneLocked || a[ids[0]] != PruneLocked || rep.Locked != 2 || rep.Removed != 0 {
		t.Fatalf("prune under lock: %+v", rep.Points)
	}
	for _, p := range rep.Points {
		if p.Action == PruneLocked && (p.LockedUntil.Before(time.Now().Add(23*time.Hour)) || p.LockMode != "GOVERNANCE") {
			t.Errorf("locked point %s: until %v mode %q", p.ID, p.LockedUntil, p.LockMode)
		}
	}
	if ix, _ := tg.Index(ctx, ""); len(ix.Seals("db_01")) != 4 {
		t.Fatalf("a locked point was removed: %+v", ix.VMs)
	}
	rep, err = Prune(ctx, tg, PruneOptions{Keep: 1, DryRun: true, BypassGovernance: true})
	if a := actions(rep); err != nil || a[ids[0]] != PruneWouldRemove || a[ids[1]] != PruneWouldRemove {
		t.Fatalf("dry run: %+v %v", rep, err)
	}
	// A policy (Select) keeps the oldest point; the newest and what it
	// needs stay anyway.
	sel := func(points []retention.Point) map[string][]string {
		if len(points) != 4 || points[0].ID != ids[3] || points[3].ID != ids[0] || points[3].Time.IsZero() {
			t.Errorf("Select got %+v", points)
		}
		return map[string][]string{ids[0]: {"the policy"}, "20200101T000000Z": {"not a point"}}
	}
	rep, err = Prune(ctx, tg, PruneOptions{Select: sel, DryRun: true, BypassGovernance: true})
	if a := actions(rep); err != nil || a[ids[0]] != PruneKept || a[ids[1]] != PruneWouldRemove || a[ids[2]] != PruneKept || a[ids[3]] != PruneKept || rep.Kept != 3 {
		t.Fatalf("dry run with a policy: %+v %v", rep.Points, err)
	}
	rep, err = Prune(ctx, tg, PruneOptions{Keep: 1, BypassGovernance: true})
	if a := actions(rep); err != nil || a[ids[0]] != PruneRemoved || a[ids[1]] != PruneRemoved || rep.Removed != 2 {
		t.Fatalf("prune with bypass: %+v %v", rep, err)
	}
	ix, err := tg.Index(ctx, "")
	if err != nil || len(ix.Seals("db_01")) != 2 || len(ix.Unsealed) != 0 {
		t.Fatalf("after prune: %+v %v", ix, err)
	}
	// The next sync does not upload the pruned points again.
	if rep, err := Sync(ctx, r, tg, SyncOptions{}); err != nil || rep.Uploaded != 0 || rep.Older != 2 || rep.Present != 2 {
		t.Fatalf("sync after prune: %+v %v", rep, err)
	}
	// No version of the removed points is left.
	for oi := range srv.Client().ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: "site-a/db_01/" + ids[0], WithVersions: true, Recursive: true}) {
		if strings.HasPrefix(oi.Key, "site-a/db_01/"+ids[0]+"-disk") || strings.HasPrefix(oi.Key, "site-a/db_01/"+ids[0]+".") {
			t.Errorf("left in the bucket: %s %s", oi.Key, oi.VersionID)
		}
	}
	os.RemoveAll(r.Dir)
	stageAndRestore(t, tg, b, "")
}

// TestErrors: wrong credentials, a missing bucket, a bucket without
// Object Lock: clear errors that never show the secret.
func TestErrors(t *testing.T) {
	srv := s3test.Shared(t)
	ctx := context.Background()
	locked, plain := srv.Bucket(t, true), srv.Bucket(t, false)
	check := func(o *config.Offsite, want string) {
		t.Helper()
		_, err := Open(ctx, o, os.Getenv)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want one saying %q", err, want)
		}
		if strings.Contains(err.Error(), s3test.SecretKey) || strings.Contains(err.Error(), "wrong-secret-value") {
			t.Fatalf("the error shows the secret: %v", err)
		}
	}
	o := testTarget(t, srv, locked)
	os.WriteFile(o.SecretKeyFile, []byte("wrong-secret-value\n"), 0o600)
	check(o, "the secret key is wrong")
	o = testTarget(t, srv, locked)
	os.WriteFile(o.AccessKeyFile, []byte("AKUNKNOWN\n"), 0o600)
	check(o, "does not know the access key")
	check(testTarget(t, srv, "no-such-bucket-here"), "bucket no-such-bucket-here does not exist")
	check(testTarget(t, srv, plain), "does not have Object Lock enabled")
	o = testTarget(t, srv, plain)
	o.ObjectLockMode, o.RetentionDays = "", 0
	if _, err := Open(ctx, o, os.Getenv); err != nil {
		t.Fatalf("a target without lock on a plain bucket: %v", err)
	}
	o = testTarget(t, srv, locked)
	o.AccessKeyFile, o.SecretKeyFile = "", ""
	if _, err := Open(ctx, o, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "LoadCredential=") {
		t.Fatalf("no credentials: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "sendense-offsite-dr.access"), []byte(s3test.AccessKey), 0o600)
	os.WriteFile(filepath.Join(dir, "sendense-offsite-dr.secret"), []byte(s3test.SecretKey), 0o600)
	if _, err := Open(ctx, o, func(k string) string { return map[string]string{"CREDENTIALS_DIRECTORY": dir}[k] }); err != nil {
		t.Fatalf("systemd credentials: %v", err)
	}
	o = testTarget(t, srv, locked)
	o.Endpoint = "http://127.0.0.1:1"
	check(o, "cannot reach the endpoint")

	// One sync or prune of a target at a time on a machine.
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	os.Chmod(os.Getenv("XDG_RUNTIME_DIR"), 0o700)
	tg := open(t, testTarget(t, srv, locked))
	l, err := tg.lockLocal("sendense offsite sync")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if _, err := Prune(ctx, tg, PruneOptions{Keep: 1}); err == nil || !strings.Contains(err.Error(), "offsite target dr is busy: a sendense offsite sync (pid ") {
		t.Fatalf("a second operation: %v", err)
	}
	os.Chmod(os.Getenv("XDG_RUNTIME_DIR"), 0o777)
	if _, err := tg.lockLocal("x"); err == nil || !strings.Contains(err.Error(), "others cannot write to") {
		t.Fatalf("a lock in a shared directory: %v", err)
	}
	_ = errors.New
}

// TestCraftedBucket: a point added by someone holding the keys whose
// image backs onto a file outside the bucket is refused before qemu opens
// it; an object whose bytes differ from its seal is a verify problem and
// is never staged.
func TestCraftedBucket(t *testing.T) {
	srv := s3test.Shared(t)
	ctx := context.Background()
	r, b := newRepo(t, full(4*mib, repotest.Write{Off: 0, Len: 1 * mib}))
	bucket := srv.Bucket(t, true)
	tg := open(t, testTarget(t, srv, bucket))
	if _, err := Sync(ctx, r, tg, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	c := srv.Client()
	put := func(name string, data []byte) Object {
		t.Helper()
		info, err := c.PutObject(ctx, bucket, "site-a/db_01/"+name, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		return Object{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), VersionID: info.VersionID}
	}
	forge := func(id string, img []byte, damage bool) {
		t.Helper()
		m, _ := os.ReadFile(filepath.Join(r.Dir, "db_01", b.Points[0].ID+".json"))
		m = bytes.ReplaceAll(m, []byte(b.Points[0].ID), []byte(id))
		s := Seal{Format: SealFormat, Version: SealVersion, VMDir: "db_01", ID: id,
			Objects: []Object{put(id+"-disk2000.qcow2", img), put(id+".json", m)}}
		if damage {
			s.Objects[0].SHA256 = strings.Repeat("0", 64)
		}
		sb, _ := json.Marshal(s)
		put(sealName(id), sb)
	}
	// A seal written over: the first valid version still counts.
	put(sealName(b.Points[0].ID), []byte("{not a seal"))
	if ix, err := tg.Index(ctx, ""); err != nil || len(ix.Errors) > 0 || ix.Find("db_01", b.Points[0].ID) == nil {
		t.Fatalf("index after a seal was overwritten: %+v %v", ix, err)
	}

	evil := filepath.Join(t.TempDir(), "evil.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", evil, "4M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	img, _ := os.ReadFile(evil)
	forge("20990101T000000Z", img, false)
	_, err := tg.Stage(ctx, StageOptions{VM: "db_01", Latest: true, Images: true, In: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), `backing file "/etc/hostname" is not an image of that VM`) {
		t.Fatalf("a forged backing file: %v", err)
	}

	good, _ := os.ReadFile(filepath.Join(r.Dir, "db_01", b.Points[0].ID+"-disk2000.qcow2"))
	forge("20990102T000000Z", good, true)
	st, err := tg.Stage(ctx, StageOptions{VM: "db_01", Backup: "20990102T000000Z", Images: true, In: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if len(st.Problems) != 1 || st.Problems[0].Kind != ProblemObjectSHA256 || !strings.HasSuffix(st.Problems[0].File, "20990102T000000Z-disk2000.qcow2") {
		t.Fatalf("damaged object: %+v", st.Problems)
	}
	if _, err := os.Stat(filepath.Join(st.Dir, "db_01", "20990102T000000Z-disk2000.qcow2")); !os.IsNotExist(err) {
		t.Fatalf("the damaged object was staged: %v", err)
	}
}
