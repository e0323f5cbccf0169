package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/orchestrator"
)

// StartRequest is the body of POST /api/v1/backup/start.
type StartRequest struct {
	// VMPath is the VM: inventory path (/DC0/vm/web), moref (vm-42) or
	// unique name.
	VMPath string `json:"vm_path"`
	// BackupType is full, incremental or auto (default): auto and
	// incremental copy only what CBT reports as changed when a usable
	// previous backup exists; when a disk must be full anyway, an
	// incremental job says so in its notices instead of failing.
	BackupType string `json:"backup_type"`
	// Repository is the repository: [repository] path (the default) or an
	// entry of [api] allowed_repositories (authz.go).
	Repository string `json:"repository"`
	// Target (or TargetEndpoint, the product sheet's name) makes the job a
	// replication of a single-disk VM into that NBD target (nbd://,
	// nbd+unix://, ssh://); Targets maps disk keys to targets for VMs
	// with several disks. Each must be in [api] allowed_targets. Mutually
	// exclusive with Repository.
	Target         string            `json:"target"`
	TargetEndpoint string            `json:"target_endpoint"`
	Targets        map[string]string `json:"targets"`
	// Force starts the job outside [performance] backup_window.
	Force bool `json:"force"`
	// Quiesce takes a quiesced snapshot (default [backup] quiesce).
	Quiesce *bool `json:"quiesce"`
	// AllowCrashConsistent falls back to a crash-consistent snapshot when
	// quiescing fails.
	AllowCrashConsistent bool `json:"allow_crash_consistent"`
}

const startFields = `"vm_path" (required), "backup_type" (full, incremental or auto), "repository", "target", "target_endpoint", "targets", "force", "quiesce", "allow_crash_consistent"`

// StartResponse is the answer of POST /api/v1/backup/start (202).
type StartResponse struct {
	JobID    string `json:"job_id"`
	State    State  `json:"state"`
	VMPath   string `json:"vm_path"`
	Progress string `json:"progress"` // URL path of the job's progress
}

// newJob validates a start request into a job (not yet queued).
func (s *Server) newJob(ctx context.Context, req *StartRequest) (*job, *apiError) {
	if strings.TrimSpace(req.VMPath) == "" {
		return nil, errorf(http.StatusBadRequest, `missing field "vm_path"`, "give the VM's inventory path (/DC0/vm/web), moref (vm-42) or name")
	}
	targets, aerr := replicationTargets(req)
	if aerr != nil {
		return nil, aerr
	}
	for key, uri := range targets {
		field := "targets"
		if key == "" {
			field = "target"
		}
		if aerr := s.authz.target(s.cfg, uri, field); aerr != nil {
			return nil, aerr
		}
	}
	typ := req.BackupType
	switch typ {
	case "":
		typ = TypeAuto
	case TypeFull, TypeIncremental, TypeAuto:
	default:
		return nil, errorf(http.StatusBadRequest, `invalid field "backup_type"`, "backup_type %q is not full, incremental or auto", req.BackupType)
	}
	if targets != nil {
		return s.newReplicationJob(ctx, req, typ, targets)
	}
	dir := req.Repository
	switch {
	case dir == "" && s.cfg.Repository.Path == "":
		return nil, errorf(http.StatusBadRequest, `missing field "repository"`, "give the repository directory: the agent has no [repository] path")
	case dir == "":
		dir = s.cfg.Repository.Path
	default:
		if aerr := s.authz.repository(s.cfg, dir, `invalid field "repository"`); aerr != nil {
			return nil, aerr
		}
	}
	if !orchestrator.IsRemoteRepository(dir) {
		dir = filepath.Clean(dir)
		if aerr := checkRepoDir(dir); aerr != nil {
			return nil, aerr
		}
	}
	j, aerr := s.jobFor(ctx, req, KindBackup, typ)
	if aerr != nil {
		return nil, aerr
	}
	j.Repo = dir
	return j, nil
}

