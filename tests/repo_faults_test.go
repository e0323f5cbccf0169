package tests

// The repository fault matrix (docs/restore-verify-prune.md, "What each
// command guarantees"): a real repository — two VMs, qcow2 chains written
// through qemu-nbd exactly as backups write them — is damaged or crafted
// one way per case, then the real sendense CLI lists, verifies, restores
// and prunes it. Each case asserts the exit codes and messages, that
// nothing outside the repository changed (files next to it, a FIFO that
// would hang whatever opened it), and that every backup restorable before
// is restorable after, compared byte for byte (cmp) with the disk as it
// was at backup time.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
)

const (
	fkA = int32(2000)
	fkB = int32(2001)
)

var (
	faultWeb = repo.VMRef{Moref: "vm-1", Name: "web", InstanceUUID: "5012aaaa-0000-0000-0000-000000000001"}
	faultDB  = repo.VMRef{Moref: "vm-2", Name: "db", InstanceUUID: "5012aaaa-0000-0000-0000-000000000002"}
)

// faultTemplate is the repository every case starts from, built once.
var faultTemplate struct {
	once    sync.Once
	dir     string
	web, db *repotest.Builder
}

func buildFaultTemplate(t *testing.T) {
	t.Helper()
	repotest.Require(t)
	faultTemplate.once.Do(func() {
		dir, err := os.MkdirTemp("", "sendense-faults-")
		if err != nil {
			t.Fatal(err)
		}
		r, err := repo.Init(filepath.Join(dir, "repo"))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		web := repotest.New(t, r, faultWeb, 7)
		w := func(off, n uint64) repotest.Write { return repotest.Write{Off: off, Len: n} }
		z := func(off, n uint64) repotest.Write { return repotest.Write{Off: off, Len: n, Zero: true} }
		web.Backup( // 1: full
			repotest.Disk{Key: fkA, Capacity: 8 * mib, Writes: []repotest.Write{w(0, mib), w(4*mib, 512*kib)}},
			repotest.Disk{Key: fkB, Capacity: 4 * mib, Writes: []repotest.Write{w(0, 256*kib)}})
		web.Backup( // 2: incremental
			repotest.Disk{Key: fkA, Capacity: 8 * mib, Writes: []repotest.Write{w(128*kib, 64*kib), z(4*mib, 64*kib)}},
			repotest.Disk{Key: fkB, Capacity: 4 * mib})
		web.Backup( // 3: A incremental (unaligned), B forced full
			repotest.Disk{Key: fkA, Capacity: 8 * mib, Writes: []repotest.Write{w(mib+512, 4*kib)}},
			repotest.Disk{Key: fkB, Capacity: 4 * mib, Full: true, Writes: []repotest.Write{w(mib, 256*kib)}})
		web.Backup( // 4: incremental
			repotest.Disk{Key: fkA, Capacity: 8 * mib, Writes: []repotest.Write{w(6*mib, 256*kib)}},
			repotest.Disk{Key: fkB, Capacity: 4 * mib, Writes: []repotest.Write{w(0, 4*kib)}})
		db := repotest.New(t, r, faultDB, 8)
		db.Backup(repotest.Disk{Key: fkA, Capacity: 4 * mib, Writes: []repotest.Write{w(0, 512*kib)}})
		db.Backup(repotest.Disk{Key: fkA, Capacity: 4 * mib, Writes: []repotest.Write{w(64*kib, 64*kib)}})
		db.Backup(repotest.Disk{Key: fkA, Capacity: 4 * mib, Writes: []repotest.Write{w(2*mib, 128*kib)}})
		faultTemplate.dir, faultTemplate.web, faultTemplate.db = dir, web, db
	})
	if faultTemplate.web == nil {
		t.Fatal("building the fault template failed")
	}
}

