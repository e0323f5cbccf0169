// Package vmselect picks the VMs a command works on from the vCenter
// inventory: names, inventory paths, managed object ids, glob patterns,
// folders, everything, minus exclusions (docs/cli.md, sendense backup).
package vmselect

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/sendense/capture/cbt"
)

// Spec is a selection as given on the command line.
type Spec struct {
	// Args are VM names, inventory paths (/DC0/vm/web), morefs (vm-42,
	// moref=vm-42) or glob patterns of names or paths (web*, /DC0/vm/prod/*).
	Args []string
	// All selects every VM.
	All bool
	// Folders select the VMs below inventory folders: an absolute path
	// (/DC0/vm/prod) or one relative to a datacenter's VM folder (prod).
	Folders []string
	// Exclude removes the VMs matching these (same forms as Args).
	Exclude []string
}

// Empty reports whether nothing was selected.
func (s Spec) Empty() bool { return len(s.Args) == 0 && !s.All && len(s.Folders) == 0 }

// NeedsInventory reports whether the selection needs the whole inventory
// (patterns, folders, --all, exclusions); otherwise each argument names
// one VM that vCenter can look up by itself.
func (s Spec) NeedsInventory() bool {
	if s.All || len(s.Folders) > 0 || len(s.Exclude) > 0 {
		return true
	}
	return slices.ContainsFunc(s.Args, IsPattern)
}

// IsPattern reports whether s is a glob pattern (*, ? or [).
func IsPattern(s string) bool { return strings.ContainsAny(s, "*?[") }

var morefRE = regexp.MustCompile(`^vm-[0-9]+$`)

// Check validates the patterns.
func (s Spec) Check() error {
	for _, p := range append(slices.Clone(s.Args), s.Exclude...) {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("bad pattern %q: %v", p, err)
		}
	}
	for _, f := range s.Folders {
		if strings.Trim(f, "/") == "" {
			return fmt.Errorf("--folder %q: give a folder, e.g. /DC0/vm/prod or prod", f)
		}
	}
	return nil
}

// Matches reports whether one argument (name, path, moref or pattern)
// names vm.
func Matches(arg string, vm cbt.VM) bool {
	switch {
	case strings.HasPrefix(arg, "moref="):
		return vm.Moref == strings.TrimPrefix(arg, "moref=")
	case morefRE.MatchString(arg):
		return vm.Moref == arg
	case strings.HasPrefix(arg, "/"):
		ok, _ := path.Match(arg, vm.Path)
		return ok
	}
	ok, _ := path.Match(arg, vm.Name)
	return ok
}

// inFolder reports whether vm is below folder.
func inFolder(folder string, vm cbt.VM) bool {
	if strings.HasPrefix(folder, "/") {
		return strings.HasPrefix(vm.Path, strings.TrimRight(folder, "/")+"/")
	}
	// Relative: below /<datacenter>/vm/<folder>/.
	parts := strings.SplitN(strings.TrimPrefix(vm.Path, "/"), "/", 3)
	return len(parts) == 3 && parts[1] == "vm" && strings.HasPrefix(parts[2], strings.Trim(folder, "/")+"/")
}

// Select returns the VMs of the inventory the spec selects: those of each
// argument in turn (a name must be unique, a pattern must match at least
// one VM), then the folders' and all of them for All, each once, without
// the excluded ones. An argument that names no VM is an error with the
// closest names as suggestions.
func Select(inv []cbt.VMInfo, s Spec) ([]cbt.VM, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	var out []cbt.VM
	seen := map[string]bool{}
	add := func(vm cbt.VM) {
		if !seen[vm.Moref] {
			seen[vm.Moref] = true
			out = append(out, vm)
		}
	}
	for _, arg := range s.Args {
		var found []cbt.VM
		for _, v := range inv {
			if Matches(arg, v.VM) {
				found = append(found, v.VM)
			}
		}
		switch {
		case len(found) == 0:
			return nil, NotFound(inv, arg)
		case len(found) > 1 && !IsPattern(arg):
			var names []string
			for _, vm := range found {
				names = append(names, vm.String())
			}
			return nil, fmt.Errorf("%w: %d VMs are named %q, please name one by inventory path or moref: %s",
				cbt.ErrAmbiguous, len(found), arg, strings.Join(names, ", "))
		}
		for _, vm := range found {
			add(vm)
		}
	}
	for _, f := range s.Folders {
		n := 0
		for _, v := range inv {
			if inFolder(f, v.VM) {
				add(v.VM)
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("%w: no VM below folder %s ('sendense vms' lists the VMs and their paths)", cbt.ErrNotFound, f)
		}
	}
	if s.All {
		for _, v := range inv {
			add(v.VM)
		}
	}
	kept := out[:0]
	for _, vm := range out {
		if !slices.ContainsFunc(s.Exclude, func(e string) bool { return Matches(e, vm) }) {
			kept = append(kept, vm)
		}
	}
	if len(kept) == 0 {
		return nil, fmt.Errorf("%w: no VM left to back up once --exclude is applied", cbt.ErrNotFound)
	}
	return kept, nil
}

// NotFound is the error for an argument that names no VM of the
// inventory, with suggestions.
func NotFound(inv []cbt.VMInfo, arg string) error {
	what := fmt.Sprintf("no VM named %q", arg)
	switch {
	case IsPattern(arg):
		what = fmt.Sprintf("pattern %q matches no VM", arg)
	case strings.HasPrefix(arg, "/"):
		what = fmt.Sprintf("no VM at inventory path %s", arg)
	case morefRE.MatchString(arg) || strings.HasPrefix(arg, "moref="):
		what = fmt.Sprintf("no VM with moref %s", strings.TrimPrefix(arg, "moref="))
	}
	hint := ""
	if s := Suggest(inv, arg); len(s) > 0 {
		hint = "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return fmt.Errorf("%w: %s%s ('sendense vms' lists the VMs)", cbt.ErrNotFound, what, hint)
}

// Suggest returns up to three names (or paths, for a path) of the
// inventory closest to arg: a few typos away, or containing it.
func Suggest(inv []cbt.VMInfo, arg string) []string {
	byPath := strings.HasPrefix(arg, "/")
	want := strings.ToLower(strings.Trim(arg, "*?[]"))
	type cand struct {
		s string
		d int
	}
	var cands []cand
	for _, v := range inv {
		s := v.Name
		if byPath {
			s = v.Path
		}
		l := strings.ToLower(s)
		d := distance(want, l)
		limit := 1
		switch {
		case len(want) >= 10:
			limit = 3
		case len(want) >= 5:
			limit = 2
		}
		switch {
		case d <= limit:
		case len(want) >= 3 && strings.Contains(l, want):
			d = limit + 1
		default:
			continue
		}
		if !slices.ContainsFunc(cands, func(c cand) bool { return c.s == s }) {
			cands = append(cands, cand{s, d})
		}
	}
	// The closest ones only.
	slices.SortStableFunc(cands, func(a, b cand) int { return a.d - b.d })
	var out []string
	for _, c := range cands {
		if c.d == cands[0].d && len(out) < 3 {
			out = append(out, c.s)
		}
	}
	return out
}

// distance is the edit distance between a and b: insertions, deletions,
// substitutions and transpositions of adjacent characters (the usual
// typos) count one each.
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