// jobFor makes a queued job of kind for the request's VM.
func (s *Server) jobFor(ctx context.Context, req *StartRequest, kind, typ string) (*job, *apiError) {
	quiesce := s.cfg.Backup.Quiesce
	if req.Quiesce != nil {
		quiesce = *req.Quiesce
	}
	_, vm, aerr := s.findVM(ctx, req.VMPath)
	if aerr != nil {
		return nil, aerr
	}
	if vm.Path == "" && strings.HasPrefix(req.VMPath, "/") {
		vm.Path = req.VMPath
	}
	now := s.now()
	return &job{Job: Job{
		ID: newJobID(now), Kind: kind, VMPath: req.VMPath, VM: *vm, Type: typ,
		Force: req.Force, Quiesce: quiesce, AllowCrashConsistent: req.AllowCrashConsistent,
		State: StateQueued, Phase: phaseQueued, Created: now,
	}}, nil
}

func (s *Server) handleStart(w http.ResponseWriter, r *http.Request) {
	var req StartRequest
	if aerr := decodeJSON(w, r, &req, startFields); aerr != nil {
		writeError(w, aerr)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), vcenterTimeout)
	defer cancel()
	j, aerr := s.newJob(ctx, &req)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := s.sched.add(j); err != nil {
		var busy errBusy
		switch {
		case errors.As(err, &busy):
			writeError(w, errorf(http.StatusConflict, "a job is already active for VM "+j.VM.String(),
				"job %s is queued or running for this VM; wait for it or cancel it with DELETE /api/v1/backup/%s", busy.id, busy.id))
		case errors.Is(err, errStopping):
			writeError(w, errorf(http.StatusServiceUnavailable, "shutting down", "the agent is shutting down: start the job again once it is back"))
		default:
			writeError(w, errorf(http.StatusInternalServerError, "cannot record the job", "%v", err))
		}
		return
	}
	progress := "/api/v1/backup/" + j.ID + "/progress"
	w.Header().Set("Location", "/api/v1/backup/"+j.ID)
	writeJSON(w, http.StatusAccepted, StartResponse{JobID: j.ID, State: StateQueued, VMPath: j.VMPath, Progress: progress})
}

// lookupJob finds the job of a request's {job_id}.
func (s *Server) lookupJob(r *http.Request) (*job, *apiError) {
	id := r.PathValue("job_id")
	var j *job
	if validJobID(id) {
		j = s.sched.get(id)
	}
	if j == nil {
		return nil, errorf(http.StatusNotFound, "job not found: "+id, "no job %q; GET /api/v1/backup lists the jobs (the history keeps the last %d finished ones)", id, s.history)
	}
	return j, nil
}

func (s *Server) jobView(j *job, withReport bool) JobView {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.view(s.now(), withReport)
}

func (s *Server) handleProgress(w http.ResponseWriter, r *http.Request) {
	j, aerr := s.lookupJob(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	writeJSON(w, http.StatusOK, s.jobView(j, false))
}

func (s *Server) handleJob(w http.ResponseWriter, r *http.Request) {
	j, aerr := s.lookupJob(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	writeJSON(w, http.StatusOK, s.jobView(j, true))
}

// JobList is the answer of GET /api/v1/backup.
type JobList struct {
	Jobs []JobView `json:"jobs"`
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state, vm := q.Get("state"), q.Get("vm")
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, errorf(http.StatusBadRequest, `invalid parameter "limit"`, "limit must be a positive number, not %q", v))
			return
		}
		limit = n
	}
	if state != "" && state != "active" {
		switch State(state) {
		case StateQueued, StateWaiting, StateRunning, StateSucceeded, StateFailed, StateCanceled:
		default:
			writeError(w, errorf(http.StatusBadRequest, `invalid parameter "state"`, "state %q is not queued, waiting_for_window, running, succeeded, failed, canceled or active", state))
			return
		}
	}
	out := JobList{Jobs: []JobView{}}
	now := s.now()
	for _, j := range s.sched.list() {
		if len(out.Jobs) >= limit {
			break
		}
		j.mu.Lock()
		match := (state == "" || string(j.State) == state || state == "active" && j.State.Active()) &&
			(vm == "" || vm == j.VM.Moref || vm == j.VM.Name || vm == j.VM.Path || vm == j.VMPath)
		if match {
			v := j.view(now, false)
			v.Disks = nil
			out.Jobs = append(out.Jobs, v)
		}
		j.mu.Unlock()
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("job_id")
	if !validJobID(id) {
		_, aerr := s.lookupJob(r)
		writeError(w, aerr)
		return
	}
	j, code, err := s.sched.cancel(id)
	switch {
	case code == http.StatusNotFound:
		_, aerr := s.lookupJob(r)
		writeError(w, aerr)
	case err != nil:
		writeError(w, errorf(code, "job already ended", "%v", err))
	default:
		writeJSON(w, code, s.jobView(j, false))
	}
}

