package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/capture/internal/nbd"
	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
	"github.com/sendense/capture/internal/sshtest"
	"github.com/sendense/capture/internal/tunnel"
)

// env is an sshd (the "remote" machine is this one) reached through a
// proxy that can cut the connection, and a dialer that redials like the
// Services' tunnel pool.
type env struct {
	t     *testing.T
	srv   *sshtest.Server
	proxy *sshtest.Proxy
	cfg   tunnel.Config

	mu    sync.Mutex
	tn    *tunnel.Tunnel
	dials int
}

// newEnv starts sshd with an empty HOME and extra session environment
// variables (NAME=VALUE).
func newEnv(t *testing.T, setenv ...string) *env {
	t.Helper()
	srv := sshtest.StartWith(t, sshtest.Options{QuietHome: true, Env: setenv})
	p := sshtest.StartProxy(t, srv.Addr())
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := srv.WriteKnownHosts(kh, p.Addr); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, proxy: p, cfg: tunnel.Config{Host: srv.Host, Port: p.Port(), User: srv.User,
		KeyFile: srv.UserKeyFile, KnownHosts: kh, Logger: slog.New(slog.DiscardHandler),
		Redial: tunnel.Backoff{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond, Attempts: 3}}}
	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.tn != nil {
			e.tn.Close()
		}
	})
	return e
}

// dial is the pool's behaviour: the live tunnel, or a new one.
func (e *env) dial(ctx context.Context) (*tunnel.Tunnel, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tn != nil && e.tn.Err() == nil {
		return e.tn, nil
	}
	if e.tn != nil {
		e.tn.Close()
	}
	t, err := tunnel.Redial(ctx, e.cfg)
	if err != nil {
		return nil, err
	}
	e.tn = t
	e.dials++
	return t, nil
}

func (e *env) open(opts Options) *Host {
	e.t.Helper()
	h, err := Open(context.Background(), e.dial, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { h.Close() })
	return h
}

func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-nbd", "flock", "setsid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
}

// TestFS: the file operations the repository uses, through SFTP.
func TestFS(t *testing.T) {
	requireTools(t)
	e := newEnv(t)
	h := e.open(Options{})
	dir := filepath.Join(t.TempDir(), "a", "b")
	if err := h.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Fatalf("MkdirAll: %v %v", fi, err)
	}
	f := filepath.Join(dir, "m.json")
	if _, err := h.ReadFile(f); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reading a missing file: %v, want ErrNotExist", err)
	}
	for _, content := range []string{"one\n", "two, longer\n"} {
		if err := h.WriteFileAtomic(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := h.ReadFile(f); err != nil || string(b) != content {
			t.Fatalf("read back %q, %v; want %q", b, err, content)
		}
	}
	if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	entries, err := h.ReadDir(dir)
	if err != nil || len(entries) != 1 || entries[0].Name() != "m.json" || !entries[0].Type().IsRegular() {
		t.Fatalf("ReadDir: %v %v (no temporary files must be left)", entries, err)
	}
	if err := h.Rename(f, f+".new"); err != nil {
		t.Fatal(err)
	}
	if err := h.Rename(f, f+".x"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("renaming a missing file: %v", err)
	}
	if err := h.SyncDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := h.SyncFile(f + ".new"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Lstat(f); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Lstat of a renamed file: %v", err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, bytes.Repeat([]byte{1}, 1<<20), 0o600)
	if u := h.Usage(big, filepath.Join(dir, "missing"), f+".new"); u[0] < 1<<20 || u[1] != 0 || u[2] == 0 {
		t.Fatalf("Usage: %v", u)
	}
	if err := h.Remove(f + ".new"); err != nil {
		t.Fatal(err)
	}
	if err := h.Remove(f + ".new"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("removing twice: %v", err)
	}
	if abs, err := h.Abs("~/x"); err != nil || !filepath.IsAbs(abs) || filepath.Base(abs) != "x" {
		t.Fatalf("Abs(~/x) = %q, %v", abs, err)
	}

	// CreateFile: new, 0600, the parts at their offsets, zero elsewhere;
	// never over an existing file.
	nf := filepath.Join(dir, "new")
	parts := []qemu.FilePart{{Off: 0, Data: []byte("head")}, {Off: 70000, Data: []byte("tail")}}
	if err := h.CreateFile(nf, 1<<17, parts); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<17)
	copy(want, "head")
	copy(want[70000:], "tail")
	if b, err := os.ReadFile(nf); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("CreateFile wrote %d bytes, %v", len(b), err)
	}
	if fi, _ := os.Stat(nf); fi.Mode().Perm() != 0o600 {
		t.Fatalf("CreateFile: mode %v", fi.Mode())
	}
	if err := h.CreateFile(big, 10, parts); err == nil {
		t.Fatal("CreateFile over an existing file succeeded")
	}
	if b, _ := os.ReadFile(big); len(b) != 1<<20 || b[0] != 1 {
		t.Fatal("CreateFile changed an existing file")
	}
}

