package orchestrator

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/copier"
)

// ReplicateOptions select what a replication does.
type ReplicateOptions struct {
	// Targets maps disk keys to NBD target URIs (--disk KEY=URI).
	Targets map[int32]string
	// Target is the target of a VM with a single disk (--target URI).
	Target string
	// StateFile keeps each target's changeId between runs.
	StateFile            string
	Full                 bool // copy every disk in full, whatever CBT says
	AllowLargerTarget    bool // accept a target larger than its disk
	Quiesce              bool
	AllowCrashConsistent bool
}

// ReplicateReport is the outcome of a replication of one VM.
type ReplicateReport = Report

// TargetResolver turns a target URI into an NBD URI this machine can
// connect to (an ssh:// target becomes a local socket forwarded through
// the tunnel); close releases what it set up.
type TargetResolver interface {
	Resolve(ctx context.Context, uri string) (nbdURI string, close func(), err error)
}

// ParseTargetURI checks a replication target URI: nbd://HOST[:PORT][/EXPORT],
// nbd+unix:///[EXPORT]?socket=PATH, or ssh://[USER@]HOST[:PORT]/SOCKET
// (an NBD server on a unix socket of the SSH server, reached through the
// tunnel).
func ParseTargetURI(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", s, err)
	}
	switch u.Scheme {
	case "nbd", "nbds":
		if u.Host == "" {
			return nil, fmt.Errorf("target %q: nbd:// needs a host, e.g. nbd://host:10809/export", s)
		}
	case "nbd+unix", "nbds+unix":
		if u.Query().Get("socket") == "" {
			return nil, fmt.Errorf("target %q: nbd+unix:// needs ?socket=PATH", s)
		}
	case "ssh":
		if u.Host == "" || u.Path == "" || u.Path == "/" {
			return nil, fmt.Errorf("target %q: ssh:// needs a host and the path of the NBD server's unix socket, e.g. ssh://user@host/run/volume.sock", s)
		}
	default:
		return nil, fmt.Errorf("target %q: unsupported scheme %q (use nbd://, nbd+unix:// or ssh://)", s, u.Scheme)
	}
	return u, nil
}

// replicateJob is one VM's replication in progress.
type replicateJob struct {
	*vmJob
	opt      ReplicateOptions
	resolver TargetResolver
	report   *ReplicateReport
	phases   *phaseLog
}

// Replicate copies every disk of a VM's snapshot into its persistent NBD
// target: in full the first time (or when CBT cannot vouch for the
// changes), then incrementally in place: unchanged regions are skipped,
// changed ones overwritten, changed regions that became zero zeroed. Each
// target's new changeId is recorded in the state file once its data is
// flushed and the snapshot removed.
func Replicate(ctx context.Context, s *Services, vmSpec string, opt ReplicateOptions) (*ReplicateReport, error) {
	started := time.Now()
	if opt.StateFile == "" {
		return nil, fmt.Errorf("no replication state file given")
	}
	ph := newPhaseLog("replication of %s", vmSpec)
	if s.LoginSeconds > 0 {
		ph.add(StepLogin, s.LoginSeconds)
	}
	vj, err := newVMJob(ctx, s, vmSpec, "replicate")
	if err != nil {
		return nil, err
	}
	defer vj.close()
	ph.since(StepFindVM, started)
	j := &replicateJob{vmJob: vj, opt: opt, resolver: sshTargets{s}, phases: ph,
		report: &ReplicateReport{Kind: KindReplicate, VM: vj.vm.Name, Moref: vj.vm.Moref, Started: started, StateFile: opt.StateFile}}
	err = j.run(ctx)
	j.report.Seconds = time.Since(started).Seconds()
	vj.finish(j.report)
	j.report.Phases = ph.get()
	if err != nil {
		return j.report, fmt.Errorf("replication of %s: %w", vj.vm.Name, err)
	}
	return j.report, nil
}