// checkRepoLocation checks a repository location given to the API (what
// names the field or parameter in errors): ssh://[user@]host[:port]/path
// on the control plane, or an absolute directory here.
func checkRepoLocation(loc, what string) *apiError {
	if orchestrator.IsRemoteRepository(loc) {
		if _, err := orchestrator.ParseRepositoryURL(loc); err != nil {
			return errorf(http.StatusBadRequest, what, "%v", err)
		}
		return nil
	}
	if !filepath.IsAbs(loc) {
		return errorf(http.StatusBadRequest, what, "the repository must be an absolute path or ssh://[user@]host[:port]/path, not %q", loc)
	}
	return nil
}

// checkRepoDir refuses, before queueing, a repository directory a backup
// could not use: a file, or a non-empty directory (dot-files count) that
// is not a repository. A missing or empty directory becomes a new
// repository (checked again when the job runs).
func checkRepoDir(dir string) *apiError {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return errorf(http.StatusBadRequest, `invalid field "repository"`, "%v", err)
	case !st.IsDir():
		return errorf(http.StatusBadRequest, `invalid field "repository"`, "%s is not a directory", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, repo.RepoFileName)); err == nil {
		return nil
	}
	if entries, err := os.ReadDir(dir); err == nil && orchestrator.NotEmpty(entries) != "" {
		return errorf(http.StatusBadRequest, `invalid field "repository"`, "%s is not empty (it holds %s) and is not a sendense repository (it has no %s): the API creates repositories only in missing or empty directories", dir, orchestrator.NotEmpty(entries), repo.RepoFileName)
	}
	return nil
}

// replicationTargets returns the targets of a replication request (nil
// for a backup), checked.
func replicationTargets(req *StartRequest) (map[string]string, *apiError) {
	one := req.Target
	field := "target"
	if one == "" {
		one, field = req.TargetEndpoint, "target_endpoint"
	}
	switch {
	case one == "" && len(req.Targets) == 0:
		return nil, nil
	case req.Repository != "":
		return nil, errorf(http.StatusBadRequest, `invalid field "repository"`, "a job backs up into a repository or replicates into targets, not both")
	case one != "" && len(req.Targets) > 0:
		return nil, errorf(http.StatusBadRequest, `invalid field "targets"`, "give %q (a single-disk VM) or \"targets\" (by disk key), not both", field)
	}
	targets := map[string]string{}
	if one != "" {
		targets[""] = one
	}
	for key, uri := range req.Targets {
		if _, err := strconv.ParseInt(key, 10, 32); err != nil {
			return nil, errorf(http.StatusBadRequest, `invalid field "targets"`, "key %q is not a disk device key such as \"2000\"", key)
		}
		targets[key] = uri
	}
	for key, uri := range targets {
		if _, err := orchestrator.ParseTargetURI(uri); err != nil {
			f := field
			if key != "" {
				f = "targets"
			}
			return nil, errorf(http.StatusBadRequest, fmt.Sprintf("invalid field %q", f), "%v", err)
		}
	}
	return targets, nil
}

// newReplicationJob makes a replication job.
func (s *Server) newReplicationJob(ctx context.Context, req *StartRequest, typ string, targets map[string]string) (*job, *apiError) {
	j, aerr := s.jobFor(ctx, req, KindReplicate, typ)
	if aerr != nil {
		return nil, aerr
	}
	j.Targets = targets
	return j, nil
}