// faultEnv is one case's repository, with files next to it that nothing
// may touch.
type faultEnv struct {
	t       *testing.T
	dir     string // holds repo/, the outside files and the outputs
	repo    string
	web, db *repotest.Builder
	ids     []string // web's backups
	dbIDs   []string
	victim  string // an ordinary file next to the repository
	fifo    string // opening it for reading would block
	outside map[string]string
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	buildFaultTemplate(t)
	dir := t.TempDir()
	e := &faultEnv{t: t, dir: dir, repo: filepath.Join(dir, "repo"), web: faultTemplate.web, db: faultTemplate.db,
		victim: filepath.Join(dir, "victim.txt"), fifo: filepath.Join(dir, "fifo")}
	repotest.CopyDir(t, filepath.Join(faultTemplate.dir, "repo"), e.repo)
	for _, p := range e.web.Points {
		e.ids = append(e.ids, p.ID)
	}
	for _, p := range e.db.Points {
		e.dbIDs = append(e.dbIDs, p.ID)
	}
	os.WriteFile(e.victim, []byte("not the repository's"), 0o644)
	if err := syscall.Mkfifo(e.fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	e.outside = e.snapshotOutside()
	return e
}

// snapshotOutside describes everything in dir but the repository and the
// restore outputs: names, types and contents.
func (e *faultEnv) snapshotOutside() map[string]string {
	out := map[string]string{}
	filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(e.dir, p)
		if rel == "repo" || strings.HasPrefix(rel, "out") || strings.HasPrefix(rel, "ro") {
			return filepath.SkipDir
		}
		fi, _ := os.Lstat(p)
		v := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			v += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out[rel] = v
		return nil
	})
	return out
}

func (e *faultEnv) outsideUnchanged() {
	e.t.Helper()
	now := e.snapshotOutside()
	for k, v := range e.outside {
		if now[k] != v {
			e.t.Errorf("outside the repository, %s changed: %q → %q", k, v, now[k])
		}
	}
	for k := range now {
		if _, ok := e.outside[k]; !ok {
			e.t.Errorf("outside the repository, %s appeared", k)
		}
	}
}

// vmDir is a file of web's directory.
func (e *faultEnv) webFile(name string) string { return filepath.Join(e.repo, "web", name) }
func (e *faultEnv) image(i int, key int32) string {
	return e.webFile(repo.ImageName(e.ids[i], key))
}

// sendense runs the CLI (with a timeout: a hang is a failure) on the
// case's repository.
func (e *faultEnv) sendense(args ...string) (int, string, string) {
	e.t.Helper()
	cmd := exec.Command("timeout", append([]string{"120", sendense}, args...)...)
	cmd.Env = append(os.Environ(), "SENDENSE_REPOSITORY="+e.repo, "SENDENSE_CONFIG=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		e.t.Fatal(err)
	}
	if code == 124 {
		e.t.Fatalf("sendense %s hung:\n%s%s", strings.Join(args, " "), stdout.String(), stderr.String())
	}
	return code, stdout.String(), stderr.String()
}

// restore restores backup id of vm into a new directory and compares
// every disk with b's record; it returns the exit status and stderr.
func (e *faultEnv) restore(b *repotest.Builder, vm, id string) (int, string) {
	e.t.Helper()
	to, _ := os.MkdirTemp(e.dir, "out-")
	code, _, stderr := e.sendense("restore", vm, "--backup", id, "--to", to)
	entries, _ := os.ReadDir(to)
	if code != 0 {
		for _, en := range entries {
			if strings.Contains(en.Name(), "partial") {
				e.t.Errorf("a failed restore left %s", en.Name())
			}
		}
		return code, stderr
	}
	for _, p := range b.Points {
		if p.ID != id {
			continue
		}
		for key, want := range p.Content {
			outs, _ := filepath.Glob(filepath.Join(to, fmt.Sprintf("*-disk%d.raw", key)))
			if len(outs) != 1 {
				e.t.Fatalf("restore of %s %s: %d outputs of disk %d", vm, id, len(outs), key)
			}
			got, err := os.ReadFile(outs[0])
			if err != nil || !bytes.Equal(got, want) {
				e.t.Fatalf("restore of %s %s disk %d: not the disk as it was (%v)", vm, id, key, err)
			}
		}
	}
	os.RemoveAll(to)
	return 0, ""
}

