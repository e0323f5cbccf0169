package repo

import (
	"errors"
	"io/fs"
	"regexp"
	"slices"
	"strings"
)

// Leftover kinds.
const (
	LeftoverImage   = "orphan-image" // the image of a backup that never finished (no manifest)
	LeftoverPartial = "partial"      // a temporary file of an interrupted write or prune
	LeftoverJournal = "prune-pending"
)

// Leftover is a file of a VM directory that no restore point needs:
// verify reports it, prune (and the next backup of the VM) removes it.
// Only files named as sendense names what it creates are ever
// considered.
type Leftover struct {
	VM      string `json:"vm"`
	File    string `json:"file"`
	Kind    string `json:"kind"`
	Bytes   int64  `json:"bytes"`
	Message string `json:"message"`
	path    string
}

// tempPattern is an atomic write's temporary file: ".NAME.tmp-RANDOM".
var tempPattern = regexp.MustCompile(`^\.(.+)\.tmp-[0-9A-Za-z]+$`)

// leftovers lists the leftovers of an indexed VM directory. A directory
// with a pending prune, or whose manifests cannot all be read (which
// images they need is then unknown), has none: nothing is guessed.
func (r *Repo) leftovers(ix *vmIndex) []Leftover {
	if ix.journal != nil || ix.jerr != nil || len(ix.bad) > 0 {
		return nil
	}
	named := map[string]bool{}
	for _, m := range ix.byID {
		for _, d := range m.Disks {
			named[d.Image], named[d.Backing] = true, true
		}
	}
	var out []Leftover
	add := func(name, kind, msg string) {
		p := ix.path(name)
		out = append(out, Leftover{VM: ix.vd.Name, File: p, Kind: kind, Message: msg, path: p})
	}
	for name, e := range ix.names {
		if !e.Type().IsRegular() {
			continue
		}
		if id, _, ok := parseImageName(name); ok {
			if !named[name] && !ix.has(id+".json") {
				add(name, LeftoverImage, "the image of a backup that never finished (it has no manifest)")
			}
			continue
		}
		if sm := tempPattern.FindStringSubmatch(name); sm != nil && ownFile(sm[1]) {
			add(name, LeftoverPartial, "the temporary file of an interrupted write")
			continue
		}
		if img, ok := strings.CutSuffix(strings.TrimPrefix(name, "."), mergingSuffix); ok && strings.HasPrefix(name, ".") {
			if _, _, ok := parseImageName(img); ok {
				add(name, LeftoverPartial, "an image being merged by an interrupted prune")
			}
			continue
		}
		for _, suffix := range []string{newSuffix, droppedSuffix} {
			if id, ok := strings.CutSuffix(name, suffix); ok && validID(id) {
				add(name, LeftoverPartial, "a manifest of an interrupted prune")
			}
		}
	}
	var ps []string
	for _, l := range out {
		ps = append(ps, l.path)
	}
	for i, u := range r.fs.Usage(ps...) {
		out[i].Bytes = u
	}
	sortLeftovers(out)
	return out
}

// ownFile says whether name is one sendense writes atomically in a VM
// directory.
func ownFile(name string) bool {
	switch name {
	case stateName, journalName, "sendense-write-test":
		return true
	}
	for _, suffix := range []string{".json", newSuffix} {
		if id, ok := strings.CutSuffix(name, suffix); ok && validID(id) {
			return true
		}
	}
	return false
}

func sortLeftovers(l []Leftover) {
	slices.SortFunc(l, func(a, b Leftover) int { return strings.Compare(a.File, b.File) })
}

// removeLeftovers removes leftovers (the caller holds the VM's writer
// lock).
func (r *Repo) removeLeftovers(left []Leftover) []error {
	var errs []error
	for _, l := range left {
		if err := r.fs.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errs
}