// TestEncryptedImage: CreateImage writes an encrypted image there through
// SFTP (CreateFile), with the fixed PBKDF count; qemu-img opens it with
// its secret and finds it clean.
func TestEncryptedImage(t *testing.T) {
	requireTools(t)
	e := newEnv(t)
	h := e.open(Options{})
	tools := qemu.New(h)
	secret := []byte("0123456789abcdef0123456789abcdef")
	tools.Secret = func(string) []byte { return secret }
	img := filepath.Join(t.TempDir(), "a.qcow2")
	if err := tools.CreateImage(context.Background(), img, 4<<20, "base.qcow2"); err != nil {
		t.Fatal(err)
	}
	sf := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(sf, secret, 0o600)
	opts := "driver=qcow2,file.filename=" + img + ",encrypt.key-secret=s,backing="
	for _, args := range [][]string{{"info"}, {"check"}} {
		out, err := exec.Command("qemu-img", append(args, "--object", "secret,id=s,file="+sf, "--image-opts", opts)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), map[string]string{"info": "master key iters: 1000", "check": "No errors were found"}[args[0]]) {
			t.Fatalf("qemu-img %s: %v: %s", args[0], err, out)
		}
	}
	if fi, err := os.Stat(img); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%v %v", fi, err)
	}
}

