// Command sendense is the Sendense capture CLI: it backs up and replicates
// VMware vSphere disks through nbdkit and the sendense plugin.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes (documented in docs/sendense.md, EXIT STATUS).
const (
	exitOK          = 0
	exitError       = 1   // the command failed
	exitUsage       = 2   // bad flags, arguments or configuration
	exitVerify      = 3   // verify found a mismatch
	exitInterrupted = 130 // SIGINT/SIGTERM, and nothing was kept
)

// codedError carries a specific exit code through cobra's RunE.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// usageErrorf reports bad input from the user (exit status 2).
func usageErrorf(format string, a ...any) error {
	return &codedError{exitUsage, fmt.Errorf(format, a...)}
}

// globalOptions are the flags every subcommand accepts.
type globalOptions struct {
	JSON      bool
	Verbose   bool
	Quiet     bool
	LogLevel  string
	LogFormat string
}

var gopts globalOptions

var rootCmd = &cobra.Command{
	Use:   "sendense",
	Short: "Back up and replicate VMware vSphere disks over NBD",
	Long: `sendense backs up and replicates VMware vSphere virtual machines.

It reads snapshot disks through nbdkit and the sendense plugin (VDDK for the
data, Changed Block Tracking for what changed) and copies them, extent by
extent, into a QCOW2 backup repository or an NBD replication target.

Settings come from flags, then SENDENSE_* variables, then the configuration
file: --config FILE, $SENDENSE_CONFIG, else /etc/sendense/sendense.toml or
~/.config/sendense/sendense.toml (docs/configuration.md).`,
	SilenceUsage:      true,
	SilenceErrors:     true,
	DisableAutoGenTag: true,
	PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
		installPassphrase(cmd) // encrypted repositories (cmd_key.go)
		return setupOutput(cmd.ErrOrStderr())
	},
}

func init() {
	f := rootCmd.PersistentFlags()
	f.BoolVar(&gopts.JSON, "json", false, "write machine-readable JSON lines on stdout")
	f.BoolVarP(&gopts.Verbose, "verbose", "v", false, "log debug messages on stderr")
	f.BoolVarP(&gopts.Quiet, "quiet", "q", false, "print only errors")
	f.StringVar(&gopts.LogLevel, "log-level", "", "log `level` on stderr: debug, info, warn or error (default warn; debug with --verbose)")
	f.StringVar(&gopts.LogFormat, "log-format", "text", "log `format`: text or json (one JSON object per line)")
	rootCmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &codedError{exitUsage, fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())}
	})
}

func main() {
	ctx, stop := handleSignals()
	code := run(ctx, os.Args[1:], newPipeWriter(os.Stdout), newPipeWriter(os.Stderr))
	stop()
	os.Exit(code)
}

// run executes the command line and maps the result to an exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	rootCmd.SetArgs(args)
	rootCmd.SetOut(stdout)
	rootCmd.SetErr(stderr)
	err := rootCmd.ExecuteContext(ctx)
	ui.Close()
	if err == nil {
		return exitOK
	}
	code := exitError
	var ce *codedError
	switch {
	case errors.As(err, &ce):
		code = ce.code
	case ctx.Err() != nil:
		code = exitInterrupted
	case isUsageError(err):
		code = exitUsage
	}
	if gopts.JSON {
		_ = json.NewEncoder(stdout).Encode(struct {
			MessageType string `json:"message_type"`
			Code        int    `json:"code"`
			Message     string `json:"message"`
		}{"exit_error", code, err.Error()})
	}
	fmt.Fprintf(stderr, "sendense: %v\n", err)
	if gopts.Verbose {
		if c := childCommand(err); c != "" {
			fmt.Fprintf(stderr, "  command: %s\n", c)
		}
	}
	return code
}

// isUsageError recognises cobra's own argument errors.
func isUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "unknown flag", "unknown shorthand flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
