package agent

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2025, 10, 4, 10, 30, 0, 0, time.UTC)
	a := &Job{ID: newJobID(now), Kind: KindBackup, VMPath: "/DC0/vm/a", State: StateRunning, Snapshot: "snapshot-7", Created: now}
	b := &Job{ID: newJobID(now.Add(time.Second)), Kind: KindBackup, VMPath: "/DC0/vm/b", State: StateQueued, Created: now}
	for _, j := range []*Job{b, a} {
		if err := s.put(j); err != nil {
			t.Fatal(err)
		}
	}
	// A second agent on the same state directory is refused.
	if _, err := openStore(dir); err == nil || !strings.Contains(err.Error(), "another sendense serve") {
		t.Fatalf("second open: %v", err)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	s, err = openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	jobs, bad, err := s.load()
	if err != nil || len(bad) != 0 || len(jobs) != 2 {
		t.Fatalf("load: %v %v %d", err, bad, len(jobs))
	}
	if jobs[0].ID != a.ID || jobs[0].Snapshot != "snapshot-7" || jobs[1].State != StateQueued {
		t.Fatalf("load: %+v %+v", jobs[0], jobs[1])
	}
	if err := s.delete([]string{a.ID}); err != nil {
		t.Fatal(err)
	}
	if jobs, _, _ = s.load(); len(jobs) != 1 || jobs[0].ID != b.ID {
		t.Fatalf("after delete: %v", jobs)
	}
	if !validJobID(a.ID) || validJobID("../etc") || validJobID("20251004T103000Z-zzzzzz") {
		t.Fatal("validJobID")
	}
	if filepath.Base(s.path) != StoreFile {
		t.Fatal(s.path)
	}
}

// BenchmarkStorePut is the cost of recording a job (an fsynced bbolt
// transaction), what every state change and snapshot costs.
func BenchmarkStorePut(b *testing.B) {
	s, err := openStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.close()
	j := benchJob()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j.ID = newJobID(time.Now())
		if err := s.put(j); err != nil {
			b.Fatal(err)
		}
	}
}

func benchJob() *Job {
	j := &Job{Kind: KindBackup, VMPath: "/DC0/vm/db01", State: StateRunning, Created: time.Now(), Phase: phaseCopying}
	for k := int32(2000); k < 2004; k++ {
		j.Disks = append(j.Disks, DiskStatus{Key: k, Label: "Hard disk", Phase: "copying", Done: 1 << 30, Total: 1 << 34})
	}
	return j
}
