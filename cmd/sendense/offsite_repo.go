package main

import (
	"context"
	"fmt"
	"os"

	"github.com/sendense/capture/internal/offsite"
	"github.com/sendense/capture/internal/repo"
)

// checkOffsiteRepo checks an s3://NAME/ --repo against the configuration.
func (f *repoDirFlag) checkOffsiteRepo() error {
	name, err := offsite.ParseURL(f.dir)
	if err != nil {
		return usageErrorf("--repo: %v", err)
	}
	if _, err := f.cfg.OffsiteTarget(name); err != nil {
		return usageErrorf("--repo %s: %v", f.dir, err)
	}
	return nil
}

// openFor opens --repo for a command. An s3://NAME/ repository (an
// offsite target) is read from its bucket: what so selects is downloaded
// into a private staging repository (docs/offsite.md), which close
// removes; staged says what came from where.
func (f *repoDirFlag) openFor(ctx context.Context, so offsite.StageOptions) (r *repo.Repo, staged *offsite.Staged, close func(), err error) {
	if !offsite.IsURL(f.dir) {
		r, close, err = f.open(ctx)
		return r, nil, close, err
	}
	name, _ := offsite.ParseURL(f.dir)
	o, err := f.cfg.OffsiteTarget(name)
	if err != nil {
		return nil, nil, nil, usageErrorf("--repo %s: %v", f.dir, err)
	}
	t, err := offsite.Open(ctx, o, os.Getenv)
	if err != nil {
		return nil, nil, nil, err
	}
	if so.In == "" {
		so.In = f.staging
	}
	st, err := t.Stage(ctx, so)
	if err != nil {
		return nil, nil, nil, err
	}
	r, err = repo.OpenContext(ctx, st.Dir)
	if err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	return r, st, func() { r.Close(); st.Close() }, nil
}

// display names a file of a staged repository as the object it came from.
func display(st *offsite.Staged, path string) string {
	if st == nil {
		return path
	}
	return st.Display(path)
}

// openPoint opens --repo and holds restore point backup ("" or
// "latest": the latest) of vm open for reading (repo.OpenPoint): what
// mount and files serve. An s3:// repository's point is staged first.
// close releases both.
func (f *repoDirFlag) openPoint(ctx context.Context, vm, backup string, disks []int32) (p *repo.OpenPoint, close func(), err error) {
	if backup == "latest" {
		backup = ""
	}
	so := offsite.StageOptions{VM: vm, Backup: backup, Latest: backup == "", Images: true}
	r, staged, closeRepo, err := f.openFor(ctx, so)
	if err != nil {
		return nil, nil, err
	}
	if staged != nil {
		if len(staged.Problems) > 0 {
			pr := staged.Problems[0]
			closeRepo()
			return nil, nil, fmt.Errorf("%s: %s: expected %s, actual %s; nothing was read (sendense verify --repo %s shows every damaged object)",
				pr.File, pr.Message, pr.Expected, pr.Actual, f.dir)
		}
		backup = staged.Backup
	}
	p, err = r.OpenPoint(ctx, repo.OpenPointOptions{VM: vm, Backup: backup, Disks: disks})
	if err != nil {
		closeRepo()
		return nil, nil, err
	}
	return p, func() { p.Close(); closeRepo() }, nil
}
