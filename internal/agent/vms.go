package agent

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/orchestrator"
)

// vcenterTimeout bounds the vCenter calls of one API request (below the
// server's write timeout).
const vcenterTimeout = 45 * time.Second

// vcenterError maps an error from vCenter to an API error.
func vcenterError(spec string, err error) *apiError {
	switch {
	case errors.Is(err, cbt.ErrNotFound):
		return errorf(http.StatusNotFound, "VM not found: "+spec, "%v", err)
	case errors.Is(err, cbt.ErrAmbiguous):
		return errorf(http.StatusBadRequest, "ambiguous VM: "+spec, "%v", err)
	case errors.Is(err, errNotConnected):
		return errorf(http.StatusServiceUnavailable, "vCenter unavailable", "%v", err)
	case errors.Is(err, context.DeadlineExceeded):
		return errorf(http.StatusGatewayTimeout, "vCenter timeout", "%v", err)
	}
	return errorf(http.StatusBadGateway, "vCenter error", "%v", err)
}

// findVM resolves a VM given by inventory path, moref or name.
func (s *Server) findVM(ctx context.Context, spec string) (*orchestrator.Services, *cbt.VM, *apiError) {
	if strings.TrimSpace(spec) == "" {
		return nil, nil, errorf(http.StatusBadRequest, "no VM given", "give the VM's URL-escaped inventory path (%%2FDC0%%2Fvm%%2Fweb), moref (vm-42) or name")
	}
	svc, err := s.vc.services()
	if err != nil {
		return nil, nil, vcenterError(spec, err)
	}
	vm, err := svc.Client.FindVM(ctx, spec)
	if err != nil {
		return nil, nil, vcenterError(spec, err)
	}
	return svc, vm, nil
}

func (s *Server) handleVMs(w http.ResponseWriter, r *http.Request) {
	svc, err := s.vc.services()
	if err != nil {
		writeError(w, vcenterError("", err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), vcenterTimeout)
	defer cancel()
	vms, err := svc.Client.ListVMs(ctx)
	if err != nil {
		writeError(w, vcenterError("", err))
		return
	}
	if vms == nil {
		vms = []cbt.VMInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"vms": vms})
}

// vmHandler serves GET /api/v1/vms/{vm_path}/WHAT.
func (s *Server) vmHandler(what string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.serveVM(w, r, r.PathValue("vm_path"), what)
	}
}

// handleVMRest serves a VM path sent unescaped:
// /api/v1/vms/DC0/vm/web/specs is /DC0/vm/web's specs.
func (s *Server) handleVMRest(w http.ResponseWriter, r *http.Request) {
	rest := r.PathValue("rest")
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		writeError(w, errorf(http.StatusNotFound, "not found", "no endpoint GET %s: use /api/v1/vms/{vm_path}/specs, /disks or /cbt-status", r.URL.Path))
		return
	}
	spec, what := rest[:i], rest[i+1:]
	switch what {
	case "specs", "disks", "cbt-status":
	default:
		writeError(w, errorf(http.StatusNotFound, "not found", "no endpoint GET %s: use /api/v1/vms/{vm_path}/specs, /disks or /cbt-status", r.URL.Path))
		return
	}
	if strings.Contains(spec, "/") && !strings.HasPrefix(spec, "/") {
		spec = "/" + spec
	}
	s.serveVM(w, r, spec, what)
}