func (j *replicateJob) run(ctx context.Context) error {
	state, err := readReplicationState(j.opt.StateFile)
	if err != nil {
		return err
	}
	ph := j.phases
	if err := ph.time(StepCBTCheck, func() error { return j.ensureCBT(ctx) }); err != nil {
		return err
	}
	if err := ph.time(StepStaleSnapshots, func() error { return j.removeStaleSnapshots(ctx) }); err != nil {
		return err
	}
	t := time.Now()
	snap, quiesced, err := j.createSnapshot(ctx, SnapshotPrefix+"replicate-"+time.Now().UTC().Format("20060102T150405Z"), j.opt.Quiesce, j.opt.AllowCrashConsistent)
	if err != nil {
		return err
	}
	ph.since(StepSnapshot, t)
	snapRemoved := false
	defer func() {
		if !snapRemoved {
			j.cleanupSnapshot(ctx, snap)
		}
	}()
	j.report.Snapshot, j.report.Quiesced = snap, quiesced
	j.rep.Snapshot(j.vm.Name, "", snap)

	t = time.Now()
	disks, err := j.s.Client.Disks(ctx, j.vm, snap)
	if err != nil {
		return err
	}
	targets, err := j.targets(disks)
	if err != nil {
		return err
	}
	plans, err := j.plan(ctx, state, snap, disks, targets)
	if err != nil {
		return err
	}
	ph.since(StepPlan, t)
	t = time.Now()
	reports, err := j.forEachDisk(ctx, plans, func(ctx context.Context, _ int, p *diskPlan) (DiskReport, error) {
		return j.replicateDisk(ctx, snap, p, targets[p.disk.Key])
	})
	j.report.Disks = append(j.report.Disks, reports...)
	if err != nil {
		return err
	}
	ph.since(StepDisks, t)
	// As for backups: the snapshot goes before the changeIds advance.
	if err := ph.time(StepSnapshotRemove, func() error { return j.removeSnapshot(ctx, snap) }); err != nil {
		return err
	}
	snapRemoved = true
	if err := ctx.Err(); err != nil { // interrupted: nothing recorded
		return err
	}
	t = time.Now()
	err = updateReplicationState(ctx, j.opt.StateFile, func(st *ReplicationState) {
		for _, p := range plans {
			d := p.disk
			st.Targets[targets[d.Key]] = &TargetState{VM: j.vm.Name, Moref: j.vm.Moref, DiskKey: d.Key, DiskUUID: d.UUID,
				Capacity: d.Capacity, ChangeID: d.ChangeID, Updated: time.Now().UTC()}
		}
	})
	if err != nil {
		return err
	}
	ph.since(StepState, t)
	j.report.summarise(plans)
	return nil
}

// targets maps every disk of the snapshot to its target URI.
func (j *replicateJob) targets(disks []cbt.Disk) (map[int32]string, error) {
	out := map[int32]string{}
	for _, d := range disks {
		switch {
		case j.opt.Targets[d.Key] != "":
			out[d.Key] = j.opt.Targets[d.Key]
		case j.opt.Target != "" && len(disks) == 1:
			out[d.Key] = j.opt.Target
		default:
			var keys []string
			for _, d := range disks {
				keys = append(keys, fmt.Sprintf("%d (%s, %d bytes)", d.Key, d.Label, d.Capacity))
			}
			return nil, fmt.Errorf("disk %d of VM %s has no target: map every disk with --disk KEY=URI (disks: %s)", d.Key, j.vm.Name, strings.Join(keys, ", "))
		}
	}
	for key := range j.opt.Targets {
		if _, ok := out[key]; !ok {
			return nil, fmt.Errorf("--disk %d=…: VM %s has no disk %d", key, j.vm.Name, key)
		}
	}
	seen := map[string]int32{}
	keys := make([]int32, 0, len(out))
	for k := range out {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool { return keys[a] < keys[b] })
	for _, k := range keys {
		if other, dup := seen[out[k]]; dup {
			return nil, fmt.Errorf("disks %d and %d have the same target %s", other, k, out[k])
		}
		seen[out[k]] = k
	}
	return out, nil
}

