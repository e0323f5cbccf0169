package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// writeReference writes the CLI reference (docs/cli.md) from the command
// tree: every command's usage, description and flags. A test keeps the
// file in step with the code (make docs regenerates it).
func writeReference(w io.Writer, root *cobra.Command) {
	fmt.Fprintf(w, "# sendense CLI reference\n\n")
	fmt.Fprintf(w, "Generated from the command definitions by `make docs`; do not edit.\n\n")
	cmds := commands(root)
	sort.SliceStable(cmds, func(i, j int) bool { return cmds[i].CommandPath() < cmds[j].CommandPath() })
	fmt.Fprintf(w, "## Commands\n\n")
	for _, c := range cmds {
		fmt.Fprintf(w, "- [`%s`](#%s) — %s\n", c.CommandPath(), anchor(c.CommandPath()), c.Short)
	}
	for _, c := range cmds {
		fmt.Fprintf(w, "\n## %s\n\n%s\n\n", c.CommandPath(), c.Short)
		if c.Runnable() {
			fmt.Fprintf(w, "```\n%s\n```\n\n", c.UseLine())
		}
		if long := strings.TrimSpace(c.Long); long != "" {
			fmt.Fprintf(w, "```\n%s\n```\n\n", long)
		}
		if fs := c.NonInheritedFlags(); fs.HasAvailableFlags() {
			fmt.Fprintf(w, "Flags:\n\n```\n%s```\n\n", flagUsages(fs))
		}
		if c == root {
			if fs := c.PersistentFlags(); fs.HasAvailableFlags() {
				fmt.Fprintf(w, "Global flags (every command):\n\n```\n%s```\n\n", flagUsages(fs))
			}
		}
	}
}

func flagUsages(fs *pflag.FlagSet) string {
	return strings.ReplaceAll(fs.FlagUsagesWrapped(100), "\t", "    ")
}

func anchor(s string) string {
	return strings.ReplaceAll(strings.ToLower(s), " ", "-")
}
