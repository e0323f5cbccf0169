// Package qemu wraps the QEMU disk tools the repository relies on:
// qemu-img (create, info, map, convert, commit, rebase, check) and
// qemu-nbd (ServeNBD). Every call goes through a Runner, which runs the
// tools on this machine by default (LocalRunner) and can run them
// elsewhere. Failures carry the tool's standard error; a missing tool is a
// *ToolMissingError naming the Debian package (qemu-utils); cancelling the
// context stops the tool.
//
// Images are qcow2 unless said otherwise. A backing file is always stored
// as given: pass a path relative to the image's directory (as the
// repository does) so the chain survives moving the directory.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
)

// Tools runs qemu-img and qemu-nbd through a Runner.
type Tools struct {
	Runner  Runner
	QemuImg string // program name or path; default "qemu-img"
	QemuNBD string // program name or path; default "qemu-nbd"
}

// Default runs the tools found in $PATH on this machine.
var Default = &Tools{Runner: LocalRunner{}}

// New returns Tools that run through r.
func New(r Runner) *Tools { return &Tools{Runner: r} }

func (t *Tools) runner() Runner {
	if t == nil || t.Runner == nil {
		return LocalRunner{}
	}
	return t.Runner
}

func (t *Tools) img() string {
	if t == nil || t.QemuImg == "" {
		return "qemu-img"
	}
	return t.QemuImg
}

func (t *Tools) nbd() string {
	if t == nil || t.QemuNBD == "" {
		return "qemu-nbd"
	}
	return t.QemuNBD
}

// runImg runs qemu-img with args.
func (t *Tools) runImg(ctx context.Context, args ...string) ([]byte, error) {
	out, err := t.runner().Run(ctx, t.img(), args...)
	return out, t.toolError(t.img(), err)
}

// toolError turns "program not found" into a *ToolMissingError naming
// the machine when the runner runs the tools elsewhere.
func (t *Tools) toolError(tool string, err error) error {
	if err != nil && errors.Is(err, exec.ErrNotFound) {
		e := &ToolMissingError{Tool: tool, Err: err}
		if l, ok := t.runner().(Locator); ok {
			e.Where = l.Where()
		}
		return e
	}
	return err
}

// NoBacking returns a filename that makes qemu-img and qemu-nbd open the
// qcow2 image at path alone, as if it had no backing file: only its own
// clusters are visible (depth 0) and everything else reads as zeroes.
// Use it with Format "" (the driver is part of the name).
func NoBacking(path string) string {
	b, _ := json.Marshal(map[string]any{
		"driver":  "qcow2",
		"file":    map[string]string{"driver": "file", "filename": path},
		"backing": nil,
	})
	return "json:" + string(b)
}

// CreateImage creates the qcow2 image path of size bytes. With backing
// (relative to path's directory, or absolute) the image is an overlay of
// that qcow2 image. It refuses to replace an existing file.
func (t *Tools) CreateImage(ctx context.Context, path string, size uint64, backing string) error {
	switch r := t.runner().(type) {
	case LocalRunner:
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("create image %s: the file already exists; remove it first", path)
		}
	case interface {
		Lstat(path string) (os.FileInfo, error)
	}:
		if _, err := r.Lstat(path); err == nil {
			return fmt.Errorf("create image %s: the file already exists; remove it first", path)
		}
	}
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		args = append(args, "-b", backing, "-F", "qcow2")
	}
	args = append(args, path, strconv.FormatUint(size, 10))
	if _, err := t.runImg(ctx, args...); err != nil {
		return fmt.Errorf("create image %s: %w", path, err)
	}
	return nil
}

