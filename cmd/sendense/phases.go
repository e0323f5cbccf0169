package main

import (
	"fmt"

	"github.com/sendense/capture/orchestrator"
)

// phaseLines is where a job's time went, for --verbose: one line for the
// job and one per disk.
func phaseLines(r *orchestrator.Report) []string {
	if !gopts.Verbose {
		return nil
	}
	lines := []string{fmt.Sprintf("%s: phases: %s", r.VM, orchestrator.FormatPhases(r.Phases))}
	for _, d := range r.Disks {
		lines = append(lines, fmt.Sprintf("%s disk %d: phases: %s; hashing %.2fs of CPU", r.VM, d.Key, orchestrator.FormatPhases(d.Phases), d.HashCPU))
	}
	return lines
}
