package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sendense/capture/internal/version"
)

func init() {
	rootCmd.AddCommand(newVersionCommand())
	rootCmd.Version = version.Version
	rootCmd.SetVersionTemplate(`sendense {{.Version}}` + "\n")
}

// versionInfo is what `sendense version` reports.
type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
	Plugin   string `json:"plugin"`   // the nbdkit plugin sendense starts
	NBDKit   string `json:"nbdkit"`   // "nbdkit 1.32.5", or why not found
	QemuImg  string `json:"qemu_img"` // first line of qemu-img --version
	QemuNBD  string `json:"qemu_nbd"`
}

func newVersionCommand() *cobra.Command {
	var plugin string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show the version of sendense and of the tools it runs",
		Long: `Show sendense's version and source commit, the Go version it was built
with, the nbdkit plugin it starts (--plugin, $SENDENSE_PLUGIN, next to the
sendense executable, else the installed one), and the versions of nbdkit,
qemu-img and qemu-nbd found in $PATH ("not found" when missing).
'sendense --version' prints the version only.

EXAMPLES
  sendense version
  sendense version --json | jq -r .commit

EXIT STATUS
  0  always (a missing tool is reported, not an error)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVersion(cmd.Context(), plugin, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&plugin, "plugin", "", "nbdkit plugin `path` to report (default: as backup finds it) [$SENDENSE_PLUGIN]")
	return cmd
}

func runVersion(ctx context.Context, plugin string, w io.Writer) error {
	info := versionInfo{
		Version:  version.Version,
		Commit:   version.Revision(),
		Go:       runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH,
		Plugin:   pluginLocation(ctx, pluginPath(plugin)),
		NBDKit:   toolVersion(ctx, "nbdkit", "--version"),
		QemuImg:  toolVersion(ctx, "qemu-img", "--version"),
		QemuNBD:  toolVersion(ctx, "qemu-nbd", "--version"),
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	if gopts.JSON {
		return printJSON(w, "version", info)
	}
	tw := newTable(w)
	fmt.Fprintf(tw, "sendense\t%s\ncommit\t%s\ngo\t%s (%s)\nplugin\t%s\nnbdkit\t%s\nqemu-img\t%s\nqemu-nbd\t%s\n",
		info.Version, info.Commit, info.Go, info.Platform, info.Plugin, info.NBDKit, info.QemuImg, info.QemuNBD)
	return tw.Flush()
}

// toolVersion is the first line of `name args…`, or why it could not run.
func toolVersion(ctx context.Context, name string, args ...string) string {
	line, _, _ := strings.Cut(toolOutput(ctx, name, args...), "\n")
	return line
}

// toolOutput is the output of `name args…`, or why it could not run.
func toolOutput(ctx context.Context, name string, args ...string) string {
	path, err := exec.LookPath(name)
	if err != nil {
		return "not found in $PATH"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).Output()
	if err != nil {
		return fmt.Sprintf("%s: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

// pluginLocation is where the plugin sendense starts is, and whether it
// is there: a path, or the file nbdkit loads for the name "sendense".
func pluginLocation(ctx context.Context, p string) string {
	if !strings.Contains(p, "/") {
		cfg := toolOutput(ctx, "nbdkit", "--dump-config")
		for _, l := range strings.Split(cfg, "\n") {
			if dir, ok := strings.CutPrefix(l, "plugindir="); ok {
				p = filepath.Join(dir, "nbdkit-"+p+"-plugin.so")
			}
		}
	}
	if _, err := os.Stat(p); err != nil {
		return p + " (missing: make install, or --plugin)"
	}
	return p
}