// ImageInfo is what "qemu-img info --output=json" reports.
type ImageInfo struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	VirtualSize         uint64 `json:"virtual-size"`
	ActualSize          uint64 `json:"actual-size"`
	ClusterSize         uint64 `json:"cluster-size"`
	BackingFilename     string `json:"backing-filename"`      // as stored in the image
	FullBackingFilename string `json:"full-backing-filename"` // resolved
	BackingFormat       string `json:"backing-filename-format"`
	DirtyFlag           bool   `json:"dirty-flag"`
	FormatSpecific      struct {
		Type string `json:"type"`
		Data struct {
			Compat  string `json:"compat"`
			Corrupt bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

// Corrupt says whether qcow2 marked the image corrupt.
func (i *ImageInfo) Corrupt() bool { return i.FormatSpecific.Data.Corrupt }

// Info describes the image at path without opening its backing file (so
// it works when that one is missing).
func (t *Tools) Info(ctx context.Context, path string) (*ImageInfo, error) {
	out, err := t.runImg(ctx, "info", "--output=json", path)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("image %s: cannot parse qemu-img info: %w", path, err)
	}
	return &info, nil
}

// InfoChain describes the image at path and each image of its backing
// chain, top first. It fails, naming the file, when a backing file is
// missing.
func (t *Tools) InfoChain(ctx context.Context, path string) ([]ImageInfo, error) {
	out, err := t.runImg(ctx, "info", "--output=json", "--backing-chain", path)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	var infos []ImageInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("image %s: cannot parse qemu-img info: %w", path, err)
	}
	return infos, nil
}

// MapEntry is one extent of "qemu-img map --output=json".
type MapEntry struct {
	Start   uint64  `json:"start"`
	Length  uint64  `json:"length"`
	Depth   int     `json:"depth"`   // 0: the image itself, 1: its backing file, …
	Present bool    `json:"present"` // allocated in some layer (else: read from nowhere)
	Zero    bool    `json:"zero"`    // reads as zeroes
	Data    bool    `json:"data"`    // has data (not a zero cluster)
	Offset  *uint64 `json:"offset,omitempty"`
}

// End is the first byte after the entry.
func (e MapEntry) End() uint64 { return e.Start + e.Length }

// MapOptions select what Map opens.
type MapOptions struct {
	// Format of the image: "" probes (needed for NoBacking names).
	Format string
	// NoBacking maps the image's own allocation only (see NoBacking):
	// every entry has depth 0, and Present means allocated in the image.
	NoBacking bool
}

// Map returns the allocation map of the image at path, in order, covering
// its whole virtual size.
func (t *Tools) Map(ctx context.Context, path string, opts MapOptions) ([]MapEntry, error) {
	args := []string{"map", "--output=json"}
	name := path
	if opts.NoBacking {
		name = NoBacking(path)
	} else if opts.Format != "" {
		args = append(args, "-f", opts.Format)
	}
	out, err := t.runImg(ctx, append(args, name)...)
	if err != nil {
		return nil, fmt.Errorf("map image %s: %w", path, err)
	}
	var m []MapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("map image %s: cannot parse qemu-img map: %w", path, err)
	}
	return m, nil
}

// ConvertOptions control Convert.
type ConvertOptions struct {
	SrcFormat string // "" probes; the repository passes "qcow2"
	OutFormat string // "raw" or "qcow2" (default "raw")
	// Coroutines is qemu-img's -m (parallel requests; 0: qemu's default).
	Coroutines int
	// OutOfOrder allows out-of-order writes (-W), faster for raw outputs.
	OutOfOrder bool
}

// Convert writes the content of src (following its backing chain) to the
// new standalone image dst. Zeroes are not written: raw outputs are sparse.
func (t *Tools) Convert(ctx context.Context, src, dst string, opts ConvertOptions) error {
	out := opts.OutFormat
	if out == "" {
		out = "raw"
	}
	args := []string{"convert", "-q"}
	if opts.SrcFormat != "" {
		args = append(args, "-f", opts.SrcFormat)
	}
	args = append(args, "-O", out)
	if opts.Coroutines > 0 {
		args = append(args, "-m", strconv.Itoa(opts.Coroutines))
	}
	if opts.OutOfOrder {
		args = append(args, "-W")
	}
	args = append(args, src, dst)
	if _, err := t.runImg(ctx, args...); err != nil {
		return fmt.Errorf("convert %s to %s: %w", src, dst, err)
	}
	return nil
}