// plan decides full or incremental for each disk from its target's state.
func (j *replicateJob) plan(ctx context.Context, state *ReplicationState, snap string, disks []cbt.Disk, targets map[int32]string) ([]*diskPlan, error) {
	var plans []*diskPlan
	for _, d := range disks {
		target := targets[d.Key]
		prev := state.Targets[target]
		p := decide(d, prev.diskState())
		switch {
		case j.opt.Full:
			p.full, p.reason = true, "full copy requested (--full)"
		case prev != nil && prev.Moref != j.vm.Moref:
			p.full, p.reason = true, fmt.Sprintf("target %s held disk %d of VM %s", target, prev.DiskKey, prev.VM)
		case !p.full && prev.ForceFull != "":
			p.full, p.reason = true, prev.ForceFull
		}
		if !p.full {
			if err := j.queryChanges(ctx, snap, p, 0); err != nil {
				if !j.cbtFault(ctx, err) {
					return nil, fmt.Errorf("disk %d (%s): querying changed blocks since %s: %w", d.Key, d.Label, p.base, err)
				}
				_, why := cbt.NeedFull(prev.diskState(), d.State(), err)
				if uerr := updateReplicationState(ctx, j.opt.StateFile, func(st *ReplicationState) {
					if t := st.Targets[target]; t != nil {
						t.ForceFull = why
					}
				}); uerr != nil {
					j.notice("recording that the next replication of disk %d must be full: %v", d.Key, uerr)
				}
				if j.s.Config.CBT.Fault == "fail" {
					return nil, fmt.Errorf("disk %d (%s): querying changed blocks since %s: %w; the next replication of this disk will be full ([cbt] fault = \"fail\", --cbt-fault)", d.Key, d.Label, p.base, err)
				}
				j.fullAfterFault(p, why)
			}
		} else if prev != nil {
			j.notice("disk %d (%s): full copy to %s: %s", d.Key, d.Label, target, p.reason)
		}
		plans = append(plans, p)
	}
	return plans, nil
}

// replicateDisk copies disk p into its target. A full copy writes zeroes
// over zero extents (the target is not known to be empty); an incremental
// skips unchanged regions.
func (j *replicateJob) replicateDisk(ctx context.Context, snap string, p *diskPlan, target string) (DiskReport, error) {
	start := time.Now()
	ph := newPhaseLog("replication of %s disk %d", j.vm.Name, p.disk.Key)
	dstURI, reconnect := target, Reconnector(nil)
	if strings.HasPrefix(target, "ssh://") {
		// Through the tunnel: a dropped connection is resumed on a new one.
		uri, closeFn, err := j.resolver.Resolve(ctx, target)
		if err != nil {
			return DiskReport{}, err
		}
		defer func() { closeFn() }()
		dstURI = uri
		reconnect = func(ctx context.Context) (string, error) {
			closeFn()
			uri, c, err := j.resolver.Resolve(ctx, target)
			if err != nil {
				closeFn = func() {}
				return "", err
			}
			closeFn = c
			return uri, nil
		}
		ph.since(StepTargetOpen, start)
	}
	opts := j.copyOptions(p)
	opts.AllowLargerDestination = j.opt.AllowLargerTarget
	res, err := j.copyDisk(ctx, snap, p, ph, func(src string) (*copier.Result, error) {
		return j.copyResumable(ctx, src, dstURI, opts, reconnect)
	})
	if err != nil {
		return DiskReport{}, fmt.Errorf("to %s: %w", target, err)
	}
	rep := diskReport(p, res, time.Since(start).Seconds())
	rep.Target = target
	rep.Phases = ph.get()
	j.progress(p, PhaseDone, copierProgress(res))
	return rep, nil
}
