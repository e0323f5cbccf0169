// Package repo is the backup repository (docs/repository.md): one
// directory per VM, one qcow2 image per disk per backup (a full is
// standalone, an incremental has the previous image of that disk as its
// backing file), and a JSON manifest per backup, written atomically once
// every image is flushed. It lists, restores, verifies and prunes restore
// points.
//
//	REPO/sendense-repository.json              {"format":"sendense-repository","version":1,"created":…}
//	REPO/<vm-dir>/<backup-id>.json             one manifest per backup (restore point)
//	REPO/<vm-dir>/<backup-id>-disk<key>.qcow2  one image per disk per backup
//	REPO/<vm-dir>/state.json                   per-VM state the next backup reads
//	REPO/<vm-dir>/lock, read.lock              lock files (flock)
//	REPO/<vm-dir>/prune-journal.json           only while a prune runs or was interrupted
//
// A backup calls Begin, creates and fills Pending.ImagePath(key) for every
// disk, then Pending.Commit (or Pending.Abort).
//
// Every file operation stays inside the repository's directory
// (root.go), every name read from a file is checked against the
// repository's grammar before it is used (manifest.go, journal.go,
// state.go), and every command checks the images it relies on, through
// the manifests, before it acts (check.go).
package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sendense/capture/internal/diskdigest"
	"github.com/sendense/capture/internal/qemu"
)

// Repository file (the marker that a directory is a repository).
const (
	RepoFileName = "sendense-repository.json"
	RepoFormat   = "sendense-repository"
	RepoVersion  = 1
	stateName    = "state.json"
)

// Errors callers may test with errors.Is.
var (
	ErrNotRepository = errors.New("not a sendense repository")
	ErrNoBackup      = errors.New("no backup")
	ErrNoVM          = errors.New("no such VM in the repository")
)

// Repo is an open repository.
type Repo struct {
	// Dir is the repository's absolute path (on the machine of its FS).
	Dir string
	// Tools runs qemu-img and qemu-nbd where the repository is (default
	// qemu.Default, for a repository on this machine).
	Tools *qemu.Tools

	fs   *confinedFS
	now  func() time.Time
	hook func(step string) error // tests: fault injection between steps

	keys *keys       // encrypted repositories (crypt.go)
	enc  *Encryption // what sendense-repository.json says
	// digests is the function of chunk and disk digests (nil: SHA-256).
	digests *diskdigest.Hash
}

type repoFile struct {
	Format     string      `json:"format"`
	Version    int         `json:"version"` // 1, or 2: encrypted
	Created    time.Time   `json:"created"`
	Encryption *Encryption `json:"encryption,omitempty"` // version 2 (crypt.go)
}

func newRepo(fsys FS, tools *qemu.Tools, dir string) (*Repo, error) {
	if tools == nil {
		tools = qemu.Default
	}
	c, err := newConfined(fsys, dir)
	if err != nil {
		return nil, err
	}
	return &Repo{Dir: dir, Tools: tools, fs: c, now: time.Now}, nil
}

// Qemu returns the tools that run where the repository is: create and
// serve its images with them.
func (r *Repo) Qemu() *qemu.Tools { return r.Tools }

// FS returns the file system the repository lives on.
func (r *Repo) FS() FS { return r.fs }

// Local says whether the repository is on this machine.
func (r *Repo) Local() bool { return r.fs.Name() == "" }

// Location names the repository: its directory, prefixed with the
// machine for a remote one (ssh://user@host:port/dir).
func (r *Repo) Location() string { return location(r.fs, r.Dir) }

func location(fsys FS, dir string) string { return fsys.Name() + dir }

