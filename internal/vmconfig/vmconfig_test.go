package vmconfig

import (
	"strings"
	"testing"
)

func valid() *Config {
	return &Config{CPUs: 2, MemoryMB: 2048, Firmware: "efi", GuestID: "otherGuest64", HardwareVersion: "vmx-19",
		Controllers: []Controller{{Key: 1000, Type: "pvscsi"}},
		Disks: []Disk{{Key: 2000, Controller: 1000, Unit: 0, Capacity: 1 << 30, Provisioning: "thin"},
			{Key: 2001, Controller: 1000, Unit: 1, Capacity: 1 << 20, Provisioning: "thick-eager"}},
		NICs: []NIC{{Key: 4000, Type: "vmxnet3", Network: "VM Network", MACPolicy: "assigned", MAC: "00:50:56:00:00:01"}}}
}

// TestValidate: what a crafted manifest's vm_config may hold is refused
// with a message naming the field.
func TestValidate(t *testing.T) {
	disks := map[int32]uint64{2000: 1 << 30, 2001: 1 << 20}
	if err := valid().Validate(disks); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.CPUs = 0 }, "cpus"},
		{func(c *Config) { c.CoresPerSocket = 3 }, "cores_per_socket"},
		{func(c *Config) { c.MemoryMB = -1 }, "memory_mb"},
		{func(c *Config) { c.Firmware = "uefi" }, "firmware"},
		{func(c *Config) { c.GuestID = `a" b` }, "guest_id"},
		{func(c *Config) { c.Controllers[0].Type = "scsi9" }, "controller 1000"},
		{func(c *Config) { c.Controllers = append(c.Controllers, c.Controllers[0]) }, "controller 1000"},
		{func(c *Config) { c.Disks[1].Controller = 1001 }, "controller 1001 is not listed"},
		{func(c *Config) { c.Disks[1].Unit = 0 }, "taken twice"},
		{func(c *Config) { c.Disks[0].Provisioning = "sparse" }, "provisioning"},
		{func(c *Config) { c.Disks[0].Capacity = 1 << 29 }, "the backup's disk has"},
		{func(c *Config) { c.Disks = c.Disks[:1] }, "disk 2001 is not described"},
		{func(c *Config) { c.Disks[1].Key = 2000 }, "listed twice"},
		{func(c *Config) { c.NICs[0].Type = "tulip" }, "NIC 4000"},
		{func(c *Config) { c.NICs[0].MACPolicy = "random" }, "mac_policy"},
	} {
		cfg := valid()
		c.edit(cfg)
		if err := cfg.Validate(disks); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want an error with %q, got %v", c.want, err)
		}
	}
	// A disk the backup left out (--exclude-disk) may be described.
	if err := valid().Validate(map[int32]uint64{2000: 1 << 30}); err != nil {
		t.Error(err)
	}
}
