// Package orchestrator runs Sendense capture jobs: it ties the vSphere
// side (package cbt), the nbdkit plugin (started per disk), the copy engine
// (internal/copier) and the repository (internal/repo) together. The CLI
// (cmd/sendense) and the agent API call the same functions here.
package orchestrator
