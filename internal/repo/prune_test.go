package repo_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/repo/repotest"
)

// listIDs returns the restore points of the chain's VM.
func listIDs(t *testing.T, r *repo.Repo) []string {
	t.Helper()
	ls, err := r.List(context.Background(), "vm-42")
	if err != nil || len(ls.Errors) > 0 {
		t.Fatal(err, ls.Errors)
	}
	var out []string
	for _, p := range ls.Points {
		out = append(out, p.ID)
	}
	return out
}

// vmFiles lists the VM directory's files, lock files aside.
func vmFiles(t *testing.T, r *repo.Repo) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(r.Dir, "web_01"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if n := e.Name(); n != "lock" && n != "read.lock" && n != "state.json" {
			out = append(out, n)
		}
	}
	return out
}

func TestPrune(t *testing.T) {
	r, b := chain(t)
	ctx := context.Background()
	all := ids(b)
	before := vmFiles(t, r)

	reps, err := r.Prune(ctx, repo.PruneOptions{Keep: 2, DryRun: true})
	if err != nil || len(reps) != 1 {
		t.Fatal(reps, err)
	}
	if rep := reps[0]; !slices.Equal(rep.Kept, all[2:]) || !slices.Equal(rep.Dropped, all[:2]) || len(rep.Merged) != 2 || !rep.DryRun || rep.FreedBytes <= 0 {
		t.Fatalf("dry run: %+v", rep)
	}
	if after := vmFiles(t, r); !slices.Equal(before, after) {
		t.Fatalf("dry run changed files: %v → %v", before, after)
	}

	// keep 2 of 4: backup 3's disks back onto 2 and 1, which go; both
	// disks are merged into backup 3, which becomes full.
	reps, err = r.Prune(ctx, repo.PruneOptions{Keep: 2, VM: "web 01"})
	if err != nil {
		t.Fatal(err)
	}
	rep := reps[0]
	if !slices.Equal(rep.Kept, all[2:]) || !slices.Equal(rep.Dropped, all[:2]) || len(rep.Merged) != 2 || rep.FreedBytes < 0 {
		t.Fatalf("prune: %+v", rep)
	}
	if got := rep.Merged[0]; got.Backup != all[2] || got.Disk != keyA || len(got.Images) != 3 {
		t.Fatalf("merge: %+v", got)
	}
	if got := listIDs(t, r); !slices.Equal(got, all[2:]) {
		t.Fatalf("after prune: %v", got)
	}
	m3, err := r.Latest("vm-42")
	if err != nil {
		t.Fatal(err)
	}
	m3 = mustManifest(t, r, all[2])
	if m3.Parent != "" || m3.Level() != repo.LevelFull || !slices.Equal(m3.Merged, all[:2]) || !strings.Contains(m3.Disk(keyA).Reason, "merged") {
		t.Fatalf("merged manifest: parent %q level %s merged %v reason %q", m3.Parent, m3.Level(), m3.Merged, m3.Disk(keyA).Reason)
	}
	wantFiles := []string{all[2] + ".json", repo.ImageName(all[2], keyA), repo.ImageName(all[2], keyB),
		all[3] + ".json", repo.ImageName(all[3], keyA), repo.ImageName(all[3], keyB)}
	slices.Sort(wantFiles)
	if got := vmFiles(t, r); !slices.Equal(got, wantFiles) {
		t.Fatalf("files after prune:\n got %v\nwant %v", got, wantFiles)
	}
	for _, id := range all[2:] {
		b.CheckRestore(id)
	}
	verifyOK(t, r, "", "")
	if info, err := qemu.Info(ctx, filepath.Join(r.Dir, "web_01", repo.ImageName(all[2], keyA))); err != nil || info.BackingFilename != "" {
		t.Fatalf("merged image: %+v %v", info, err)
	}

	// A backup after the prune continues the chain.
	b.Backup(repotest.Disk{Key: keyA, Capacity: 4 * mib, Writes: []repotest.Write{{Off: 0, Len: 4 * kib}}},
		repotest.Disk{Key: keyB, Capacity: 2 * mib})
	all = ids(b)

	// keep 1 of 3: backup 5 is merged with 4 (A) and 4 (B, a full).
	if _, err := r.Prune(ctx, repo.PruneOptions{Keep: 1}); err != nil {
		t.Fatal(err)
	}
	if got := listIDs(t, r); !slices.Equal(got, all[4:]) {
		t.Fatalf("after keep 1: %v", got)
	}
	b.CheckRestore(all[4])
	verifyOK(t, r, "", "")
	if rep, err := r.Prune(ctx, repo.PruneOptions{Keep: 1}); err != nil || len(rep[0].Dropped) != 0 {
		t.Fatalf("prune with nothing to do: %+v %v", rep, err)
	}
	if _, err := r.Prune(ctx, repo.PruneOptions{Keep: 0}); err == nil || !strings.Contains(err.Error(), "--keep") {
		t.Fatalf("keep 0: %v", err)
	}
}