// TestLocks: remote flocks exclude each other as local ones do, record
// their holder, are free once Unlock returns, and are released by the
// lease when the holder's connection is gone for longer than the grace
// period (but not shorter).
func TestLocks(t *testing.T) {
	requireTools(t)
	e := newEnv(t)
	// The supervisor looks at the lease once a second, so a grace of 4 s
	// leaves a loaded machine time to reconnect after the short outage.
	const grace = 4 * time.Second
	h := e.open(Options{Grace: grace})
	path := filepath.Join(t.TempDir(), "lock")

	l, holder, err := h.TryExclusive(path, "backup")
	if err != nil || holder != nil || l == nil {
		t.Fatalf("TryExclusive: %v %v %v", l, holder, err)
	}
	// A local flock sees it (the remote side is this machine).
	if _, ok, _ := repo.Local.TryLock(path, false); ok {
		t.Fatal("a shared local lock was granted while the remote exclusive one is held")
	}
	if _, h2, err := repo.Local.TryExclusive(path, "prune"); err != nil || h2 == nil || h2.Operation != "backup" || h2.PID != os.Getpid() {
		t.Fatalf("the holder recorded: %+v %v", h2, err)
	}
	if _, ok, err := h.TryLock(path, false); ok || err != nil {
		t.Fatalf("a second remote lock: ok %v, %v", ok, err)
	}
	l.Unlock()
	l.Unlock()
	ll, ok, err := repo.Local.TryLock(path, true)
	if !ok || err != nil {
		t.Fatalf("the lock is not free after Unlock: %v", err)
	}
	ll.Unlock()

	// Shared locks share.
	s1, ok1, _ := h.TryLock(path, false)
	s2, ok2, _ := h.TryLock(path, false)
	if !ok1 || !ok2 {
		t.Fatal("two shared locks")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	if _, err := h.WaitLock(ctx, path, true, "waiting"); err == nil {
		t.Fatal("an exclusive lock was granted next to shared ones")
	}
	cancel()
	s1.Unlock()
	s2.Unlock()

	// The lease keeps a lock over a short outage…
	held, _, _ := h.TryLock(path, true)
	e.proxy.Cut()
	time.Sleep(800 * time.Millisecond)
	if _, ok, _ := repo.Local.TryLock(path, true); ok {
		t.Fatal("the lock was released after a short outage")
	}
	if _, _, err := h.conn(context.Background()); err != nil { // reconnects, renews the lease
		t.Fatal(err)
	}
	time.Sleep(grace) // the outage plus this is longer than the grace
	if _, ok, _ := repo.Local.TryLock(path, true); ok {
		t.Fatal("the lock was released although the lease was renewed")
	}
	if err := held.(*remoteLock).Err(); err != nil {
		t.Fatal(err)
	}
	// … and releases it when the holder does not come back.
	e.proxy.Refuse(true)
	e.proxy.Cut()
	deadline := time.Now().Add(3*grace + 5*time.Second)
	for {
		if l, ok, _ := repo.Local.TryLock(path, true); ok {
			l.Unlock()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the lock of a vanished holder was never released")
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.proxy.Refuse(false)
	if _, _, err := h.conn(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := held.(*remoteLock).Err(); !errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("the expired lock says %v", err)
	}
}

// TestServer: qemu-img and qemu-nbd run remotely; the server is reached
// through a forward, survives a cut connection and is reached again with
// Reconnect, and is gone (directories too) after Close.
func TestServer(t *testing.T) {
	requireTools(t)
	e := newEnv(t)
	h := e.open(Options{})
	tools := qemu.New(h)
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "a.qcow2")
	if err := tools.CreateImage(ctx, img, 4<<20, ""); err != nil {
		t.Fatal(err)
	}
	if err := tools.CreateImage(ctx, img, 4<<20, ""); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("creating over an image: %v", err)
	}
	srv, err := tools.ServeNBD(ctx, img, qemu.ServeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(srv.URI(), "sendense-tunnel-") {
		t.Fatalf("URI %s is not a local forward", srv.URI())
	}
	write := func(uri string, off uint64, b byte) {
		t.Helper()
		hd, err := nbd.Dial(uri)
		if err != nil {
			t.Fatal(err)
		}
		defer hd.Close()
		if err := hd.Pwrite(bytes.Repeat([]byte{b}, 64<<10), off, 0); err != nil {
			t.Fatal(err)
		}
	}
	write(srv.URI(), 0, 'a') // not flushed
	e.proxy.Cut()
	time.Sleep(300 * time.Millisecond)
	if _, err := nbd.Dial(srv.URI()); err == nil {
		t.Fatal("the old forward still works after the cut")
	}
	uri, err := srv.Reconnect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	write(uri, 1<<20, 'b')
	pid := srv.Pid()
	dir := filepath.Dir(srv.Socket())
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatal("qemu-nbd still runs after Close")
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the socket directory is left: %v", err)
	}
	// Both writes are in the image: the one before the cut was kept by the
	// same server and flushed when it closed.
	raw := filepath.Join(t.TempDir(), "a.raw")
	if b, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	out, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if out[0] != 'a' || out[1<<20] != 'b' {
		t.Fatalf("the image holds %q at 0 and %q at 1 MiB", out[0], out[1<<20])
	}

	// qemu-nbd failing is reported with its standard error.
	if _, err := tools.ServeNBD(ctx, filepath.Join(t.TempDir(), "missing.qcow2"), qemu.ServeOptions{}); err == nil || !strings.Contains(err.Error(), "missing.qcow2") {
		t.Fatalf("serving a missing image: %v", err)
	}
	h.mu.Lock()
	leases := h.leaseDir
	h.mu.Unlock()
	if leases == "" {
		t.Fatal("no lease directory")
	}
	h.Close()
	if _, err := os.Stat(leases); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the lease directory is left after Close: %v", err)
	}
}

// TestMissingTools: a remote side without qemu-img is refused at Open,
// naming the tool, the machine and the package.
func TestMissingTools(t *testing.T) {
	requireTools(t)
	bin := t.TempDir()
	for _, d := range []string{"/usr/bin", "/bin", "/usr/sbin", "/sbin"} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "qemu-") {
				os.Symlink(filepath.Join(d, e.Name()), filepath.Join(bin, e.Name()))
			}
		}
	}
	e := newEnv(t, "PATH="+bin)
	_, err := Open(context.Background(), e.dial, Options{})
	var tm *qemu.ToolMissingError
	if !errors.As(err, &tm) || !strings.Contains(err.Error(), "qemu-img") || !strings.Contains(err.Error(), "qemu-nbd") ||
		!strings.Contains(err.Error(), "qemu-utils") || !strings.Contains(err.Error(), e.srv.Host) {
		t.Fatalf("Open without qemu-img: %v", err)
	}
	t.Log(err)
}