// restorable checks that exactly the points of web not in broken
// restore exactly, and every point of db.
func (e *faultEnv) restorable(broken []string, msg string) {
	e.t.Helper()
	for _, id := range e.ids {
		code, stderr := e.restore(e.web, "web", id)
		switch {
		case slices.Contains(broken, id) && (code != 1 || !strings.Contains(stderr, msg)):
			e.t.Errorf("restore of the damaged backup %s: exit %d, want 1 and %q:\n%s", id, code, msg, stderr)
		case !slices.Contains(broken, id) && code != 0:
			e.t.Errorf("restore of %s: exit %d:\n%s", id, code, stderr)
		}
	}
	for _, id := range e.dbIDs {
		if code, stderr := e.restore(e.db, "db", id); code != 0 {
			e.t.Errorf("restore of db %s: exit %d:\n%s", id, code, stderr)
		}
	}
}

// dbPruned prunes db alone to 2 backups: they restore exactly.
func (e *faultEnv) checkDBPruned() {
	e.t.Helper()
	e.dbIDs = e.dbIDs[len(e.dbIDs)-2:]
	for _, id := range e.dbIDs {
		if code, stderr := e.restore(e.db, "db", id); code != 0 {
			e.t.Errorf("restore of db %s after prune: exit %d:\n%s", id, code, stderr)
		}
	}
}

// guestOffset returns where guest offset off of the qcow2 image alone is
// stored in its file.
func guestOffset(t *testing.T, image string, off uint64) int64 {
	t.Helper()
	out := run(t, "qemu-img", "map", "--output=json", "-f", "qcow2", image)
	var m []struct {
		Start, Length uint64
		Offset        *uint64
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	for _, e := range m {
		if e.Start <= off && off < e.Start+e.Length && e.Offset != nil {
			return int64(*e.Offset + off - e.Start)
		}
	}
	t.Fatalf("offset %d of %s is not stored", off, image)
	return 0
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, at)
	b[0] ^= 0x40
	f.WriteAt(b, at)
}