// Close releases what the repository's file system holds (a remote
// one's sessions); the locks of pending operations are released by them.
func (r *Repo) Close() error {
	r.fs.close()
	if c, ok := r.fs.FS.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Init creates a repository in dir on this machine (InitFS).
func Init(dir string) (*Repo, error) { return InitFS(Local, qemu.Default, dir) }

// InitFS creates a repository in dir of fsys, whose images tools create
// and serve; dir must not exist or be empty. A directory that is already
// a repository, or that holds other files, is refused.
func InitFS(fsys FS, tools *qemu.Tools, dir string) (*Repo, error) {
	return InitEncryptedFS(fsys, tools, dir, nil)
}

// InitEncryptedFS is InitFS creating an encrypted repository (crypt.go)
// whose first key slot opens with passphrase; a nil passphrase creates a
// plain repository.
func InitEncryptedFS(fsys FS, tools *qemu.Tools, dir string, passphrase []byte) (*Repo, error) {
	var enc *Encryption
	var master []byte
	if passphrase != nil {
		var err error
		if enc, master, err = newEncryption(passphrase); err != nil {
			return nil, fmt.Errorf("creating an encrypted repository: %w", err)
		}
	}
	abs, err := fsys.Abs(dir)
	if err != nil {
		return nil, err
	}
	where := location(fsys, abs)
	entries, err := fsys.ReadDir(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := fsys.MkdirAll(abs, 0o700); err != nil {
			if readOnly(err) {
				return nil, &ReadOnlyError{Where: where, Err: err}
			}
			return nil, fmt.Errorf("creating repository %s: %w", where, err)
		}
	case err != nil:
		return nil, fmt.Errorf("repository %s: %w", where, err)
	case existsIn(fsys, filepath.Join(abs, RepoFileName)):
		return nil, fmt.Errorf("%s is already a sendense repository", where)
	case !EmptyDir(entries):
		return nil, fmt.Errorf("%s exists, is not empty and is not a sendense repository: use an empty or new directory", where)
	}
	r, err := newRepo(fsys, tools, abs)
	if err != nil {
		return nil, err
	}
	rf := repoFile{RepoFormat, RepoVersion, time.Now().UTC(), enc}
	if enc != nil {
		rf.Version = repoVersionEncrypted
		r.setKeys(newKeys(master, enc.Keys[0].ID), enc)
	}
	b, _ := json.MarshalIndent(rf, "", "  ")
	if err := r.fs.WriteFileAtomic(filepath.Join(abs, RepoFileName), append(b, '\n'), 0o600); err != nil {
		r.Close()
		return nil, fmt.Errorf("creating repository %s: %w", where, err)
	}
	fsys.SyncDir(filepath.Dir(abs))
	return r, nil
}

// EmptyDir reports whether a directory with these entries may become a
// new repository: it holds nothing, or only temporary files (names
// starting with "."), such as another backup's atomic write of
// sendense-repository.json in progress.
func EmptyDir(entries []fs.DirEntry) bool {
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			return false
		}
	}
	return true
}

// missingError says that a repository's directory does not exist; it
// matches fs.ErrNotExist.
type missingError struct{ where string }

func (e *missingError) Error() string {
	return fmt.Sprintf("repository %s does not exist (a backup creates it; check --repo or $SENDENSE_REPOSITORY)", e.where)
}

func (e *missingError) Unwrap() error { return fs.ErrNotExist }

