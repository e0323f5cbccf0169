package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/version"
)

func init() {
	rootCmd.AddCommand(newGenerateCommand())
}

// generateOptions are the flags of `sendense generate`.
type generateOptions struct {
	manDir, bash, zsh, fish string
}

func newGenerateCommand() *cobra.Command {
	var o generateOptions
	cmd := &cobra.Command{
		Use:   "generate [flags]",
		Short: "Write the man pages and shell completion scripts",
		Long: `Write the manual pages of every command (sendense(1), sendense-backup(1)…),
generated from the same command definitions as --help and docs/cli.md, and
the completion scripts of bash, zsh and fish. make install runs it.

EXAMPLES
  sendense generate --man /usr/local/share/man/man1
  sendense generate --bash-completion /etc/bash_completion.d/sendense
  sendense generate --zsh-completion ~/.zsh/completions/_sendense \
                    --fish-completion ~/.config/fish/completions/sendense.fish

EXIT STATUS
  0  written
  1  a file could not be written
  2  no output given`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o == (generateOptions{}) {
				return usageErrorf("nothing to generate: give --man DIR or a --*-completion FILE")
			}
			return runGenerate(rootCmd, o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.manDir, "man", "", "write the man pages into `DIR` (created if needed)")
	fs.StringVar(&o.bash, "bash-completion", "", "write the bash completion script to `FILE`")
	fs.StringVar(&o.zsh, "zsh-completion", "", "write the zsh completion script to `FILE`")
	fs.StringVar(&o.fish, "fish-completion", "", "write the fish completion script to `FILE`")
	return cmd
}

func runGenerate(root *cobra.Command, o generateOptions) error {
	if o.manDir != "" {
		if err := os.MkdirAll(o.manDir, 0o755); err != nil {
			return err
		}
		for _, c := range commands(root) {
			var b bytes.Buffer
			writeManPage(&b, c)
			if err := os.WriteFile(filepath.Join(o.manDir, manName(c)+".1"), b.Bytes(), 0o644); err != nil {
				return err
			}
		}
	}
	for _, s := range []struct {
		file string
		gen  func(io.Writer) error
	}{
		{o.bash, func(w io.Writer) error { return root.GenBashCompletionV2(w, true) }},
		{o.zsh, root.GenZshCompletion},
		{o.fish, func(w io.Writer) error { return root.GenFishCompletion(w, true) }},
	} {
		if s.file == "" {
			continue
		}
		var b bytes.Buffer
		if err := s.gen(&b); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(s.file), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(s.file, b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// commands lists the documented commands of the tree (docs/cli.md, the
// man pages).
func commands(root *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		// cobra adds --help when a command first runs: add it now, so
		// that the output is the same whatever ran before.
		c.InitDefaultHelpFlag()
		out = append(out, c)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	return out
}

// manName is "sendense-cbt-status" for "sendense cbt status".
func manName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-")
}

// writeManPage writes c's man page (man(7) macros): NAME, SYNOPSIS,
// DESCRIPTION (the help text, laid out as --help shows it), OPTIONS,
// GLOBAL OPTIONS, SEE ALSO.
func writeManPage(w io.Writer, c *cobra.Command) {
	name := manName(c)
	fmt.Fprintf(w, ".TH %s 1 \"\" \"sendense %s\" \"Sendense capture\"\n", strings.ToUpper(roff(name)), roff(version.Version))
	fmt.Fprintf(w, ".SH NAME\n%s \\- %s\n", roff(name), roff(c.Short))
	if c.Runnable() {
		fmt.Fprintf(w, ".SH SYNOPSIS\n.nf\n%s\n.fi\n", roff(c.UseLine()))
	}
	if long := strings.TrimSpace(c.Long); long != "" {
		fmt.Fprintf(w, ".SH DESCRIPTION\n.nf\n%s\n.fi\n", roffLines(long))
	}
	if fs := c.NonInheritedFlags(); fs.HasAvailableFlags() {
		fmt.Fprintf(w, ".SH OPTIONS\n")
		manFlags(w, fs)
	}
	if fs := c.InheritedFlags(); fs.HasAvailableFlags() {
		fmt.Fprintf(w, ".SH GLOBAL OPTIONS\n")
		manFlags(w, fs)
	}
	var see []string
	if c.HasParent() {
		see = append(see, manName(c.Parent())+"(1)")
	}
	for _, s := range c.Commands() {
		if !s.Hidden && s.Name() != "help" && s.Name() != "completion" {
			see = append(see, manName(s)+"(1)")
		}
	}
	if len(see) > 0 {
		fmt.Fprintf(w, ".SH SEE ALSO\n%s\n", roff(strings.Join(see, ", ")))
	}
}

func manFlags(w io.Writer, fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		varname, usage := pflag.UnquoteUsage(f)
		head := "\\fB--" + roff(f.Name) + "\\fR"
		if f.Shorthand != "" {
			head = "\\fB-" + roff(f.Shorthand) + "\\fR, " + head
		}
		if varname != "" {
			head += " \\fI" + roff(varname) + "\\fR"
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, ".TP\n%s\n%s\n", head, roffLines(usage))
	})
}

// roff escapes text for a roff line: backslashes, minus signs (so that
// options copy as ASCII) and characters beyond ASCII (\[uXXXX]).
func roff(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\e`)
		case r == '-':
			b.WriteString(`\-`)
		case r > 127:
			fmt.Fprintf(&b, `\[u%04X]`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// roffLines escapes a block of lines: roff escapes, and lines that would
// start with a control character.
func roffLines(s string) string {
	lines := strings.Split(roff(s), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}
