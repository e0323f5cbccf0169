// Package version holds the release version and commit, set at link time
// by the Makefile (-X github.com/sendense/capture/internal/version.Version=…
// and …Commit=…); without them the commit comes from the Go build's
// version control information.
package version

import "runtime/debug"

// Version is the Sendense capture release.
var Version = "0.0.0-dev"

// Commit is the source commit ("" when unknown: see Revision).
var Commit = ""

// Revision is the source commit: Commit, else the VCS revision Go
// recorded at build time (with "+dirty" for a modified tree), else "".
func Revision() string {
	if Commit != "" {
		return Commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}