func editJSON(t *testing.T, path string, edit func(m map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	b, _ = json.Marshal(m)
	os.WriteFile(path, b, 0o600)
}

// TestRepoFaults is the fault matrix of damaged and crafted repositories.
func TestRepoFaults(t *testing.T) {
	cases := []struct {
		name   string
		damage func(e *faultEnv)
		broken []int  // web backups that cannot be restored any more
		msg    string // in restore's error for them
		kind   string // a problem kind verify reports
		listed bool   // list flags them (structural damage) or exits 1 (corrupt manifest)
	}{
		{"flip in a data cluster of the full", func(e *faultEnv) {
			flipByte(e.t, e.image(0, fkA), guestOffset(e.t, e.image(0, fkA), 600*kib))
		}, []int{0, 1, 2, 3}, "does not match", repo.ProblemChunkSHA256, false},
		{"flip in a data cluster of an incremental", func(e *faultEnv) {
			flipByte(e.t, e.image(1, fkA), guestOffset(e.t, e.image(1, fkA), 130*kib))
		}, []int{1, 2, 3}, "does not match", repo.ProblemChunkSHA256, false},
		{"flip in a header", func(e *faultEnv) {
			flipByte(e.t, e.image(1, fkA), 0)
		}, []int{1, 2, 3}, "qcow2 header", repo.ProblemImage, true},
		{"truncated full", func(e *faultEnv) {
			os.Truncate(e.image(0, fkA), 512*kib)
		}, []int{0, 1, 2, 3}, "the image is truncated", repo.ProblemImage, false},
		{"full truncated to its header", func(e *faultEnv) {
			os.Truncate(e.image(0, fkA), 512)
		}, []int{0, 1, 2, 3}, "the image is truncated", repo.ProblemImage, false},
		{"missing full", func(e *faultEnv) { os.Remove(e.image(0, fkA)) }, []int{0, 1, 2, 3}, "is missing", repo.ProblemMissingImage, true},
		{"missing middle", func(e *faultEnv) { os.Remove(e.image(1, fkA)) }, []int{1, 2, 3}, "is missing", repo.ProblemMissingImage, true},
		{"missing top", func(e *faultEnv) { os.Remove(e.image(3, fkB)) }, []int{3}, "is missing", repo.ProblemMissingImage, true},
		{"deleted manifest", func(e *faultEnv) { os.Remove(e.webFile(e.ids[1] + ".json")) }, []int{1, 2, 3}, "manifest", repo.ProblemManifest, true},
		{"broken manifest", func(e *faultEnv) {
			os.WriteFile(e.webFile(e.ids[1]+".json"), []byte("{broken"), 0o600)
		}, []int{1, 2, 3}, "not valid JSON", repo.ProblemManifest, true},
		{"edited backing", func(e *faultEnv) {
			editJSON(e.t, e.webFile(e.ids[2]+".json"), func(m map[string]any) {
				m["disks"].([]any)[0].(map[string]any)["backing"] = repo.ImageName(e.ids[0], fkA)
			})
		}, []int{2, 3}, "parent's image", repo.ProblemManifest, true},
		{"manifest naming another VM's image", func(e *faultEnv) {
			editJSON(e.t, e.webFile(e.ids[3]+".json"), func(m map[string]any) {
				m["disks"].([]any)[0].(map[string]any)["image"] = "../db/" + repo.ImageName(e.dbIDs[0], fkA)
			})
		}, []int{3}, "not a .qcow2 file name in the VM directory", repo.ProblemManifest, true},
		{"manifest naming another backup's image", func(e *faultEnv) {
			editJSON(e.t, e.webFile(e.ids[3]+".json"), func(m map[string]any) {
				m["disks"].([]any)[0].(map[string]any)["image"] = repo.ImageName(e.ids[1], fkA)
			})
		}, []int{3}, "not this backup's image", repo.ProblemManifest, true},
		{"manifest skipping a layer consistently", func(e *faultEnv) {
			// parent and backing both say backup 1: the image's header
			// still names backup 2's.
			editJSON(e.t, e.webFile(e.ids[2]+".json"), func(m map[string]any) {
				m["parent"] = e.ids[0]
				m["disks"].([]any)[0].(map[string]any)["backing"] = repo.ImageName(e.ids[0], fkA)
			})
		}, []int{2, 3}, "another backing file", repo.ProblemBacking, true},
		{"rebased header", func(e *faultEnv) {
			run(e.t, "qemu-img", "rebase", "-u", "-f", "qcow2", "-b", repo.ImageName(e.ids[0], fkA), "-F", "qcow2", e.image(2, fkA))
		}, []int{2, 3}, "another backing file", repo.ProblemBacking, true},
		{"header backing a host file", func(e *faultEnv) {
			run(e.t, "qemu-img", "rebase", "-u", "-f", "qcow2", "-b", e.fifo, "-F", "raw", e.image(0, fkA))
		}, []int{0, 1, 2, 3}, "another backing file", repo.ProblemBacking, true},
		{"external data file", func(e *faultEnv) {
			// The image names a host file as its data file: a FIFO, which
			// whatever opened it would hang on.
			img, host := e.image(3, fkB), filepath.Join(e.t.TempDir(), "data")
			os.Remove(img)
			run(e.t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+host,
				"-b", repo.ImageName(e.ids[2], fkB), "-F", "qcow2", img, "4M")
			os.Remove(host)
			syscall.Mkfifo(host, 0o600)
		}, []int{3}, "another file", repo.ProblemDataFile, true},
		{"image replaced by a symbolic link", func(e *faultEnv) {
			os.Remove(e.image(3, fkA))
			os.Symlink(e.victim, e.image(3, fkA))
		}, []int{3}, "not a regular file", repo.ProblemImage, true},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			e := newFaultEnv(t)
			c.damage(e)
			var broken []string
			for _, i := range c.broken {
				broken = append(broken, e.ids[i])
			}
			// list: flags the damage it can see without reading data.
			code, out, stderr := e.sendense("list", "--json", "web")
			if c.listed && (code != 1 || !strings.Contains(out+stderr, broken[0]) ||
				!strings.Contains(out, `"restorable":false`) && !strings.Contains(out, `"message_type":"error"`)) {
				t.Errorf("list: exit %d, want 1 naming %s:\n%s%s", code, broken[0], out, stderr)
			}
			if !c.listed && (code != 0 || strings.Contains(out, `"restorable":false`)) {
				t.Errorf("list: exit %d:\n%s%s", code, out, stderr)
			}
			// verify: exit 3, the problem kind.
			code, out, stderr = e.sendense("verify", "--json", "web")
			if code != 3 || !strings.Contains(out, `"kind":"`+c.kind+`"`) {
				t.Errorf("verify: exit %d, want 3 with kind %s:\n%s%s", code, c.kind, out, stderr)
			}
			// restore: the damaged backups fail, naming the damage, and
			// leave nothing; the others restore exactly.
			e.restorable(broken, c.msg)
			// prune: refuses the damaged VM without changing it, prunes
			// the other.
			code, out, stderr = e.sendense("prune", "--keep", "1")
			if code != 1 || !strings.Contains(stderr, "nothing was changed") || !strings.Contains(stderr, "prune VM web") {
				t.Errorf("prune: exit %d, want 1 and nothing changed in web:\n%s%s", code, out, stderr)
			}
			e.dbIDs = e.dbIDs[2:]
			e.restorable(broken, c.msg)
			e.outsideUnchanged()
		})
	}
}

