package repo

import (
	"context"
	"path/filepath"
)

// Point is one restore point, as List returns it.
type Point struct {
	VMDir       string `json:"vm_dir"`
	Path        string `json:"path"` // the manifest
	StoredBytes int64  `json:"stored_bytes"`
	*Manifest
}

// ListResult is what List found.
type ListResult struct {
	Points []Point
	// Errors are manifests that cannot be read (each names its file) and
	// VM directories that cannot be listed; the other points are listed.
	Errors []error
}

// List returns the restore points of vm (a VM name, moref, instance UUID
// or directory name; "" for every VM), by VM directory then oldest first.
// Backups being removed by an interrupted prune are not listed.
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
		ms, errs := r.loadManifests(vd)
		res.Errors = append(res.Errors, errs...)
		var images []string
		for _, m := range ms {
			for _, d := range m.Disks {
				images = append(images, filepath.Join(vd.Path, d.Image))
			}
		}
		usage := r.fs.Usage(images...) // one call per VM: remote ones are a round trip
		for _, m := range ms {
			p := Point{VMDir: vd.Name, Path: filepath.Join(vd.Path, m.ID+".json"), Manifest: m}
			for range m.Disks {
				p.StoredBytes += usage[0]
				usage = usage[1:]
			}
			res.Points = append(res.Points, p)
		}
	}
	return res, nil
}
