package repo

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
)

// Prune journal (REPO/<vm-dir>/prune-journal.json). A prune never changes
// an image in place; it writes new files, then switches to them:
//
//	merging    each kept backup disk whose backing file belongs to a
//	           removed backup is written anew, standalone, as
//	           .<image>.merging (qemu-img convert of its chain, opened
//	           through the manifests' names), checked against the
//	           manifests, and the backup's new manifest as <id>.json.new.
//	           Nothing a restore reads has changed: an interruption or a
//	           failure rolls back (those files are removed).
//	switching  the point of no return, written once every new file is
//	           complete and fsynced: each .<image>.merging is renamed onto
//	           its image, each <id>.json.new onto <id>.json, the removed
//	           backups' manifests and images are deleted, then the journal.
//	           Only renames and removals, each idempotent: an interruption
//	           rolls forward.
//
// Every point restorable before a prune restores at every instant: while
// merging, all of them (nothing changed); while switching, the kept ones
// (a disk whose .merging file was renamed reads the same content without
// a backing file, and its record is taken from <id>.json.new; the others
// keep their old record — see resolveSwitching).
const (
	journalName    = "prune-journal.json"
	journalFormat  = "sendense-prune-journal"
	journalVersion = 2
	phaseMerging   = "merging"
	phaseSwitching = "switching"
	newSuffix      = ".json.new"
	mergingSuffix  = ".merging"
	droppedSuffix  = ".json.dropped" // written by sendense before 0.2 (journal version 1)
)

type journal struct {
	Format  string         `json:"format"`
	Version int            `json:"version"`
	Phase   string         `json:"phase"`
	Drop    []string       `json:"drop"`             // backups removed
	Merges  []journalMerge `json:"merges,omitempty"` // kept backup disks rewritten standalone
	Delete  []string       `json:"delete,omitempty"` // images of the removed backups
}

// journalMerge is one kept backup's disk whose image is replaced by a
// standalone one.
type journalMerge struct {
	Backup string `json:"backup"`
	Disk   int32  `json:"disk"`
}

// image is the kept backup's image of the disk.
func (m journalMerge) image() string { return ImageName(m.Backup, m.Disk) }

// mergingName is the temporary name of the standalone image written for
// image: ".<image>.merging".
func mergingName(image string) string { return "." + image + mergingSuffix }

// successors are the kept backups the journal rewrites, sorted.
func (j *journal) successors() []string {
	var out []string
	for _, m := range j.Merges {
		if !slices.Contains(out, m.Backup) {
			out = append(out, m.Backup)
		}
	}
	slices.SortFunc(out, compareIDs)
	return out
}

// mergesOf are the merges of backup id.
func (j *journal) mergesOf(id string) []journalMerge {
	var out []journalMerge
	for _, m := range j.Merges {
		if m.Backup == id {
			out = append(out, m)
		}
	}
	return out
}

// validate checks the journal field by field: every name must follow the
// repository's grammar and belong to this VM directory's backups as the
// journal describes them; anything else is refused and nothing is done.
func (j *journal) validate() error {
	switch {
	case j.Format != journalFormat:
		return fmt.Errorf("format %q is not %q", j.Format, journalFormat)
	case j.Version == 1:
		return errors.New("it was written by an older sendense (journal version 1), whose interrupted prune this one cannot finish: finish it with that version, or move the journal away and check the VM with 'sendense verify'")
	case j.Version != journalVersion:
		return fmt.Errorf("version %d is not %d (a newer sendense? upgrade)", j.Version, journalVersion)
	case j.Phase != phaseMerging && j.Phase != phaseSwitching:
		return fmt.Errorf("phase %q is neither %q nor %q", j.Phase, phaseMerging, phaseSwitching)
	case len(j.Drop) == 0:
		return errors.New("it removes no backup")
	}
	drop := map[string]bool{}
	for _, id := range j.Drop {
		if !validID(id) {
			return fmt.Errorf("drop: %q is not a backup id", id)
		}
		if drop[id] {
			return fmt.Errorf("drop: %s is listed twice", id)
		}
		drop[id] = true
	}
	seen := map[journalMerge]bool{}
	for _, m := range j.Merges {
		switch {
		case !validID(m.Backup):
			return fmt.Errorf("merges: %q is not a backup id", m.Backup)
		case drop[m.Backup]:
			return fmt.Errorf("merges: backup %s is both removed and kept", m.Backup)
		case seen[m]:
			return fmt.Errorf("merges: disk %d of backup %s is listed twice", m.Disk, m.Backup)
		}
		seen[m] = true
	}
	deleted := map[string]bool{}
	for _, name := range j.Delete {
		id, _, ok := parseImageName(name)
		switch {
		case !ok:
			return fmt.Errorf("delete: %q is not an image name (<id>-disk<key>.qcow2)", name)
		case !drop[id]:
			return fmt.Errorf("delete: %s is not an image of a removed backup", name)
		case deleted[name]:
			return fmt.Errorf("delete: %s is listed twice", name)
		}
		deleted[name] = true
	}
	return nil
}

// JournalError is a prune journal that cannot be used: nothing it names
// is touched.
type JournalError struct {
	Path string
	Err  error
}

func (e *JournalError) Error() string {
	return fmt.Sprintf("prune journal %s is not valid: %v; nothing it names was touched (see docs/restore-verify-prune.md, \"Crash safety\")", e.Path, e.Err)
}

func (e *JournalError) Unwrap() error { return e.Err }

// readJournal reads and validates dir's prune journal; none is (nil, nil).
func (r *Repo) readJournal(dir string) (*journal, error) {
	path := filepath.Join(dir, journalName)
	b, err := r.fs.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if b, err = r.unseal(b, journalAD); err != nil {
		return nil, &JournalError{path, err}
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, &JournalError{path, fmt.Errorf("not valid JSON: %w", err)}
	}
	if err := j.validate(); err != nil {
		return nil, &JournalError{path, err}
	}
	return &j, nil
}

// writeJournal replaces dir's journal atomically.
func (r *Repo) writeJournal(dir string, j *journal) error {
	b, _ := json.MarshalIndent(j, "", "  ")
	if err := r.writeMeta(filepath.Join(dir, journalName), journalAD, append(b, '\n')); err != nil {
		return fmt.Errorf("writing the prune journal: %w", err)
	}
	return nil
}