func (s *Server) serveVM(w http.ResponseWriter, r *http.Request, spec, what string) {
	ctx, cancel := context.WithTimeout(r.Context(), vcenterTimeout)
	defer cancel()
	svc, vm, aerr := s.findVM(ctx, spec)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	var v any
	var err error
	switch what {
	case "specs":
		v, err = s.vmSpecs(ctx, svc, vm)
	case "disks":
		v, err = vmDisks(ctx, svc, vm)
	case "cbt-status":
		v, aerr = s.cbtStatus(ctx, svc, vm, r.URL.Query().Get("repository"))
	}
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if err != nil {
		writeError(w, vcenterError(spec, err))
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// Hardware is the configuration part of a VM's specifications.
type Hardware struct {
	NumCPU          int32  `json:"num_cpu"`
	CoresPerSocket  int32  `json:"cores_per_socket,omitempty"`
	MemoryMB        int32  `json:"memory_mb"`
	GuestOS         string `json:"guest_os,omitempty"`
	GuestID         string `json:"guest_id,omitempty"`
	Version         string `json:"hardware_version,omitempty"`
	Firmware        string `json:"firmware,omitempty"`
	UUID            string `json:"uuid,omitempty"`
	InstanceUUID    string `json:"instance_uuid,omitempty"`
	ToolsStatus     string `json:"tools_status,omitempty"`
	ToolsRunning    string `json:"tools_running_status,omitempty"`
	GuestHostName   string `json:"guest_hostname,omitempty"`
	GuestIP         string `json:"guest_ip,omitempty"`
	ConnectionState string `json:"connection_state,omitempty"`
}

// VMSpecs is the answer of GET /api/v1/vms/{vm_path}/specs: the VM
// object, with its hardware.
type VMSpecs struct {
	*orchestrator.VMDescription
	Hardware Hardware `json:"hardware"`
}

func (s *Server) vmSpecs(ctx context.Context, svc *orchestrator.Services, vm *cbt.VM) (*VMSpecs, error) {
	d, err := orchestrator.DescribeVM(ctx, svc.Client, vm.Moref)
	if err != nil {
		return nil, err
	}
	if d.Path == "" {
		d.Path = vm.Path
	}
	out := &VMSpecs{VMDescription: d}
	var m mo.VirtualMachine
	props := []string{"config.hardware.numCPU", "config.hardware.numCoresPerSocket", "config.hardware.memoryMB", "config.guestFullName",
		"config.guestId", "config.version", "config.firmware", "config.uuid", "config.instanceUuid", "guest.toolsStatus",
		"guest.toolsRunningStatus", "guest.hostName", "guest.ipAddress", "runtime.connectionState"}
	if err := property.DefaultCollector(svc.Client.Vim25()).RetrieveOne(ctx, vm.Reference(), props, &m); err != nil {
		return nil, err
	}
	if c := m.Config; c != nil {
		out.Hardware = Hardware{NumCPU: c.Hardware.NumCPU, MemoryMB: c.Hardware.MemoryMB,
			GuestOS: c.GuestFullName, GuestID: c.GuestId, Version: c.Version, Firmware: c.Firmware, UUID: c.Uuid, InstanceUUID: c.InstanceUuid}
		if c.Hardware.NumCoresPerSocket != nil {
			out.Hardware.CoresPerSocket = *c.Hardware.NumCoresPerSocket
		}
	}
	if g := m.Guest; g != nil {
		out.Hardware.ToolsStatus = string(g.ToolsStatus)
		out.Hardware.ToolsRunning = g.ToolsRunningStatus
		out.Hardware.GuestHostName = g.HostName
		out.Hardware.GuestIP = g.IpAddress
	}
	out.Hardware.ConnectionState = string(m.Runtime.ConnectionState)
	return out, nil
}

// VMDisks is the answer of GET /api/v1/vms/{vm_path}/disks.
type VMDisks struct {
	VM       cbt.VM     `json:"vm"`
	Disks    []cbt.Disk `json:"disks"`
	Capacity uint64     `json:"capacity"`
}

func vmDisks(ctx context.Context, svc *orchestrator.Services, vm *cbt.VM) (*VMDisks, error) {
	disks, err := svc.Client.Disks(ctx, vm, "")
	if err != nil {
		return nil, err
	}
	out := &VMDisks{VM: *vm, Disks: disks}
	if out.Disks == nil {
		out.Disks = []cbt.Disk{}
	}
	for _, d := range disks {
		out.Capacity += d.Capacity
	}
	return out, nil
}

// CBTStatus is the answer of GET /api/v1/vms/{vm_path}/cbt-status: the
// product sheet's fields, and per disk the changeId the next incremental
// starts from (the latest backup's, from the repository).
type CBTStatus struct {
	Enabled      bool      `json:"enabled"`
	Supported    bool      `json:"cbt_supported"`
	VMName       string    `json:"vm_name"`
	VMPath       string    `json:"vm_path"`
	Moref        string    `json:"moref"`
	PowerState   string    `json:"power_state"`
	Snapshots    int       `json:"snapshots"`
	LastChangeID string    `json:"last_change_id"` // the first disk's
	LastBackupID string    `json:"last_backup_id,omitempty"`
	LastBackup   string    `json:"last_backup,omitempty"` // when it finished (RFC 3339)
	Repository   string    `json:"repository,omitempty"`
	RepoError    string    `json:"repository_error,omitempty"`
	Disks        []CBTDisk `json:"disks"`
	// Foreign are the VM's snapshots named like a job's ("sendense-*")
	// without a sendense owner marker: a user's, never removed by a job.
	Foreign []cbt.Snapshot `json:"foreign_snapshots"`
}

// CBTDisk is one disk of a CBT status.
type CBTDisk struct {
	Key          int32  `json:"key"`
	Label        string `json:"label,omitempty"`
	UUID         string `json:"uuid,omitempty"`
	Capacity     uint64 `json:"capacity"`
	LastChangeID string `json:"last_change_id"` // "" when the disk has no backup: the next one is full
}

func (s *Server) cbtStatus(ctx context.Context, svc *orchestrator.Services, vm *cbt.VM, repoDir string) (*CBTStatus, *apiError) {
	if repoDir == "" {
		repoDir = s.cfg.Repository.Path
	} else if aerr := s.authz.repository(s.cfg, repoDir, `invalid parameter "repository"`); aerr != nil {
		return nil, aerr
	}
	out, err := ReadCBTStatus(ctx, svc, vm, repoDir)
	if err != nil {
		return nil, vcenterError(vm.Moref, err)
	}
	return out, nil
}

// ReadCBTStatus is vm's CBT status as GET /api/v1/vms/{vm_path}/cbt-status
// and `sendense cbt status --json` show it, with the changeIds of its
// latest backup in the repository at repoDir ("": none) and the foreign
// snapshots. A repository that cannot be read is a field of the answer
// (repository_error); errors are vCenter's.
func ReadCBTStatus(ctx context.Context, svc *orchestrator.Services, vm *cbt.VM, repoDir string) (*CBTStatus, error) {
	st, err := svc.Client.CBTStatus(ctx, vm)
	if err != nil {
		return nil, err
	}
	disks, err := svc.Client.Disks(ctx, vm, "")
	if err != nil {
		return nil, err
	}
	snaps, err := svc.Client.Snapshots(ctx, vm)
	if err != nil {
		return nil, err
	}
	orchestrator.MarkForeign(snaps)
	out := &CBTStatus{Enabled: st.Enabled, Supported: st.Supported, VMName: vm.Name, VMPath: vm.Path, Moref: vm.Moref,
		PowerState: st.PowerState, Snapshots: st.Snapshots, Disks: []CBTDisk{}, Foreign: []cbt.Snapshot{}}
	out.Foreign = append(out.Foreign, orchestrator.ForeignSnapshots(snaps)...)
	var latest *repo.Manifest
	if repoDir != "" {
		out.Repository = repoDir
		latest, err = latestBackup(ctx, svc, repoDir, vm.Moref)
		if err != nil {
			out.RepoError = err.Error()
		}
	}
	if latest != nil {
		out.LastBackupID = latest.ID
		out.LastBackup = latest.Finished.UTC().Format(time.RFC3339)
	}
	for _, d := range disks {
		cd := CBTDisk{Key: d.Key, Label: d.Label, UUID: d.UUID, Capacity: d.Capacity}
		if latest != nil {
			if img := latest.Disk(d.Key); img != nil {
				cd.LastChangeID = img.ChangeID
			}
		}
		out.Disks = append(out.Disks, cd)
	}
	if len(out.Disks) > 0 {
		out.LastChangeID = out.Disks[0].LastChangeID
	}
	return out, nil
}

// latestBackup reads the VM's latest restore point (nil when the
// repository or the VM's backups do not exist yet).
func latestBackup(ctx context.Context, svc *orchestrator.Services, dir, moref string) (*repo.Manifest, error) {
	if orchestrator.IsRemoteRepository(dir) {
		r, err := orchestrator.OpenRepository(ctx, svc, dir)
		if errors.Is(err, repo.ErrNotRepository) || errors.Is(err, fs.ErrNotExist) {
			return nil, nil // no backup yet
		}
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return r.Latest(moref)
	}
	if _, err := os.Stat(filepath.Join(dir, repo.RepoFileName)); errors.Is(err, fs.ErrNotExist) {
		return nil, nil // no backup yet
	}
	r, err := repo.OpenContext(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Latest(moref)
}
