// Package vmconfig holds a VM's virtual hardware as a backup records it
// in its manifest ("vm_config", docs/repository.md): what restoring the
// VM into vSphere recreates. It has no vSphere dependency; package cbt
// reads and creates it through the vSphere API.
package vmconfig

import (
	"fmt"
	"slices"
)

// Config is a VM's configuration.
type Config struct {
	CPUs            int32        `json:"cpus"`
	CoresPerSocket  int32        `json:"cores_per_socket,omitempty"`
	MemoryMB        int64        `json:"memory_mb"`
	Firmware        string       `json:"firmware"` // "bios" or "efi"
	GuestID         string       `json:"guest_id"` // e.g. "otherGuest64"
	HardwareVersion string       `json:"hardware_version,omitempty"`
	Controllers     []Controller `json:"controllers"`
	Disks           []Disk       `json:"disks"`
	NICs            []NIC        `json:"nics,omitempty"`
}

// Controller is a disk controller.
type Controller struct {
	Key  int32  `json:"key"`
	Type string `json:"type"` // one of ControllerTypes
	Bus  int32  `json:"bus"`
}

// ControllerTypes are the controller types recorded.
var ControllerTypes = []string{"pvscsi", "lsilogic", "lsilogic-sas", "buslogic", "ide", "sata", "nvme"}

// Disk is a virtual disk.
type Disk struct {
	Key          int32  `json:"key"`
	Label        string `json:"label,omitempty"`
	Controller   int32  `json:"controller_key"`
	Unit         int32  `json:"unit"`
	Capacity     uint64 `json:"capacity"`
	Provisioning string `json:"provisioning"` // one of Provisionings
}

// Provisionings are the disk provisioning types.
var Provisionings = []string{"thin", "thick-lazy", "thick-eager"}

// NIC is a network adapter.
type NIC struct {
	Key       int32  `json:"key"`
	Type      string `json:"type"` // one of NICTypes
	Network   string `json:"network"`
	MACPolicy string `json:"mac_policy"` // "generated", "assigned" or "manual"
	MAC       string `json:"mac,omitempty"`
}

// NICTypes are the adapter types recorded.
var NICTypes = []string{"vmxnet3", "vmxnet2", "e1000", "e1000e", "pcnet32", "sriov"}

// Validate checks the configuration; disks are the capacities of the
// backup's disks by key, each of which it must describe.
func (c *Config) Validate(disks map[int32]uint64) error {
	switch {
	case c.CPUs < 1 || c.CPUs > 4096:
		return fmt.Errorf("cpus %d is not 1-4096", c.CPUs)
	case c.CoresPerSocket < 0 || c.CoresPerSocket > c.CPUs:
		return fmt.Errorf("cores_per_socket %d is not 0-%d", c.CoresPerSocket, c.CPUs)
	case c.MemoryMB < 4 || c.MemoryMB > 1<<34:
		return fmt.Errorf("memory_mb %d is not valid", c.MemoryMB)
	case c.Firmware != "bios" && c.Firmware != "efi":
		return fmt.Errorf("firmware %q is not bios or efi", c.Firmware)
	case !plain(c.GuestID) || c.GuestID == "":
		return fmt.Errorf("guest_id %q is not a guest OS identifier", c.GuestID)
	case !plain(c.HardwareVersion):
		return fmt.Errorf("hardware_version %q is not valid", c.HardwareVersion)
	}
	ctrl := map[int32]bool{}
	for _, k := range c.Controllers {
		if ctrl[k.Key] || !slices.Contains(ControllerTypes, k.Type) || k.Bus < 0 || k.Bus > 64 {
			return fmt.Errorf("controller %d (%s, bus %d) is listed twice or not valid", k.Key, k.Type, k.Bus)
		}
		ctrl[k.Key] = true
	}
	seen := map[int32]bool{}
	slots := map[[2]int32]bool{}
	for _, d := range c.Disks {
		slot := [2]int32{d.Controller, d.Unit}
		switch {
		case seen[d.Key]:
			return fmt.Errorf("disk %d is listed twice", d.Key)
		case !ctrl[d.Controller]:
			return fmt.Errorf("disk %d: controller %d is not listed", d.Key, d.Controller)
		case d.Unit < 0 || d.Unit > 256 || slots[slot]:
			return fmt.Errorf("disk %d: unit %d of controller %d is not valid or taken twice", d.Key, d.Unit, d.Controller)
		case !slices.Contains(Provisionings, d.Provisioning):
			return fmt.Errorf("disk %d: provisioning %q is not one of %v", d.Key, d.Provisioning, Provisionings)
		case d.Capacity == 0:
			return fmt.Errorf("disk %d: capacity 0", d.Key)
		}
		if want, ok := disks[d.Key]; ok && want != d.Capacity {
			return fmt.Errorf("disk %d: capacity %d, the backup's disk has %d", d.Key, d.Capacity, want)
		}
		seen[d.Key], slots[slot] = true, true
	}
	for k := range disks {
		if !seen[k] {
			return fmt.Errorf("the backup's disk %d is not described", k)
		}
	}
	nics := map[int32]bool{}
	for _, n := range c.NICs {
		switch {
		case nics[n.Key]:
			return fmt.Errorf("NIC %d is listed twice", n.Key)
		case !slices.Contains(NICTypes, n.Type):
			return fmt.Errorf("NIC %d: type %q is not one of %v", n.Key, n.Type, NICTypes)
		case n.MACPolicy != "generated" && n.MACPolicy != "assigned" && n.MACPolicy != "manual":
			return fmt.Errorf("NIC %d: mac_policy %q is not generated, assigned or manual", n.Key, n.MACPolicy)
		case len(n.Network) > 256:
			return fmt.Errorf("NIC %d: network name too long", n.Key)
		}
		nics[n.Key] = true
	}
	return nil
}

// plain says s has only printable ASCII without spaces or quotes.
func plain(s string) bool {
	for _, c := range []byte(s) {
		if c <= ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return len(s) <= 64
}