func existsIn(fsys FS, path string) bool {
	_, err := fsys.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// Open opens the repository in dir (OpenContext without cancellation).
func Open(dir string) (*Repo, error) { return OpenContext(context.Background(), dir) }

// OpenContext opens the repository in dir on this machine (OpenFS).
func OpenContext(ctx context.Context, dir string) (*Repo, error) {
	return OpenFS(ctx, Local, qemu.Default, dir)
}

// OpenFS opens the repository in dir of fsys, whose images tools create
// and serve. It finishes any prune that was interrupted (a crash, a
// signal) in a VM directory nobody else is using (rolled back when it had
// not reached its point of no return, else rolled forward); failing that
// it only logs a warning: every point stays restorable meanwhile.
func OpenFS(ctx context.Context, fsys FS, tools *qemu.Tools, dir string) (*Repo, error) {
	abs, err := fsys.Abs(dir)
	if err != nil {
		return nil, err
	}
	where := location(fsys, abs)
	fi, err := fsys.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, &missingError{where}
	case err != nil:
		return nil, fmt.Errorf("repository %s: %w", where, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("repository %s is not a directory", where)
	}
	r, err := newRepo(fsys, tools, abs)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(abs, RepoFileName)
	b, err := r.fs.ReadFile(path)
	if err != nil {
		r.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is %w: it has no %s (check --repo or $SENDENSE_REPOSITORY)", where, ErrNotRepository, RepoFileName)
		}
		return nil, fmt.Errorf("repository %s: %w", where, err)
	}
	var rf repoFile
	if err := json.Unmarshal(b, &rf); err != nil {
		r.Close()
		return nil, fmt.Errorf("%s is corrupt (not valid JSON: %v): restore it from a copy; its content is documented in docs/repository.md", location(fsys, path), err)
	}
	switch {
	case rf.Format != RepoFormat:
		err = fmt.Errorf("%s is %w: %s has format %q, not %q", where, ErrNotRepository, RepoFileName, rf.Format, RepoFormat)
	case rf.Version > repoVersionEncrypted:
		err = fmt.Errorf("repository %s has version %d, newer than this sendense understands (%d): upgrade sendense", where, rf.Version, RepoVersion)
	case rf.Version < 1:
		err = fmt.Errorf("%s is corrupt: version %d", location(fsys, path), rf.Version)
	case (rf.Version == repoVersionEncrypted) != (rf.Encryption != nil):
		err = fmt.Errorf("%s is corrupt: version %d and encryption %v disagree (version 2 is an encrypted repository)", location(fsys, path), rf.Version, rf.Encryption != nil)
	case rf.Encryption != nil:
		err = r.unlock(rf.Encryption)
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	r.recoverAll(ctx)
	return r, nil
}

// OpenOrInit opens the repository in dir on this machine, creating it
// when dir does not exist or is empty (what a backup does).
func OpenOrInit(dir string) (*Repo, error) {
	return OpenOrInitFS(context.Background(), Local, qemu.Default, dir)
}

// OpenOrInitFS is OpenOrInit on fsys with tools.
func OpenOrInitFS(ctx context.Context, fsys FS, tools *qemu.Tools, dir string) (*Repo, error) {
	abs, err := fsys.Abs(dir)
	if err != nil {
		return nil, err
	}
	if entries, err := fsys.ReadDir(abs); errors.Is(err, fs.ErrNotExist) || (err == nil && EmptyDir(entries)) {
		var pass []byte
		if EncryptNew {
			if Passphrase == nil {
				return nil, fmt.Errorf("creating an encrypted repository in %s: no passphrase source", location(fsys, abs))
			}
			if pass, err = Passphrase(location(fsys, abs)); err != nil {
				return nil, fmt.Errorf("creating an encrypted repository in %s: %w", location(fsys, abs), err)
			}
		}
		r, err := InitEncryptedFS(fsys, tools, abs, pass)
		if err == nil || !existsIn(fsys, filepath.Join(abs, RepoFileName)) {
			return r, err
		}
		// Another backup created it meanwhile: open that.
	}
	return OpenFS(ctx, fsys, tools, abs)
}

// vmDir is one VM directory.
type vmDir struct {
	Name string // directory name
	Path string
	VM   VMRef // from state.json, else the newest manifest ("" fields when unknown)
	// Earlier are names the VM had before (state.json).
	Earlier []string
}

// vmDirs lists the VM directories (directories, not links, whose name
// does not start with ".").
func (r *Repo) vmDirs() ([]*vmDir, error) {
	entries, err := r.fs.ReadDir(r.Dir)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", r.Location(), err)
	}
	var out []*vmDir
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		vd := &vmDir{Name: e.Name(), Path: filepath.Join(r.Dir, e.Name())}
		r.identify(vd)
		out = append(out, vd)
	}
	return out, nil
}

// identify finds which VM a directory belongs to.
func (r *Repo) identify(vd *vmDir) {
	if st, err := r.readState(vd.Path); err == nil && st != nil && (st.VM.Moref != "" || st.VM.InstanceUUID != "") {
		vd.VM, vd.Earlier = st.VM, st.EarlierNames
		return
	}
	ids, _ := r.manifestIDs(vd.Path)
	for i := len(ids) - 1; i >= 0; i-- {
		if m, err := r.readManifest(filepath.Join(vd.Path, ids[i]+".json")); err == nil {
			vd.VM = m.VM
			return
		}
	}
}

// safeName makes a VM name usable as a directory name.
func safeName(name string) string {
	var b strings.Builder
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
			b.WriteRune(c)
		default:
			b.WriteByte('_')
		}
	}
	s := strings.TrimLeft(b.String(), ".")
	if len(s) > 100 {
		s = s[:100]
	}
	if s == "" {
		s = "vm"
	}
	return s
}

// findVM returns the directory of the VM named by s: its directory name,
// current name, moref, instance UUID or an earlier name. A name that
// matches several VMs is an error listing them with their morefs.
func (r *Repo) findVM(s string) (*vmDir, error) {
	dirs, err := r.vmDirs()
	if err != nil {
		return nil, err
	}
	var found []*vmDir
	var why []string
	for _, vd := range dirs {
		known := vd.VM != (VMRef{})
		var w string
		switch {
		case vd.VM.Moref == s && s != "":
			w = "moref"
		case vd.VM.InstanceUUID != "" && strings.EqualFold(vd.VM.InstanceUUID, s):
			w = "instance UUID"
		case vd.VM.Name == s:
			w = "name"
		case vd.Name == s || (!known && vd.Name == safeName(s)):
			w = "directory name"
		case slices.Contains(vd.Earlier, s):
			w = "earlier name"
		default:
			continue
		}
		found = append(found, vd)
		why = append(why, w)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: no backups of VM %q in repository %s (see 'sendense list')", ErrNoVM, s, r.Location())
	case 1:
		return found[0], nil
	}
	var names []string
	for i, vd := range found {
		who := vd.VM.Name
		if who == "" {
			who = "unknown VM"
		}
		if vd.VM.Moref != "" {
			who += ", moref " + vd.VM.Moref
		}
		if vd.VM.InstanceUUID != "" {
			who += ", instance UUID " + vd.VM.InstanceUUID
		}
		names = append(names, fmt.Sprintf("directory %s (%s; matches its %s)", vd.Name, who, why[i]))
	}
	return nil, fmt.Errorf("VM %q is ambiguous in repository %s: it matches %d VMs: %s; name the VM by its moref or instance UUID instead",
		s, r.Location(), len(found), strings.Join(names, "; "))
}

