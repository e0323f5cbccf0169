package repo

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
)

// ReadPoints takes the read lock of vm's directory (vm: a VM name, moref,
// instance UUID or directory) and returns its restore points, oldest
// first, each with the path of its manifest. Until unlock is called the
// points and their files stay as they are: a prune waits (a backup may
// add a new point meanwhile). A VM with an unfinished prune, or with a
// manifest that cannot be read, is an error: its files must be put right
// first. Offsite copies (internal/offsite) read the files this way.
func (r *Repo) ReadPoints(ctx context.Context, vm string) (points []Point, unlock func(), err error) {
	vd, err := r.findVM(vm)
	if err != nil {
		return nil, nil, err
	}
	rl, err := r.readLock(ctx, vd)
	if err != nil {
		return nil, nil, err
	}
	if r.exists(filepath.Join(vd.Path, journalName)) {
		rl.Unlock()
		return nil, nil, fmt.Errorf("VM directory %s has an unfinished prune (%s): run 'sendense prune' to finish it first", location(r.fs, vd.Path), journalName)
	}
	ms, errs := r.loadManifests(vd)
	if len(errs) > 0 {
		rl.Unlock()
		return nil, nil, errors.Join(errs...)
	}
	for _, m := range ms {
		points = append(points, Point{VMDir: vd.Name, Path: filepath.Join(vd.Path, m.ID+".json"), Manifest: m})
	}
	return points, rl.Unlock, nil
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