func mustManifest(t *testing.T, r *repo.Repo, id string) *repo.Manifest {
	t.Helper()
	res, err := r.List(context.Background(), "vm-42")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Points {
		if p.ID == id {
			return p.Manifest
		}
	}
	t.Fatalf("backup %s not listed", id)
	return nil
}

// pruneSteps are the steps of a prune of the chain to 2 backups (two
// disks of the oldest kept backup merged), in order; merging ones roll
// back when interrupted, the others roll forward.
var pruneSteps = []struct {
	step    string
	nth     int
	forward bool
}{
	{"journal", 1, false}, {"merged", 1, false}, {"merged", 2, false}, {"manifest-new", 1, false},
	{"switching", 1, true}, {"rename", 1, true}, {"rename", 2, true}, {"switch", 1, true},
	{"drop", 1, true}, {"drop", 2, true}, {"delete", 1, true}, {"delete", 2, true},
}

// killAtEnv makes TestPruneKillHelper prune the repository in
// $SENDENSE_TEST_REPO and kill itself (SIGKILL) at step:nth.
const killAtEnv = "SENDENSE_TEST_PRUNE_KILL_AT"

// TestPruneKillHelper is the process TestPruneCrash kills.
func TestPruneKillHelper(t *testing.T) {
	at := os.Getenv(killAtEnv)
	if at == "" {
		t.Skip("run by TestPruneCrash")
	}
	step, nth, _ := strings.Cut(at, ":")
	r, err := repo.Open(os.Getenv("SENDENSE_TEST_REPO"))
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	repo.SetHook(r, func(s string) error {
		if s == step {
			if seen++; fmt.Sprint(seen) == nth {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				time.Sleep(time.Minute)
			}
		}
		return nil
	})
	_, err = r.Prune(context.Background(), repo.PruneOptions{Keep: 2})
	t.Fatalf("prune was not killed: %v", err)
}