// selectVMs returns the directory of vm, or every VM directory for "".
func (r *Repo) selectVMs(vm string) ([]*vmDir, error) {
	if vm == "" {
		return r.vmDirs()
	}
	vd, err := r.findVM(vm)
	if err != nil {
		return nil, err
	}
	return []*vmDir{vd}, nil
}

// dirFor returns the directory of vm, creating it if needed: the one
// already holding that VM (same instance UUID or moref), else the VM name
// made file-system safe, else "<name>-<moref>" when another VM has that.
func (r *Repo) dirFor(vm VMRef) (*vmDir, error) {
	if vm.Moref == "" || vm.Name == "" {
		return nil, fmt.Errorf("the VM needs a moref and a name (got %+v)", vm)
	}
	dirs, err := r.vmDirs()
	if err != nil {
		return nil, err
	}
	byName := map[string]*vmDir{}
	for _, vd := range dirs {
		if vd.VM.same(vm) {
			return vd, nil
		}
		byName[vd.Name] = vd
	}
	for _, name := range []string{safeName(vm.Name), safeName(vm.Name + "-" + vm.Moref)} {
		vd, taken := byName[name]
		if taken && vd.VM != (VMRef{}) {
			continue // another VM's
		}
		path := filepath.Join(r.Dir, name)
		if err := r.fs.MkdirAll(path, 0o700); err != nil {
			return nil, r.asReadOnly(fmt.Errorf("creating VM directory %s: %w", path, err))
		}
		r.fs.SyncDir(r.Dir)
		return &vmDir{Name: name, Path: path, VM: vm}, nil
	}
	return nil, fmt.Errorf("no free directory name for VM %s in %s: both %s and %s belong to other VMs", vm, r.Location(), safeName(vm.Name), safeName(vm.Name+"-"+vm.Moref))
}

// manifestIDs lists the backup ids with a manifest in dir, oldest first.
func (r *Repo) manifestIDs(dir string) ([]string, error) {
	entries, err := r.fs.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && validID(id) && e.Type().IsRegular() {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, compareIDs)
	return ids, nil
}

// Latest returns the latest restore point of vm (a VM name, moref,
// instance UUID or directory name), or nil when it has none (or is not in
// the repository). A corrupt manifest of the VM is an error naming the
// file: it is never skipped.
func (r *Repo) Latest(vm string) (*Manifest, error) {
	vd, err := r.findVM(vm)
	if errors.Is(err, ErrNoVM) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ix, err := r.index(vd)
	if err != nil {
		return nil, err
	}
	if errs := ix.manifestErrors(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	m, err := ix.latest()
	if errors.Is(err, ErrNoBackup) {
		return nil, nil
	}
	return m, err
}

// readLock takes a VM directory's read lock (shared), waiting while a
// prune changes it. On a read-only repository it needs no write access.
func (r *Repo) readLock(ctx context.Context, vd *vmDir) (Lock, error) {
	return r.fs.WaitLock(ctx, filepath.Join(vd.Path, readLockName), false,
		"waiting for a prune of VM "+vd.Name+" to finish")
}

// recoverAll finishes interrupted prunes in VM directories nobody uses.
func (r *Repo) recoverAll(ctx context.Context) {
	dirs, err := r.vmDirs()
	if err != nil {
		return
	}
	for _, vd := range dirs {
		if !r.exists(filepath.Join(vd.Path, journalName)) {
			continue
		}
		wl, err := r.lockWriter(vd.Path, "prune recovery")
		if errors.Is(err, ErrReadOnly) {
			slog.Debug("an interrupted prune is pending in a read-only repository", "vm", vd.Name)
			continue
		}
		if err != nil {
			slog.Warn("an interrupted prune is pending; the next prune or backup of the VM finishes it", "vm", vd.Name, "reason", err)
			continue
		}
		if err := r.recoverLocked(ctx, vd, false); err != nil {
			slog.Warn("could not finish an interrupted prune; every backup it keeps restores meanwhile; run 'sendense prune' again", "vm", vd.Name, "error", err)
		}
		wl.Unlock()
	}
}