// TestRepoFaultsJournal: crafted prune journals are refused by every
// command, and nothing they name is touched.
func TestRepoFaultsJournal(t *testing.T) {
	journal := func(e *faultEnv, phase string, drop []string, del ...string) []byte {
		b, _ := json.Marshal(map[string]any{"format": "sendense-prune-journal", "version": 2, "phase": phase, "drop": drop, "delete": del})
		return b
	}
	cases := []struct {
		name string
		j    func(e *faultEnv) []byte
		msg  string
	}{
		{"relative path out of the repository", func(e *faultEnv) []byte {
			return journal(e, "switching", e.ids[:1], "../../victim.txt")
		}, "not an image name"},
		{"absolute path", func(e *faultEnv) []byte { return journal(e, "switching", e.ids[:1], e.victim) }, "not an image name"},
		{"other VM's image", func(e *faultEnv) []byte {
			return journal(e, "switching", e.ids[:1], "../db/"+repo.ImageName(e.dbIDs[0], fkA))
		}, "not an image name"},
		{"a kept backup's image", func(e *faultEnv) []byte {
			return journal(e, "switching", e.ids[:1], repo.ImageName(e.ids[3], fkA))
		}, "not an image of a removed backup"},
		{"every backup dropped", func(e *faultEnv) []byte { return journal(e, "switching", e.ids) }, "removes every backup"},
		{"a backup a kept one needs", func(e *faultEnv) []byte {
			return journal(e, "switching", e.ids[:1], repo.ImageName(e.ids[0], fkA))
		}, "needs"},
		{"not a backup id", func(e *faultEnv) []byte { return journal(e, "switching", []string{"../../x"}) }, "not a backup id"},
		{"garbage", func(e *faultEnv) []byte { return []byte("{\"delete\": [\"/etc/passwd\"]") }, "not valid JSON"},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			e := newFaultEnv(t)
			jp := e.webFile("prune-journal.json")
			os.WriteFile(jp, c.j(e), 0o600)
			os.WriteFile(e.webFile("read.lock"), nil, 0o600)
			before, _ := os.ReadDir(filepath.Join(e.repo, "web"))
			code, out, stderr := e.sendense("list")
			if code != 1 || !strings.Contains(stderr, c.msg) || !strings.Contains(out, e.ids[0]) {
				t.Errorf("list: exit %d, want 1 and %q:\n%s%s", code, c.msg, out, stderr)
			}
			code, out, stderr = e.sendense("verify", "web")
			if code != 3 || !strings.Contains(out, "prune-journal") {
				t.Errorf("verify: exit %d:\n%s%s", code, out, stderr)
			}
			e.restorable(nil, "")
			code, out, stderr = e.sendense("prune", "--keep", "1", "web")
			if code != 1 || !strings.Contains(stderr, c.msg) {
				t.Errorf("prune: exit %d, want 1 and %q:\n%s%s", code, c.msg, out, stderr)
			}
			after, _ := os.ReadDir(filepath.Join(e.repo, "web"))
			if len(after) != len(before) {
				t.Errorf("files of web changed: %d → %d", len(before), len(after))
			}
			if _, err := os.Stat(jp); err != nil {
				t.Errorf("the journal was removed: %v", err)
			}
			e.restorable(nil, "")
			e.outsideUnchanged()
		})
	}
}