// TestPruneCrash interrupts a prune after each of its steps, by an error
// from the step (a failed step, in the same process) and by SIGKILL of
// the process, and checks that at that instant every point that must be
// restorable restores exactly (before the point of no return: all of
// them; after: the kept ones), that the next Open rolls the prune back or
// forward, and that everything then verifies and nothing is left over.
func TestPruneCrash(t *testing.T) {
	for _, c := range pruneSteps {
		for _, mode := range []string{"error", "kill"} {
			t.Run(fmt.Sprintf("%s-%d-%s", c.step, c.nth, mode), func(t *testing.T) {
				t.Parallel()
				r, b := chain(t)
				ctx := context.Background()
				all := ids(b)
				if mode == "error" {
					seen := 0
					crash := errors.New("injected crash")
					repo.SetHook(r, func(step string) error {
						if step == c.step {
							if seen++; seen == c.nth {
								return crash
							}
						}
						return nil
					})
					if _, err := r.Prune(ctx, repo.PruneOptions{Keep: 2}); !errors.Is(err, crash) {
						t.Fatalf("prune: got %v, want the injected crash", err)
					}
					repo.SetHook(r, nil)
				} else {
					cmd := exec.Command(os.Args[0], "-test.run=^TestPruneKillHelper$", "-test.count=1")
					cmd.Env = append(os.Environ(), killAtEnv+"="+c.step+":"+fmt.Sprint(c.nth), "SENDENSE_TEST_REPO="+r.Dir)
					out, err := cmd.CombinedOutput()
					var ee *exec.ExitError
					if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
						t.Fatalf("the prune was not killed at %s: %v\n%s", c.step, err, out)
					}
				}
				if !exists(filepath.Join(r.Dir, "web_01", "prune-journal.json")) {
					t.Fatal("no journal after the interruption")
				}
				want := all
				if c.forward {
					want = all[2:]
				}
				// At this instant every point that must be restorable is.
				if got := listIDs(t, r); !slices.Equal(got, want) {
					t.Fatalf("listed during the prune: %v, want %v", got, want)
				}
				for _, id := range want {
					b.CheckRestore(id)
				}
				// The next Open rolls it back or forward.
				r2, err := repo.Open(r.Dir)
				if err != nil {
					t.Fatal(err)
				}
				defer r2.Close()
				if exists(filepath.Join(r.Dir, "web_01", "prune-journal.json")) {
					t.Fatal("the journal is still there after Open")
				}
				if got := listIDs(t, r2); !slices.Equal(got, want) {
					t.Fatalf("after recovery: %v, want %v", got, want)
				}
				b2 := b.Clone(t, r2)
				for _, id := range want {
					b2.CheckRestore(id)
				}
				res := verifyOK(t, r2, "", "")
				if len(res.Leftovers) != 0 {
					t.Fatalf("leftovers after recovery: %+v", res.Leftovers)
				}
				if got, n := vmFiles(t, r2), 3*len(want); len(got) != n {
					t.Fatalf("%d files left, want %d: %v", len(got), n, got)
				}
			})
		}
	}
}

// failingTool is a wrapper of qemu-img that fails its n-th run of the
// sub-command match (counted in a file) or, with corrupt, runs it and
// then writes garbage into its output image (its last argument).
func failingTool(t *testing.T, match string, n int, corrupt bool) string {
	t.Helper()
	real, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	fail := `echo "injected failure of qemu-img $1" >&2; exit 1`
	if corrupt {
		fail = `"$REAL" "$@" || exit; for out; do :; done; qemu-io -f qcow2 -c "write -P 0x5a 4096 512" "$out" >/dev/null; exit`
	}
	script := fmt.Sprintf(`#!/bin/sh
REAL=%s
case "$1" in %s)
  n=$(cat %[3]s/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > %[3]s/count
  if [ $n -eq %[4]d ]; then %[5]s; fi;;
esac
exec "$REAL" "$@"
`, real, match, dir, n, fail)
	p := filepath.Join(dir, "qemu-img")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPruneToolFailure makes each qemu-img run of a prune fail in turn,
// and a conversion write wrong data: the prune fails, says that nothing
// was changed, every point restores exactly as before and nothing is
// left over.
func TestPruneToolFailure(t *testing.T) {
	cases := []struct {
		match   string
		n       int
		corrupt bool
		want    string
	}{
		{"info", 1, false, "injected failure"}, {"info", 8, false, "injected failure"},
		{"convert", 1, false, "injected failure"}, {"convert", 2, false, "injected failure"},
		{"map", 1, false, "injected failure"}, {"map", 2, false, "injected failure"},
		{"convert", 1, true, "does not match"}, {"convert", 2, true, "is not zero"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s-%d-%v", c.match, c.n, c.corrupt), func(t *testing.T) {
			t.Parallel()
			r, b := chain(t)
			all := ids(b)
			before := vmFiles(t, r)
			r.Tools = &qemu.Tools{Runner: qemu.LocalRunner{}, QemuImg: failingTool(t, c.match, c.n, c.corrupt)}
			_, err := r.Prune(context.Background(), repo.PruneOptions{Keep: 2})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "nothing was changed") {
				t.Fatalf("prune with a failing qemu-img %s: %v", c.match, err)
			}
			r.Tools = qemu.Default
			if after := vmFiles(t, r); !slices.Equal(before, after) {
				t.Fatalf("files changed: %v → %v", before, after)
			}
			for _, id := range all {
				b.CheckRestore(id)
			}
		})
	}
}