// TestRemoteRepository: a repository built, listed, verified, restored
// and pruned on the remote side behaves as a local one.
func TestRemoteRepository(t *testing.T) {
	requireTools(t)
	repotest.Require(t)
	e := newEnv(t)
	h := e.open(Options{})
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	r, err := repo.OpenOrInitFS(ctx, h, qemu.New(h), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.Location(), "ssh://") || r.Local() {
		t.Fatalf("location %s", r.Location())
	}
	vm := repo.VMRef{Moref: "vm-7", Name: "web"}
	b := repotest.New(t, r, vm, 3)
	b.Backup(repotest.Disk{Key: 2000, Capacity: 2 << 20, Writes: []repotest.Write{{Off: 0, Len: 300 << 10}, {Off: 1 << 20, Len: 64 << 10, Zero: true}}})
	b.Backup(repotest.Disk{Key: 2000, Capacity: 2 << 20, Writes: []repotest.Write{{Off: 64 << 10, Len: 64 << 10}}})
	b.Backup(repotest.Disk{Key: 2000, Capacity: 2 << 20, Writes: []repotest.Write{{Off: 1 << 20, Len: 4 << 10}}})
	l, err := r.List(ctx, "")
	if err != nil || len(l.Points) != 3 || len(l.Errors) > 0 || l.Points[0].StoredBytes == 0 {
		t.Fatalf("list: %+v %v", l, err)
	}
	for _, p := range b.Points {
		b.CheckRestore(p.ID)
	}
	v, err := r.Verify(ctx, repo.VerifyOptions{})
	if err != nil || !v.OK() || len(v.Images) != 3 {
		t.Fatalf("verify: %+v %v", v, err)
	}
	// A second opener of the same repository sees the lock of a backup.
	r2, err := repo.OpenFS(ctx, h, qemu.New(h), dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Begin(vm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Prune(ctx, repo.PruneOptions{Keep: 1}); !errors.Is(err, repo.ErrLocked) {
		t.Fatalf("prune next to a backup: %v", err)
	}
	p.Abort()
	reps, err := r2.Prune(ctx, repo.PruneOptions{Keep: 1})
	if err != nil || len(reps) != 1 || len(reps[0].Dropped) != 2 {
		t.Fatalf("prune: %+v %v", reps, err)
	}
	b.CheckRestore(b.Points[2].ID)
	if v, err := r.Verify(ctx, repo.VerifyOptions{}); err != nil || !v.OK() || len(v.Images) != 1 {
		t.Fatalf("verify after prune: %+v %v", v, err)
	}

	// Images are created 0600 over SSH too; temporary directories are
	// 0700 from the start (mktemp -d).
	img := filepath.Join(dir, "web", repo.ImageName(b.Points[2].ID, 2000))
	if fi, err := os.Stat(img); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("image mode: %v %v", fi, err)
	}
	tmp, err := h.MkdirTemp("", "sendense-test-")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(tmp); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("temporary directory mode: %v %v", fi, err)
	}
	h.RemoveAll(tmp)

	// A flipped byte in the (merged) full: restore through SSH refuses,
	// naming the offset, and leaves no output.
	out, err := exec.Command("qemu-img", "map", "--output=json", "-f", "qcow2", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	var m []struct{ Offset *int64 }
	json.Unmarshal(out, &m)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil || len(m) == 0 || m[0].Offset == nil {
		t.Fatalf("%v %+v", err, m)
	}
	f.WriteAt([]byte{0x5a, 0xa5}, *m[0].Offset+100)
	f.Close()
	to := t.TempDir()
	if _, err := r.Restore(ctx, repo.RestoreOptions{VM: "web", To: to}); err == nil || !strings.Contains(err.Error(), "does not match") || !strings.Contains(err.Error(), "offset 0") {
		t.Fatalf("restore of a damaged image over SSH: %v", err)
	}
	if entries, _ := os.ReadDir(to); len(entries) != 0 {
		t.Fatalf("the failed restore left %v", entries)
	}
}
