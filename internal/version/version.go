// Package version holds the release version, set at link time by the
// Makefile (-X github.com/sendense/capture/internal/version.Version=…).
package version

// Version is the Sendense capture release.
var Version = "0.0.0-dev"
