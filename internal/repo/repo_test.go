package repo_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
)

const (
	kib  = 1 << 10
	mib  = 1 << 20
	keyA = 2000
	keyB = 2001
)

var vmWeb = repo.VMRef{Moref: "vm-42", Name: "web 01", Path: "/DC0/vm/web 01", InstanceUUID: "5012aaaa-0000-0000-0000-000000000042"}

// chainSpecs is a chain of four backups of two disks with data, zeroes
// and unchanged regions, partial clusters, an unchanged disk (an empty
// overlay) and a disk forced back to full.
var chainSpecs = [][]repotest.Disk{
	{ // 1: full
		{Key: keyA, Capacity: 4 * mib, Writes: []repotest.Write{
			{Off: 0, Len: 320 * kib},                   // two chunks
			{Off: 1*mib + 512, Len: 4 * kib},           // unaligned, in part of a cluster
			{Off: 2 * mib, Len: 128 * kib, Zero: true}, // a zero chunk in a full
			{Off: 3 * mib, Len: 64 * kib},
		}},
		{Key: keyB, Capacity: 2 * mib, Writes: []repotest.Write{
			{Off: 0, Len: 64 * kib},
			{Off: 1 * mib, Len: 200 * kib},
		}},
	},
	{ // 2: incremental; B unchanged
		{Key: keyA, Capacity: 4 * mib, Writes: []repotest.Write{
			{Off: 64 * kib, Len: 64 * kib},                 // overwrite data
			{Off: 128 * kib, Len: 64 * kib, Zero: true},    // zero over data: must hide it
			{Off: 2*mib + 4*kib, Len: 4 * kib},             // part of a zero cluster
			{Off: 3*mib + 4*kib, Len: 4 * kib, Zero: true}, // zeroes in part of a data cluster
		}},
		{Key: keyB, Capacity: 2 * mib},
	},
	{ // 3: incremental
		{Key: keyA, Capacity: 4 * mib, Writes: []repotest.Write{
			{Off: 1 * mib, Len: 64 * kib},
			{Off: 3*mib + 512*kib, Len: 100 * kib},
		}},
		{Key: keyB, Capacity: 2 * mib, Writes: []repotest.Write{
			{Off: 0, Len: 64 * kib, Zero: true},
			{Off: 1*mib + 512*kib, Len: 4 * kib},
		}},
	},
	{ // 4: A incremental, B forced full
		{Key: keyA, Capacity: 4 * mib, Writes: []repotest.Write{
			{Off: 192 * kib, Len: 64 * kib},
		}},
		{Key: keyB, Capacity: 2 * mib, Full: true, Writes: []repotest.Write{
			{Off: 512 * kib, Len: 64 * kib},
		}},
	},
}

// The chain is built once and copied for each test that damages it.
var (
	tmplOnce    sync.Once
	tmplDir     string
	tmplBuilder *repotest.Builder
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range []string{tmplDir, encDir} {
		if d != "" {
			os.RemoveAll(filepath.Dir(d))
		}
	}
	os.Exit(code)
}

// chain returns a fresh copy of the four-backup repository and a builder
// that knows what each backup holds.
func chain(t *testing.T) (*repo.Repo, *repotest.Builder) {
	t.Helper()
	repotest.Require(t)
	tmplOnce.Do(func() {
		parent, err := os.MkdirTemp("", "sendense-repo-template-")
		if err != nil {
			t.Fatal(err)
		}
		tmplDir = filepath.Join(parent, "repo")
		r, err := repo.Init(tmplDir)
		if err != nil {
			t.Fatal(err)
		}
		b := repotest.New(t, r, vmWeb, 1)
		for _, spec := range chainSpecs {
			b.Backup(spec...)
		}
		tmplBuilder = b
	})
	if tmplBuilder == nil {
		t.Fatal("building the template repository failed")
	}
	dir := filepath.Join(t.TempDir(), "repo")
	repotest.CopyDir(t, tmplDir, dir)
	r, err := repo.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r, tmplBuilder.Clone(t, r)
}

func ids(b *repotest.Builder) []string {
	var out []string
	for _, p := range b.Points {
		out = append(out, p.ID)
	}
	return out
}

func verifyOK(t *testing.T, r *repo.Repo, vm, backup string) *repo.VerifyResult {
	t.Helper()
	res, err := r.Verify(context.Background(), repo.VerifyOptions{VM: vm, Backup: backup})
	if err != nil {
		t.Fatalf("verify %s %s: %v", vm, backup, err)
	}
	if !res.OK() {
		for _, p := range res.Problems {
			t.Error(p)
		}
		for _, im := range res.Images {
			for _, p := range im.Problems {
				t.Error(p)
			}
		}
		t.Fatalf("verify %s %s: %d problems", vm, backup, res.ProblemCount())
	}
	return res
}

func TestInitOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r")
	if _, err := repo.Open(dir); err == nil || !strings.Contains(err.Error(), "does not exist") || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("open of a missing directory: %v", err)
	}
	if _, err := repo.Init(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, repo.RepoFileName))
	if err != nil || !strings.Contains(string(b), `"format": "sendense-repository"`) || !strings.Contains(string(b), `"version": 1`) {
		t.Fatalf("repository file: %s %v", b, err)
	}
	if _, err := repo.Init(dir); err == nil || !strings.Contains(err.Error(), "already a sendense repository") {
		t.Fatalf("init twice: %v", err)
	}
	if _, err := repo.Open(dir); err != nil {
		t.Fatal(err)
	}

	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "photo.jpg"), []byte("x"), 0o600)
	if _, err := repo.Init(other); err == nil || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("init of a non-empty directory: %v", err)
	}
	if _, err := repo.Open(other); !errors.Is(err, repo.ErrNotRepository) || !strings.Contains(err.Error(), other) {
		t.Fatalf("open of a non-repository: %v", err)
	}
	if _, err := repo.OpenOrInit(other); err == nil {
		t.Fatal("OpenOrInit of a non-empty non-repository succeeded")
	}
	if _, err := repo.OpenOrInit(filepath.Join(t.TempDir(), "new")); err != nil {
		t.Fatal(err)
	}
	// Another backup's atomic write of the repository file in progress
	// does not make the directory "not empty", and backups starting
	// together on a new directory all get the one repository.
	racing := t.TempDir()
	os.WriteFile(filepath.Join(racing, "."+repo.RepoFileName+".tmp-123"), nil, 0o600)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := repo.OpenOrInit(racing)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent OpenOrInit of a new directory: %v", err)
		}
	}

	for _, c := range []struct{ content, want string }{
		{"{not json", "corrupt"},
		{`{"format":"restic","version":1}`, "not a sendense repository"},
		{`{"format":"sendense-repository","version":7}`, "upgrade sendense"},
	} {
		os.WriteFile(filepath.Join(dir, repo.RepoFileName), []byte(c.content), 0o600)
		if _, err := repo.Open(dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("open with %s: got %v, want %q", c.content, err, c.want)
		}
	}
}

