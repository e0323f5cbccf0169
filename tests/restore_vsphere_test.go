package tests

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/repo"
)

// vsphereDisk and vsphereSummary are restore --to-vsphere --json lines.
type vsphereDisk struct {
	Key          int32  `json:"key"`
	Target       int32  `json:"target"`
	Mode         string `json:"mode"`
	Reason       string `json:"reason"`
	Changed      uint64 `json:"bytes_changed"`
	BytesWritten uint64 `json:"bytes_written"`
	BytesZeroed  uint64 `json:"bytes_zeroed"`
}

type vsphereSummary struct {
	Type    string        `json:"message_type"`
	Target  string        `json:"target"`
	Moref   string        `json:"moref"`
	Created bool          `json:"created"`
	Disks   []vsphereDisk `json:"disks"`
}

func (b *backupLab) restoreVSphere(args ...string) vsphereSummary {
	b.t.Helper()
	out := b.mustRun(append([]string{"restore", "--json", "--to-vsphere"}, args...)...)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var s vsphereSummary
		if json.Unmarshal([]byte(line), &s) == nil && s.Type == "summary" {
			return s
		}
	}
	b.t.Fatalf("no summary:\n%s", out)
	return vsphereSummary{}
}

// TestRestoreToVSphere: a backup of a three-disk VM becomes a new lab VM
// with the recorded configuration and every disk byte-identical (only
// allocated data written); then the original, powered off after guest
// writes, is rolled back in place writing only what CBT says changed.
func TestRestoreToVSphere(t *testing.T) {
	b := startBackupLab(t, []lab.VMSpec{multiDiskVM})
	ctx := context.Background()
	b.backup("db")
	b.write("db", 2000, 1*mib, 1*mib, 5)
	r := b.backup("db")
	m := readManifest(t, filepath.Join(b.repo, "db", r.BackupID+".json"))
	cfg := m.VMConfig
	if cfg == nil || cfg.CPUs < 1 || cfg.MemoryMB == 0 || cfg.GuestID == "" || len(cfg.Disks) != 3 || len(cfg.Controllers) == 0 {
		t.Fatalf("the manifest's vm_config: %+v", cfg)
	}

	s := b.restoreVSphere("db", "--name", "db-copy")
	if !s.Created || s.Target != "db-copy" || len(s.Disks) != 3 {
		t.Fatalf("summary %+v", s)
	}
	info, err := b.VM("db-copy")
	if err != nil {
		t.Fatal(err)
	}
	var data uint64
	for _, d := range s.Disks {
		if d.Mode != "new" {
			t.Errorf("disk %+v", d)
		}
		data += d.BytesWritten
		p, err := b.DiskPath("db-copy", d.Target)
		if err != nil {
			t.Fatalf("disk %d of the new VM: %v (%+v)", d.Target, err, info)
		}
		run(t, "cmp", b.expected["db"][r.BackupID][d.Key], p)
	}
	if data > 12*mib {
		t.Errorf("%d bytes written for about 11 MiB of data: not only the allocated extents", data)
	}
	// The new VM's configuration is the backup's.
	var vm mo.VirtualMachine
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: s.Moref}
	if err := property.DefaultCollector(b.client.Vim25()).RetrieveOne(ctx, ref, []string{"config"}, &vm); err != nil {
		t.Fatal(err)
	}
	hw := vm.Config.Hardware
	if hw.NumCPU != cfg.CPUs || int64(hw.MemoryMB) != cfg.MemoryMB || vm.Config.GuestId != cfg.GuestID {
		t.Errorf("new VM: %d CPUs, %d MB, guest %s; backup: %+v", hw.NumCPU, hw.MemoryMB, vm.Config.GuestId, cfg)
	}
	var caps []int64
	for _, dev := range hw.Device {
		if d, ok := dev.(*types.VirtualDisk); ok {
			caps = append(caps, d.CapacityInBytes)
		}
	}
	if len(caps) != 3 || uint64(caps[0]) != cfg.Disks[0].Capacity {
		t.Errorf("new VM's disks: %v, backup: %+v", caps, cfg.Disks)
	}
	// A second restore under the same name is refused; the copy is kept.
	if _, errOut, code := b.run(nil, "restore", "--to-vsphere", "db", "--name", "db-copy"); code != 1 || !strings.Contains(errOut, "exists") {
		t.Errorf("restore over an existing name: exit %d: %s", code, errOut)
	}

	// Quick rollback of the original after guest writes.
	if _, errOut, code := b.run(nil, "restore", "--to-vsphere", "--in-place", "db"); code != 2 || !strings.Contains(errOut, "--confirm-overwrite") {
		t.Errorf("--in-place without confirmation: exit %d: %s", code, errOut)
	}
	if _, errOut, code := b.run(nil, "restore", "--to-vsphere", "--in-place", "--confirm-overwrite", "db"); code != 1 || !strings.Contains(errOut, "power it off") {
		t.Errorf("--in-place on a running VM: exit %d: %s", code, errOut)
	}
	b.write("db", 2000, 3*mib, 512*kib, 77)
	b.write("db", 2001, 0, 256*kib, 78)
	orig, _ := b.VM("db")
	task, err := object.NewVirtualMachine(b.client.Vim25(), types.ManagedObjectReference{Type: "VirtualMachine", Value: orig.Moref}).PowerOff(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	s = b.restoreVSphere("db", "--in-place", "--confirm-overwrite", "--backup", r.BackupID)
	var written, changed uint64
	for _, d := range s.Disks {
		if d.Mode != "changed" {
			t.Errorf("disk %d: %s (%s)", d.Key, d.Mode, d.Reason)
		}
		written += d.BytesWritten + d.BytesZeroed
		changed += d.Changed
		p, _ := b.DiskPath("db", d.Key)
		run(t, "cmp", b.expected["db"][r.BackupID][d.Key], p)
	}
	t.Logf("quick rollback: %d bytes written, CBT reported %d changed (%.2f)", written, changed, float64(written)/float64(changed))
	if changed < 768*kib || written > changed || written < 768*kib {
		t.Errorf("quick rollback wrote %d bytes, CBT reported %d changed, 768 KiB were written by the guest", written, changed)
	}
	b.noSnapshots("db")

	// CBT reset since the backup: the whole disk is written, and why.
	if err := b.SetCBT(ctx, "db", false); err != nil {
		t.Fatal(err)
	}
	if err := b.SetCBT(ctx, "db", true); err != nil {
		t.Fatal(err)
	}
	b.write("db", 2001, 4*mib, 64*kib, 79)
	s = b.restoreVSphere("db", "--in-place", "--confirm-overwrite", "--backup", r.BackupID, "--disk", "2001")
	if len(s.Disks) != 1 || s.Disks[0].Mode != "full" || s.Disks[0].Reason == "" {
		t.Fatalf("in place after a CBT reset: %+v", s.Disks)
	}
	p, _ := b.DiskPath("db", 2001)
	run(t, "cmp", b.expected["db"][r.BackupID][2001], p)
	b.noSnapshots("db")
}

func readManifest(t *testing.T, path string) *repo.Manifest {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m repo.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}
