package repo

import (
	"context"
	"errors"
	"fmt"
)

// ReadPoints takes the read lock of vm's directory (vm: a VM name, moref,
// instance UUID or directory) and returns its restore points, oldest
// first, each with the path of its manifest. Until unlock is called the
// points and their files stay as they are: a prune waits (a backup may
// add a new point meanwhile). A VM with an unfinished prune, a manifest
// that cannot be read or a damaged point (the check every command makes)
// is an error: its files must be put right first. Offsite copies (internal/offsite) read the files this way.
func (r *Repo) ReadPoints(ctx context.Context, vm string) (points []Point, unlock func(), err error) {
	vd, err := r.findVM(vm)
	if err != nil {
		return nil, nil, err
	}
	ix, unlock, err := r.readIndex(ctx, vd)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) ([]Point, func(), error) {
		unlock()
		return nil, nil, err
	}
	if ix.journal != nil || ix.jerr != nil {
		return fail(fmt.Errorf("VM directory %s has an unfinished prune (%s): run 'sendense prune' to finish it first", location(r.fs, vd.Path), journalName))
	}
	if errs := ix.manifestErrors(); len(errs) > 0 {
		return fail(errors.Join(errs...))
	}
	for _, m := range ix.points {
		if err := r.checkPoint(ctx, ix, m, false); err != nil {
			return fail(err)
		}
		points = append(points, Point{VMDir: vd.Name, Path: ix.path(m.ID + ".json"), Manifest: m})
	}
	return points, unlock, nil
}

// VMDirs lists the names of the repository's VM directories.
func (r *Repo) VMDirs() ([]string, error) {
	dirs, err := r.vmDirs()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, vd := range dirs {
		out = append(out, vd.Name)
	}
	return out, nil
}