func TestIDs(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	taken := map[string]bool{}
	isTaken := func(id string) bool { return taken[id] }
	if got := repo.NextID(now, "", isTaken); got != "20240501T120000Z" {
		t.Fatal(got)
	}
	taken["20240501T120000Z"] = true
	if got := repo.NextID(now, "20240501T120000Z", isTaken); got != "20240501T120000Z-2" {
		t.Fatal(got)
	}
	// The clock went back: still after the latest.
	if got := repo.NextID(now.Add(-time.Hour), "20240501T120000Z-9", isTaken); got != "20240501T120000Z-10" {
		t.Fatal(got)
	}
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"20240501T120000Z", "20240501T120000Z-2", -1},
		{"20240501T120000Z-2", "20240501T120000Z-10", -1},
		{"20240501T120000Z-10", "20240501T120001Z", -1},
		{"20240501T120000Z", "20240501T120000Z", 0},
	} {
		if got := repo.CompareIDs(c.a, c.b); got != c.want || repo.CompareIDs(c.b, c.a) != -c.want {
			t.Errorf("compare %s %s = %d, want %d", c.a, c.b, got, c.want)
		}
	}
	for in, want := range map[string]string{"web 01": "web_01", "../etc": "_etc", "": "vm", "db/α": "db__"} {
		if got := repo.SafeName(in); got != want {
			t.Errorf("safeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestChainListRestoreVerify(t *testing.T) {
	r, b := chain(t)
	ctx := context.Background()
	ls, err := r.List(ctx, "")
	if err != nil || len(ls.Errors) > 0 {
		t.Fatal(err, ls.Errors)
	}
	if len(ls.Points) != 4 {
		t.Fatalf("%d points, want 4", len(ls.Points))
	}
	for i, p := range ls.Points {
		if p.ID != b.Points[i].ID || p.VMDir != "web_01" || p.StoredBytes <= 0 {
			t.Fatalf("point %d: %+v", i, p)
		}
	}
	if lv := []string{ls.Points[0].Level(), ls.Points[1].Level(), ls.Points[3].Level()}; lv[0] != "full" || lv[1] != "incremental" || lv[2] != "mixed" {
		t.Fatalf("levels %v", lv)
	}
	// The VM is found by name, moref, UUID and directory.
	for _, name := range []string{"web 01", "vm-42", vmWeb.InstanceUUID, "web_01"} {
		m, err := r.Latest(name)
		if err != nil || m.ID != b.Points[3].ID {
			t.Fatalf("latest %q: %v %v", name, m, err)
		}
	}
	if m, err := r.Latest("nope"); m != nil || err != nil {
		t.Fatalf("latest of an unknown VM: %v %v", m, err)
	}
	// Every point passes the repository's check.
	for _, p := range ls.Points {
		if !p.Restorable || p.Damage != "" {
			t.Fatalf("point %s: restorable %v, %s", p.ID, p.Restorable, p.Damage)
		}
	}
	// Backup 2's disk B is an empty overlay.
	m2 := ls.Points[1].Manifest
	if d := m2.Disk(keyB); d.Level != repo.LevelIncremental || len(d.Chunks) != 0 || d.Backing != ls.Points[0].Disk(keyB).Image {
		t.Fatalf("unchanged disk: %+v", d)
	}

	for _, id := range ids(b) {
		b.CheckRestore(id)
	}
	res := verifyOK(t, r, "", "")
	if len(res.Images) != 8 {
		t.Fatalf("verified %d images, want 8", len(res.Images))
	}
	var fullRead, incrRead uint64
	for _, im := range res.Images {
		if im.Level == repo.LevelFull {
			fullRead += im.BytesRead
		} else {
			incrRead += im.BytesRead
		}
	}
	// Incrementals read only their chunks, never the whole disk.
	if incrRead > 1*mib {
		t.Fatalf("verifying the incrementals read %d bytes", incrRead)
	}
	res = verifyOK(t, r, "vm-42", b.Points[2].ID)
	if len(res.Images) != 6 { // 3 images of A and 3 of B
		t.Fatalf("verify of one backup checked %d images, want 6", len(res.Images))
	}

	// Restore refuses to overwrite, unless --force; qcow2 output is standalone.
	dir := t.TempDir()
	opts := repo.RestoreOptions{VM: "web 01", To: dir, Format: "qcow2"}
	out, err := r.Restore(ctx, opts)
	if err != nil || len(out) != 2 {
		t.Fatal(out, err)
	}
	if filepath.Base(out[0].Path) != "web_01-disk2000.qcow2" {
		t.Fatal(out[0].Path)
	}
	if info, err := qemu.Info(ctx, out[0].Path); err != nil || info.BackingFilename != "" || info.Format != "qcow2" {
		t.Fatalf("restored qcow2: %+v %v", info, err)
	}
	if _, err := r.Restore(ctx, opts); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("restore over existing files: %v", err)
	}
	opts.Force = true
	opts.Disks = []int32{keyB}
	if out, err := r.Restore(ctx, opts); err != nil || len(out) != 1 {
		t.Fatal(out, err)
	}
	opts.Backup = "20000101T000000Z"
	if _, err := r.Restore(ctx, opts); !errors.Is(err, repo.ErrNoBackup) {
		t.Fatalf("restore of a missing backup: %v", err)
	}
}

func TestBeginCommitAbort(t *testing.T) {
	repotest.Require(t)
	ctx := context.Background()
	r, err := repo.Init(filepath.Join(t.TempDir(), "r"))
	if err != nil {
		t.Fatal(err)
	}
	repo.SetClock(r, func() time.Time { return time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC) })
	p, err := r.Begin(vmWeb)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != "20240501T120000Z" || p.RelImage(keyA) != "20240501T120000Z-disk2000.qcow2" || p.Parent() != nil {
		t.Fatal(p.ID, p.RelImage(keyA))
	}
	if st, err := os.ReadFile(filepath.Join(p.Dir(), "state.json")); err != nil || !strings.Contains(string(st), "vm-42") {
		t.Fatalf("state.json: %s %v", st, err)
	}
	// A second backup, or a prune, of the same VM is refused meanwhile.
	if _, err := r.Begin(vmWeb); !errors.Is(err, repo.ErrLocked) || !strings.Contains(err.Error(), "backup (pid") {
		t.Fatalf("second Begin: %v", err)
	}
	if _, err := r.Prune(ctx, repo.PruneOptions{Keep: 1, VM: "vm-42"}); !errors.Is(err, repo.ErrLocked) {
		t.Fatalf("prune during a backup: %v", err)
	}
	// Another VM's backup may run.
	other := repo.VMRef{Moref: "vm-7", Name: "web 01"}
	po, err := r.Begin(other)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(po.Dir()) != "web_01-vm-7" {
		t.Fatalf("a second VM with the same name got %s", po.Dir())
	}
	po.Abort()

	if err := qemu.CreateImage(ctx, p.ImagePath(keyA), mib, ""); err != nil {
		t.Fatal(err)
	}
	d := repo.DiskImage{Key: keyA, Capacity: mib, Level: repo.LevelFull, Image: p.RelImage(keyA), ChangeID: "x/1",
		SHA256: "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58"} // sha256 of 1 MiB of zeroes
	bad := []struct {
		edit func(m *repo.Manifest)
		want string
	}{
		{func(m *repo.Manifest) { m.Disks[0].Image = "x.qcow2" }, "Pending.RelImage"},
		{func(m *repo.Manifest) { m.Disks[0].SHA256 = "" }, "SHA-256 of the whole disk"},
		{func(m *repo.Manifest) { m.Disks[0].Capacity = 2 * mib }, "capacity"},
		{func(m *repo.Manifest) { m.Disks[0].Level, m.Disks[0].Backing = repo.LevelIncremental, "a.qcow2" }, "backing"},
		{func(m *repo.Manifest) { m.Disks = append(m.Disks, m.Disks[0]) }, "twice"},
		{func(m *repo.Manifest) {
			m.Disks[0].Chunks = []repo.Chunk{{Offset: 0, Length: 512, Kind: repo.KindData}}
		}, "sha256"},
	}
	for _, c := range bad {
		m := &repo.Manifest{Disks: []repo.DiskImage{d}}
		c.edit(m)
		if err := p.Commit(m); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("commit: got %v, want %q", err, c.want)
		}
	}
	if err := p.Commit(&repo.Manifest{Disks: []repo.DiskImage{d}}); err != nil {
		t.Fatal(err)
	}
	verifyOK(t, r, "vm-42", "")

	// An aborted backup leaves nothing; one that crashed leaves images that
	// the next Begin removes.
	p2, err := r.Begin(vmWeb)
	if err != nil {
		t.Fatal(err)
	}
	if p2.ID != "20240501T120000Z-2" || p2.Parent() == nil {
		t.Fatal(p2.ID)
	}
	qemu.CreateImage(ctx, p2.ImagePath(keyA), mib, p.RelImage(keyA))
	if err := p2.Abort(); err != nil || exists(p2.ImagePath(keyA)) {
		t.Fatal("abort left the image", err)
	}
	orphan := filepath.Join(p.Dir(), "20240501T120000Z-3-disk2000.qcow2")
	os.WriteFile(orphan, nil, 0o600)
	p3, err := r.Begin(vmWeb)
	if err != nil {
		t.Fatal(err)
	}
	defer p3.Abort()
	if exists(orphan) {
		t.Fatal("the image of a crashed backup was not removed")
	}
	if !exists(filepath.Join(p.Dir(), p.RelImage(keyA))) {
		t.Fatal("a committed image was removed")
	}
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func TestState(t *testing.T) {
	r, err := repo.Init(filepath.Join(t.TempDir(), "r"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.ReadState("vm-42")
	if err != nil || st.ForceFull == nil || len(st.ForceFull) != 0 {
		t.Fatal(st, err)
	}
	st.ForceFull[keyA] = "QueryChangedDiskAreas failed: FileFault"
	if err := r.WriteState("vm-42", st); !errors.Is(err, repo.ErrNoVM) {
		t.Fatalf("state of a VM never backed up: %v", err)
	}
	p, err := r.Begin(vmWeb) // creates the VM's directory
	if err != nil {
		t.Fatal(err)
	}
	p.Abort()
	if err := r.WriteState("vm-42", st); err != nil {
		t.Fatal(err)
	}
	st2, err := r.ReadState("web 01")
	if err != nil || st2.ForceFull[keyA] == "" || st2.VM.Moref != "vm-42" {
		t.Fatalf("%+v %v", st2, err)
	}
	b, _ := os.ReadFile(filepath.Join(r.Dir, "web_01", "state.json"))
	if !strings.Contains(string(b), `"2000": "QueryChangedDiskAreas failed: FileFault"`) {
		t.Fatalf("state.json:\n%s", b)
	}
	path := filepath.Join(r.Dir, "web_01", "state.json")
	os.WriteFile(path, []byte("{"), 0o600)
	if _, err := r.ReadState("web 01"); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("corrupt state: %v", err)
	}
	if _, err := r.Begin(vmWeb); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("backup with a corrupt state: %v", err)
	}
}

// TestRenamedVM: a VM renamed in vCenter keeps its directory and chain.
func TestRenamedVM(t *testing.T) {
	r, b := chain(t)
	renamed := vmWeb
	renamed.Name = "web-renamed"
	p, err := r.Begin(renamed)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	if p.VMDir() != "web_01" || p.Parent() == nil || p.Parent().ID != b.Points[3].ID {
		t.Fatalf("renamed VM: directory %s, parent %v", p.VMDir(), p.Parent())
	}
	if m, err := r.Latest("web-renamed"); err != nil || m == nil {
		t.Fatalf("latest by the new name: %v %v", m, err)
	}
	if err := r.WriteState("web-renamed", &repo.State{}); err != nil {
		t.Fatal(err)
	}
}