// TestRepoFaultsLock: a lock file that is a link to another file makes
// the commands that take it fail, and the file is not touched.
func TestRepoFaultsLock(t *testing.T) {
	e := newFaultEnv(t)
	os.Remove(e.webFile("lock"))
	os.Symlink(e.victim, e.webFile("lock"))
	code, _, stderr := e.sendense("prune", "--keep", "1", "web")
	if code != 1 || !strings.Contains(stderr, "not a regular file") {
		t.Fatalf("prune with a linked lock file: exit %d: %s", code, stderr)
	}
	e.outsideUnchanged()
	e.restorable(nil, "")
}

// TestRepoReadOnly: on a read-only bind mount of the repository, list,
// verify and restore work; prune and a backup say the repository is
// read-only.
func TestRepoReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a read-only bind mount")
	}
	e := newFaultEnv(t)
	ro := filepath.Join(e.dir, "ro")
	os.Mkdir(ro, 0o700)
	if out, err := exec.Command("mount", "--bind", e.repo, ro).CombinedOutput(); err != nil {
		t.Skipf("bind mount: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", ro).Run() })
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", ro).CombinedOutput(); err != nil {
		t.Skipf("read-only remount: %v %s", err, out)
	}
	os.Remove(filepath.Join(e.repo, "db", "read.lock")) // never created: a shared lock needs none
	e.repo = ro
	if code, out, stderr := e.sendense("list"); code != 0 || !strings.Contains(out, e.ids[3]) {
		t.Fatalf("list: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr := e.sendense("verify"); code != 0 {
		t.Fatalf("verify: exit %d\n%s%s", code, out, stderr)
	}
	e.restorable(nil, "")
	code, _, stderr := e.sendense("prune", "--keep", "1")
	if code != 1 || !strings.Contains(stderr, "read-only") {
		t.Fatalf("prune: exit %d: %s", code, stderr)
	}
	r, err := repo.Open(ro)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Begin(faultWeb); !errors.Is(err, repo.ErrReadOnly) || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("a backup into a read-only repository: %v", err)
	}
	e.repo = filepath.Join(e.dir, "repo")
	e.restorable(nil, "")
}

// TestRepoFullFileSystem: a prune whose new standalone image does not fit
// fails, says so, rolls back, and every backup restores as before.
func TestRepoFullFileSystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	e := newFaultEnv(t)
	mnt := filepath.Join(e.dir, "ro-small")
	os.Mkdir(mnt, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	small := filepath.Join(mnt, "repo")
	if out, err := exec.Command("cp", "-a", e.repo, small).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	// Room left for the journal, not for a standalone copy of web's disk A.
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "filler"), make([]byte, int64(st.Bavail)*st.Bsize-300*kib), 0o600); err != nil {
		t.Fatal(err)
	}
	e.repo = small
	code, out, stderr := e.sendense("prune", "--keep", "1", "web")
	if code != 1 || !strings.Contains(stderr, "No space left") || !strings.Contains(stderr, "nothing was changed") {
		t.Fatalf("prune into a full file system: exit %d\n%s%s", code, out, stderr)
	}
	entries, _ := os.ReadDir(filepath.Join(small, "web"))
	for _, en := range entries {
		if strings.HasSuffix(en.Name(), ".merging") || strings.HasSuffix(en.Name(), ".new") || en.Name() == "prune-journal.json" {
			t.Errorf("the failed prune left %s", en.Name())
		}
	}
	e.restorable(nil, "")
	if code, out, _ := e.sendense("verify"); code != 0 {
		t.Fatalf("verify after the failed prune: exit %d\n%s", code, out)
	}
}