// TestPruneSelect: a retention policy (PruneOptions.Select) keeps the
// oldest and the newest backups; the newest, whose chain runs through the
// removed ones down to the kept oldest, is made standalone; the reasons
// are reported; a policy keeping nothing keeps the newest.
func TestPruneSelect(t *testing.T) {
	r, b := chain(t)
	ctx := context.Background()
	all := ids(b)
	var seen []repo.PrunePoint
	sel := func(points []repo.PrunePoint) map[string][]string {
		seen = points
		return map[string][]string{points[0].ID: {"newest"}, points[len(points)-1].ID: {"monthly"}}
	}
	reps, err := r.Prune(ctx, repo.PruneOptions{Select: sel, DryRun: true})
	if err != nil || len(seen) != 4 || seen[0].ID != all[3] || seen[0].Time.IsZero() || !seen[0].Time.After(seen[3].Time) {
		t.Fatalf("dry run: %+v %v; the policy saw %+v", reps, err, seen)
	}
	if rep := reps[0]; !slices.Equal(rep.Kept, []string{all[0], all[3]}) || rep.Reasons[all[0]][0] != "monthly" || len(rep.Merged) != 1 {
		t.Fatalf("dry run: %+v", rep)
	}
	if _, err := r.Prune(ctx, repo.PruneOptions{Select: sel}); err != nil {
		t.Fatal(err)
	}
	if got := listIDs(t, r); !slices.Equal(got, []string{all[0], all[3]}) {
		t.Fatalf("after: %v", got)
	}
	b.CheckRestore(all[0])
	b.CheckRestore(all[3])
	verifyOK(t, r, "", "")
	reps, err = r.Prune(ctx, repo.PruneOptions{Select: func([]repo.PrunePoint) map[string][]string { return nil }})
	if err != nil || !slices.Equal(reps[0].Kept, []string{all[3]}) || !strings.Contains(reps[0].Reasons[all[3]][0], "never removes the last") {
		t.Fatalf("a policy keeping nothing: %+v %v", reps, err)
	}
	b.CheckRestore(all[3])
}

// TestReadOnlyPendingPrune: a prune stopped after its point of no return
// on a repository then mounted read-only (an immutable copy): nothing can
// finish it, and the backups it keeps are listed and restore exactly.
func TestReadOnlyPendingPrune(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a read-only bind mount")
	}
	r, b := chain(t)
	all := ids(b)
	repo.SetHook(r, func(step string) error {
		if step == "rename" {
			return errors.New("crash")
		}
		return nil
	})
	if _, err := r.Prune(context.Background(), repo.PruneOptions{Keep: 2}); err == nil {
		t.Fatal("prune did not stop")
	}
	ro := filepath.Join(t.TempDir(), "ro")
	os.Mkdir(ro, 0o700)
	if out, err := exec.Command("mount", "--bind", r.Dir, ro).CombinedOutput(); err != nil {
		t.Skipf("bind mount: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", ro).Run() })
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", ro).CombinedOutput(); err != nil {
		t.Skipf("read-only remount: %v %s", err, out)
	}
	r2, err := repo.Open(ro)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if !exists(filepath.Join(ro, "web_01", "prune-journal.json")) {
		t.Fatal("the journal is gone")
	}
	if got := listIDs(t, r2); !slices.Equal(got, all[2:]) {
		t.Fatalf("listed: %v", got)
	}
	b2 := b.Clone(t, r2)
	for _, id := range all[2:] {
		b2.CheckRestore(id)
	}
	verifyOK(t, r2, "vm-42", all[2])
	if _, err := r2.Prune(context.Background(), repo.PruneOptions{Keep: 2}); !errors.Is(err, repo.ErrReadOnly) {
		t.Fatalf("prune of a read-only repository: %v", err)
	}
}
