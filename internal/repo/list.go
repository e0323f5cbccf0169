package repo

import (
	"context"
	"errors"
)

// Point is one restore point, as List returns it.
type Point struct {
	VMDir       string `json:"vm_dir"`
	Path        string `json:"path"` // the manifest
	StoredBytes int64  `json:"stored_bytes"`
	// Restorable says whether the point passes the repository's check of
	// its chains (check.go, headers only: verify reads the data); Damage
	// says why not.
	Restorable bool   `json:"restorable"`
	Damage     string `json:"damage,omitempty"`
	*Manifest
}

// ListResult is what List found.
type ListResult struct {
	Points []Point
	// Errors are manifests that cannot be read (each names its file), a
	// prune journal that is not valid, and VM directories that cannot be
	// listed; the other points are listed.
	Errors []error
}

// List returns the restore points of vm (a VM name, moref, instance UUID
// or directory name; "" for every VM), by VM directory then oldest first,
// each with whether it can be restored. Backups a prune is removing are
// not listed.
func (r *Repo) List(ctx context.Context, vm string) (*ListResult, error) {
	vds, err := r.selectVMs(vm)
	if err != nil {
		return nil, err
	}
	res := &ListResult{}
	for _, vd := range vds {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := r.listVM(ctx, vd, res); err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil, err
			}
			res.Errors = append(res.Errors, err)
		}
	}
	return res, nil
}

func (r *Repo) listVM(ctx context.Context, vd *vmDir, res *ListResult) error {
	ix, unlock, err := r.readIndex(ctx, vd)
	if err != nil {
		return err
	}
	defer unlock()
	res.Errors = append(res.Errors, ix.manifestErrors()...)
	if ix.jerr != nil {
		res.Errors = append(res.Errors, ix.jerr)
	}
	var images []string
	for _, m := range ix.points {
		for _, d := range m.Disks {
			images = append(images, ix.path(d.Image))
		}
	}
	usage := r.fs.Usage(images...) // one call per VM: remote ones are a round trip
	for _, m := range ix.points {
		p := Point{VMDir: vd.Name, Path: ix.path(m.ID + ".json"), Manifest: m, Restorable: true}
		for range m.Disks {
			p.StoredBytes += usage[0]
			usage = usage[1:]
		}
		if err := r.checkPoint(ctx, ix, m, false); err != nil {
			p.Restorable, p.Damage = false, err.Error()
		}
		res.Points = append(res.Points, p)
	}
	return nil
}