// Commit writes the clusters of top (and of any image between top and
// base) into base, which must be in top's backing chain ("" = top's
// direct backing file). top and the images between are left unchanged
// (qemu-img commit -d), so they keep reading the same content while and
// after base changes.
func (t *Tools) Commit(ctx context.Context, top, base string) error {
	args := []string{"commit", "-q", "-f", "qcow2", "-d"}
	if base != "" {
		args = append(args, "-b", base)
	}
	if _, err := t.runImg(ctx, append(args, top)...); err != nil {
		return fmt.Errorf("commit %s into %s: %w", top, orBacking(base), err)
	}
	return nil
}

func orBacking(base string) string {
	if base == "" {
		return "its backing file"
	}
	return base
}

// Rebase changes the backing file of image to backing ("" = none: the
// image becomes standalone). The safe mode (unsafe false) copies into
// image whatever differs between the old and the new backing, so its
// content stays the same; unsafe only rewrites the name (-u), for when the
// new backing file has the same content under another name.
func (t *Tools) Rebase(ctx context.Context, image, backing string, unsafe bool) error {
	args := []string{"rebase", "-q", "-f", "qcow2"}
	if unsafe {
		args = append(args, "-u")
	}
	args = append(args, "-b", backing)
	if backing != "" {
		args = append(args, "-F", "qcow2")
	}
	if _, err := t.runImg(ctx, append(args, image)...); err != nil {
		return fmt.Errorf("rebase %s onto %q: %w", image, backing, err)
	}
	return nil
}

// CheckResult is what "qemu-img check --output=json" reports.
type CheckResult struct {
	Filename          string `json:"filename"`
	Format            string `json:"format"`
	CheckErrors       int    `json:"check-errors"`
	Corruptions       int    `json:"corruptions"`
	Leaks             int    `json:"leaks"`
	AllocatedClusters uint64 `json:"allocated-clusters"`
	TotalClusters     uint64 `json:"total-clusters"`
	ImageEndOffset    uint64 `json:"image-end-offset"`
}

// OK says whether the image has neither corruptions nor check errors
// (leaked clusters only waste space).
func (c *CheckResult) OK() bool { return c.CheckErrors == 0 && c.Corruptions == 0 }

// Check checks the qcow2 metadata of the image at path (not its backing
// file). Corruptions and leaks are reported in the result, not as errors;
// an error means the check could not be done.
func (t *Tools) Check(ctx context.Context, path string) (*CheckResult, error) {
	out, err := t.runImg(ctx, "check", "--output=json", "-f", "qcow2", path)
	var ee *ExitError
	if err != nil && !(errors.As(err, &ee) && (ee.Code == 2 || ee.Code == 3)) {
		return nil, fmt.Errorf("check image %s: %w", path, err)
	}
	var res CheckResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		if err != nil {
			return nil, fmt.Errorf("check image %s: %w", path, err)
		}
		return nil, fmt.Errorf("check image %s: cannot parse qemu-img check: %w", path, jerr)
	}
	return &res, nil
}

// Package-level shortcuts running through Default.

// CreateImage runs Default.CreateImage.
func CreateImage(ctx context.Context, path string, size uint64, backing string) error {
	return Default.CreateImage(ctx, path, size, backing)
}

// Info runs Default.Info.
func Info(ctx context.Context, path string) (*ImageInfo, error) { return Default.Info(ctx, path) }

// Map runs Default.Map.
func Map(ctx context.Context, path string, opts MapOptions) ([]MapEntry, error) {
	return Default.Map(ctx, path, opts)
}

// Convert runs Default.Convert.
func Convert(ctx context.Context, src, dst string, opts ConvertOptions) error {
	return Default.Convert(ctx, src, dst, opts)
}

// Commit runs Default.Commit.
func Commit(ctx context.Context, top, base string) error { return Default.Commit(ctx, top, base) }

// Rebase runs Default.Rebase.
func Rebase(ctx context.Context, image, backing string, unsafe bool) error {
	return Default.Rebase(ctx, image, backing, unsafe)
}

// Check runs Default.Check.
func Check(ctx context.Context, path string) (*CheckResult, error) { return Default.Check(ctx, path) }

// ServeNBD runs Default.ServeNBD.
func ServeNBD(ctx context.Context, image string, opts ServeOptions) (*Server, error) {
	return Default.ServeNBD(ctx, image, opts)
}