// TestRepoNamesAndLeftovers: a name that several VMs match is an error
// listing them with their morefs; verify lists leftovers (images of
// backups that never finished, temporary files, a retired VM's), prune
// removes them and nothing else; a restore removes the temporary output
// a dead restore left.
func TestRepoNamesAndLeftovers(t *testing.T) {
	e := newFaultEnv(t)
	r, err := repo.Open(e.repo)
	if err != nil {
		t.Fatal(err)
	}
	// web (vm-1) is renamed to web-old; a new VM is called web.
	renamed := e.web.Clone(t, r)
	renamed.VM.Name = "web-old"
	renamed.Backup(repotest.Disk{Key: fkA, Capacity: 8 * mib}, repotest.Disk{Key: fkB, Capacity: 4 * mib})
	newWeb := repotest.New(t, r, repo.VMRef{Moref: "vm-7", Name: "web"}, 9)
	newWeb.Backup(repotest.Disk{Key: fkA, Capacity: mib, Writes: []repotest.Write{{Off: 0, Len: 64 * kib}}})
	r.Close()
	code, _, stderr := e.sendense("restore", "web", "--to", filepath.Join(e.dir, "out-x"))
	if code != 1 || !strings.Contains(stderr, "ambiguous") || !strings.Contains(stderr, "vm-1") || !strings.Contains(stderr, "vm-7") {
		t.Fatalf("restore of an ambiguous name: exit %d: %s", code, stderr)
	}
	if code, stderr := e.restore(newWeb, "vm-7", newWeb.Points[0].ID); code != 0 {
		t.Fatalf("restore by moref: %s", stderr)
	}

	// Leftovers.
	orphan := e.webFile("29990101T000000Z-disk2000.qcow2")
	run(t, "cp", e.image(0, fkA), orphan)
	partial := e.webFile(".state.json.tmp-abc123")
	os.WriteFile(partial, []byte("{"), 0o600)
	mine := e.webFile("notes.txt")
	os.WriteFile(mine, []byte("the admin's"), 0o600)
	retired := filepath.Join(e.repo, "retired")
	os.Mkdir(retired, 0o700)
	retiredImg := filepath.Join(retired, "20200101T000000Z-disk2000.qcow2")
	run(t, "cp", e.image(0, fkB), retiredImg)
	code, out, stderr := e.sendense("verify", "--json")
	if code != 0 || strings.Count(out, `"message_type":"leftover"`) != 3 || !strings.Contains(out, orphan) || !strings.Contains(out, partial) || !strings.Contains(out, retiredImg) {
		t.Fatalf("verify with leftovers: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = e.sendense("prune", "--keep", "10")
	if code != 0 || !strings.Contains(out, "leftover") {
		t.Fatalf("prune: exit %d\n%s%s", code, out, stderr)
	}
	for _, p := range []string{orphan, partial, retiredImg} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("prune left %s", p)
		}
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("prune removed a file it did not create: %v", err)
	}

	// A dead restore's temporary output is removed by the next restore.
	to := filepath.Join(e.dir, "out-partial")
	os.Mkdir(to, 0o700)
	stale := filepath.Join(to, ".web-disk2000.raw.partial-123")
	os.WriteFile(stale, []byte("half"), 0o600)
	if code, _, stderr := e.sendense("restore", "vm-1", "--to", to); code != 0 {
		t.Fatalf("restore: %s", stderr)
	}
	if _, err := os.Lstat(stale); err == nil {
		t.Fatal("the stale temporary output is still there")
	}
	if fi, err := os.Stat(filepath.Join(to, "web-disk2000.raw")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("restored output: %v %v", fi, err)
	}
	e.outsideUnchanged()
}
