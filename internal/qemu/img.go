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
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// Tools runs qemu-img and qemu-nbd through a Runner.
type Tools struct {
	Runner  Runner
	QemuImg string // program name or path; default "qemu-img"
	QemuNBD string // program name or path; default "qemu-nbd"
	// Secret, when set, gives the LUKS secret of the encrypted image at
	// path: every image these tools create is encrypted with it, and
	// every image they open is opened with it (secret.go). The secrets
	// reach the tools through a SecretRunner, never argv or environment.
	Secret func(path string) []byte
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

// runImg runs qemu-img with args (a sub-command first), and the secret
// objects of s.
func (t *Tools) runImg(ctx context.Context, s *secrets, args ...string) ([]byte, error) {
	if s == nil {
		s = t.secrets()
	}
	out, err := s.run(ctx, t.img(), withObjects(s, args)...)
	return out, t.toolError(t.img(), err)
}

// withObjects puts the secret objects of s after qemu-img's sub-command.
func withObjects(s *secrets, args []string) []string {
	objs := s.args()
	if len(objs) == 0 || len(args) == 0 {
		return args
	}
	return append(append([]string{args[0]}, objs...), args[1:]...)
}

// runImgPrivate runs qemu-img with args under umask 077 (see
// privateUmask): the files it creates are 0600.
func (t *Tools) runImgPrivate(ctx context.Context, s *secrets, args ...string) ([]byte, error) {
	if s == nil {
		s = t.secrets()
	}
	out, err := s.run(ctx, "sh", append([]string{"-c", privateUmask, t.img()}, withObjects(s, args)...)...)
	for try := 0; try < 3 && s.key != nil && luksBenchmarkFailed(err); try++ {
		out, err = s.run(ctx, "sh", append([]string{"-c", privateUmask, t.img()}, withObjects(s, args)...)...)
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		// Name qemu-img, not the shell; 127 is the shell's "not found".
		if ee.Code == 127 && strings.Contains(ee.Stderr, "not found") {
			return out, t.toolError(t.img(), &notFound{t.img()})
		}
		ee.Tool, ee.Args = t.img(), args
	}
	return out, t.toolError(t.img(), err)
}

// notFound is a program the shell did not find; it matches
// exec.ErrNotFound.
type notFound struct{ tool string }

func (e *notFound) Error() string { return e.tool + ": not found" }
func (e *notFound) Unwrap() error { return exec.ErrNotFound }

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

// Pinned returns a filename that makes qemu-img and qemu-nbd open the
// qcow2 image at chain[0] with exactly the backing chain chain[1:], each
// opened as qcow2 from that path, the last one without a backing file:
// the names and formats stored in the images' headers are not used, so a
// header cannot make QEMU open another file as a backing file. (An
// external data file is named by the header too: check it with
// ReadHeader first.) Pinned(path) opens the image alone: only its own
// clusters are visible (depth 0), everything else reads as zeroes. Use it
// with Format "" (the driver is part of the name).
func Pinned(chain ...string) string {
	b, _ := json.Marshal(PinnedNode(chain...))
	return "json:" + string(b)
}

// PinnedNode is Pinned's block node (what a qemu-storage-daemon
// --blockdev or a "backing" option takes).
func PinnedNode(chain ...string) map[string]any {
	var node map[string]any // nil: no backing file
	for i := len(chain) - 1; i >= 0; i-- {
		node = map[string]any{
			"driver":  "qcow2",
			"file":    map[string]string{"driver": "file", "filename": chain[i]},
			"backing": node,
		}
	}
	return node
}

// NoBacking is Pinned(path): the image alone.
func NoBacking(path string) string { return Pinned(path) }

// privateUmask runs a qemu-img command that creates a file with umask 077,
// so that the file is created 0600 (images hold the VMs' data), on the
// machine the runner runs on.
const privateUmask = `umask 077 && exec "$0" "$@"`

// CreateImage creates the qcow2 image path of size bytes, mode 0600. With
// backing (relative to path's directory, or absolute) the image is an
// overlay of that qcow2 image. It refuses to replace an existing file.
func (t *Tools) CreateImage(ctx context.Context, path string, size uint64, backing string) error {
	if t.exists(path) {
		return fmt.Errorf("create image %s: the file already exists; remove it first", path)
	}
	if t.Secret != nil {
		if sec := t.Secret(path); sec != nil {
			err := t.createLUKS(path, size, backing, sec)
			if err == nil {
				return nil
			}
			if t.exists(path) { // created meanwhile, by someone else
				return fmt.Errorf("create image %s: %w", path, err)
			}
			slog.Debug("creating the encrypted image with qemu-img", "path", path, "reason", err)
		}
	}
	s := t.secrets()
	args := []string{"create", "-q", "-f", "qcow2"}
	if id := s.of(path); id != "" {
		// -u: the backing file is not opened (it would need its own
		// secret); the repository pins chains when it opens them.
		args = append(args, "-u", "-o", luksCreate+",encrypt.key-secret="+id)
	}
	if backing != "" {
		args = append(args, "-b", backing, "-F", "qcow2")
	}
	args = append(args, path, strconv.FormatUint(size, 10))
	if _, err := t.runImgPrivate(ctx, s, args...); err != nil {
		return fmt.Errorf("create image %s: %w", path, err)
	}
	return nil
}

// exists tells whether something is at path, where the runner runs (false
// when the runner cannot tell).
func (t *Tools) exists(path string) bool {
	switch r := t.runner().(type) {
	case LocalRunner:
		_, err := os.Lstat(path)
		return err == nil
	case interface {
		Lstat(path string) (os.FileInfo, error)
	}:
		_, err := r.Lstat(path)
		return err == nil
	}
	return false
}

// FormatImage makes the existing file path a new, empty qcow2 image of
// size bytes: the file keeps its inode (and so the locks held on it) and
// its mode.
func (t *Tools) FormatImage(ctx context.Context, path string, size uint64) error {
	if _, err := t.runImgPrivate(ctx, nil, "create", "-q", "-f", "qcow2", path, strconv.FormatUint(size, 10)); err != nil {
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
			Compat   string `json:"compat"`
			Corrupt  bool   `json:"corrupt"`
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

// Corrupt says whether qcow2 marked the image corrupt.
func (i *ImageInfo) Corrupt() bool { return i.FormatSpecific.Data.Corrupt }

// DataFile is the external data file QEMU reports ("" for none).
func (i *ImageInfo) DataFile() string { return i.FormatSpecific.Data.DataFile }

// Info describes the qcow2 image at path, opened alone (Pinned): its
// backing file is neither probed nor opened, so it works when that one is
// missing, and BackingFilename is what the header stores.
func (t *Tools) Info(ctx context.Context, path string) (*ImageInfo, error) {
	s := t.secrets()
	out, err := t.runImg(ctx, s, "info", "--output=json", s.pinned(path))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("image %s: cannot parse qemu-img info: %w", path, err)
	}
	return &info, nil
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
	// Format of the image: "" probes (needed for Pinned names).
	Format string
	// NoBacking maps the image's own allocation only (see Pinned): every
	// entry has depth 0, and Present means allocated in the image.
	NoBacking bool
	// Backing pins the image's backing chain (see Pinned): the image is
	// mapped through exactly these files, top first.
	Backing []string
}

// Map returns the allocation map of the image at path, in order, covering
// its whole virtual size.
func (t *Tools) Map(ctx context.Context, path string, opts MapOptions) ([]MapEntry, error) {
	args := []string{"map", "--output=json"}
	name := path
	s := t.secrets()
	switch {
	case opts.NoBacking || opts.Backing != nil:
		name = s.pinned(append([]string{path}, opts.Backing...)...)
	case opts.Format != "":
		args = append(args, "-f", opts.Format)
	}
	out, err := t.runImg(ctx, s, append(args, name)...)
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
	// Backing pins src's backing chain (see Pinned); SrcFormat is then
	// ignored.
	Backing []string
}

// Convert writes the content of src (following its backing chain, or
// opts.Backing) to the new standalone image dst, created 0600. Zeroes are
// not written: raw outputs are sparse.
func (t *Tools) Convert(ctx context.Context, src, dst string, opts ConvertOptions) error {
	out := opts.OutFormat
	if out == "" {
		out = "raw"
	}
	args := []string{"convert", "-q"}
	name := src
	s := t.secrets()
	if opts.Backing != nil {
		src = s.pinned(append([]string{src}, opts.Backing...)...)
	} else if opts.SrcFormat != "" {
		args = append(args, "-f", opts.SrcFormat)
	}
	args = append(args, "-O", out)
	target := dst
	if id := s.of(dst); id != "" && out == "qcow2" {
		if t.createLUKSFor(ctx, name, dst) {
			// Into the image created empty: -n, opened with its secret
			// (on failure it stays, as what qemu-img would leave).
			args = append(args, "-n", "--target-is-zero")
			target = s.pinned(dst)
		} else {
			args = append(args, "-o", luksCreate+",encrypt.key-secret="+id)
		}
	}
	if opts.Coroutines > 0 {
		args = append(args, "-m", strconv.Itoa(opts.Coroutines))
	}
	if opts.OutOfOrder {
		args = append(args, "-W")
	}
	args = append(args, src, target)
	if _, err := t.runImgPrivate(ctx, s, args...); err != nil {
		return fmt.Errorf("convert %s to %s: %w", name, dst, err)
	}
	return nil
}

// createLUKSFor creates dst as an empty encrypted image of src's virtual
// size (createLUKS), when it can: Convert then writes into it rather than
// have qemu-img create it (luks.go).
func (t *Tools) createLUKSFor(ctx context.Context, src, dst string) bool {
	if _, ok := t.runner().(FileCreator); !ok {
		return false
	}
	sec := t.Secret(dst)
	info, err := t.Info(ctx, src)
	if err == nil {
		err = t.createLUKS(dst, info.VirtualSize, "", sec)
	}
	if err != nil {
		slog.Debug("creating the encrypted image with qemu-img", "path", dst, "reason", err)
		return false
	}
	return true
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
	if _, err := t.runImg(ctx, nil, append(args, top)...); err != nil {
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
	if _, err := t.runImg(ctx, nil, append(args, image)...); err != nil {
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
	s := t.secrets() // an encrypted image opens with its secret, pinned alone
	out, err := t.runImg(ctx, s, "check", "--output=json", s.pinned(path))
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
