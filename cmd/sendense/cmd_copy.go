package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/units"
)

func init() {
	rootCmd.AddCommand(newCopyCommand())
}

// copyOptions are the flags of "sendense copy".
type copyOptions struct {
	Incremental            bool
	DestinationIsZero      bool
	AllowLargerDestination bool
	Checksum               bool
	Progress               bool
	Connections            int
	Requests               int
	RequestSize            string
	Rate                   string

	requestSize int   // parsed RequestSize
	rate        int64 // parsed Rate, bytes per second
}

// copyEnv maps flags to their environment fallbacks.
var copyEnv = map[string]string{
	"connections":  "SENDENSE_CONNECTIONS",
	"requests":     "SENDENSE_REQUESTS",
	"request-size": "SENDENSE_REQUEST_SIZE",
	"rate":         "SENDENSE_RATE",
}

// AddFlags registers the flags on f.
func (o *copyOptions) AddFlags(f *pflag.FlagSet) {
	f.BoolVar(&o.Incremental, "incremental", false, "skip hole-only extents: the destination's backing image has them (a CBT incremental into a qcow2 overlay)")
	f.BoolVar(&o.DestinationIsZero, "destination-is-zero", false, "the destination already reads as zeroes: write nothing for zero extents (full copies only)")
	f.BoolVar(&o.AllowLargerDestination, "allow-larger-destination", false, "accept a destination larger than the source (its tail is left alone)")
	f.BoolVar(&o.Checksum, "checksum", false, "print the SHA-256 of the destination's content (computed while copying for full copies)")
	f.BoolVar(&o.Progress, "progress", false, "show a progress bar on a terminal (with --json: status lines)")
	f.IntVar(&o.Connections, "connections", 0, "use up to `N` connections to each server when both allow multi-conn; 0: one per two CPUs, 1 to 4 ($SENDENSE_CONNECTIONS)")
	f.IntVar(&o.Requests, "requests", copier.DefaultRequests, "keep up to `N` requests in flight per connection ($SENDENSE_REQUESTS)")
	f.StringVar(&o.RequestSize, "request-size", "256K", "largest read or write request: `SIZE` bytes, a power of two from 512 to 32M ($SENDENSE_REQUEST_SIZE)")
	f.StringVar(&o.Rate, "rate", "0", "limit data read to `BYTES` per second, e.g. 100M; 0: no limit ($SENDENSE_RATE)")
}

// Finalize applies the environment fallbacks to flags not given.
func (o *copyOptions) Finalize(f *pflag.FlagSet) error {
	for flag, env := range copyEnv {
		v, ok := os.LookupEnv(env)
		if !ok || f.Changed(flag) {
			continue
		}
		if err := f.Set(flag, v); err != nil {
			return usageErrorf("invalid %s=%q: %v", env, v, err)
		}
	}
	return nil
}

// Check validates the options and parses the sizes.
func (o *copyOptions) Check() error {
	if o.Connections < 0 {
		return usageErrorf("--connections must be at least 1 (or 0 for automatic), not %d", o.Connections)
	}
	if o.Requests < 1 {
		return usageErrorf("--requests must be at least 1, not %d", o.Requests)
	}
	n, err := units.ParseSize(o.RequestSize)
	if err != nil {
		return usageErrorf("--request-size: %v", err)
	}
	if n < 512 || n > copier.MaxRequestSize || n&(n-1) != 0 {
		return usageErrorf("--request-size must be a power of two from 512 to 32M, not %s", o.RequestSize)
	}
	o.requestSize = int(n)
	if o.rate, err = units.ParseSize(o.Rate); err != nil {
		return usageErrorf("--rate: %v", err)
	}
	if o.DestinationIsZero && o.Incremental {
		return usageErrorf("--destination-is-zero cannot be used with --incremental: an incremental must write zeroes over blocks that became zero")
	}
	return nil
}

func newCopyCommand() *cobra.Command {
	var opts copyOptions
	cmd := &cobra.Command{
		Use:   "copy [flags] SRC DST",
		Short: "Copy a disk image between two NBD servers, extent by extent",
		Long: `Copy the disk image served by the NBD server SRC onto the one served by DST.

SRC and DST are NBD URIs: nbd://HOST[:PORT][/EXPORT] or
nbd+unix:///[EXPORT]?socket=PATH (nbds:// for TLS). The source's block
status decides what is copied:

  data (0)             read and written; all-zero data is written as zeroes
  zero (2), hole+zero (3)  written as zeroes (nothing with --destination-is-zero)
  hole only (1)        skipped with --incremental (the backing image has it),
                       read and written otherwise

Sources without block status are copied as data. Up to --connections
connections are used when both servers allow multi-conn, each with up to
--requests requests in flight. The copy ends with a flush of the destination;
if that fails, the copy fails. Source and destination must be the same size
(or use --allow-larger-destination). See docs/copy.md.

EXAMPLES
  Copy a snapshot into a fresh qcow2 served by qemu-nbd:
    sendense copy nbd+unix:///?socket=/run/src.sock nbd+unix:///?socket=/run/dst.sock

  Copy a CBT incremental into an overlay whose backing is the previous full:
    sendense copy --incremental nbd+unix:///?socket=src.sock nbd://replica:10809/disk0

  Limit the bandwidth and print JSON statistics:
    sendense copy --rate 100M --json SRC DST

EXIT STATUS
  0    the copy was completed and flushed
  1    the copy failed (connection, server error, size mismatch, read-only destination)
  2    bad flags or arguments (including a URI that does not parse)
  130  interrupted by SIGINT or SIGTERM`,
		Args: cobra.ExactArgs(2),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.Finalize(cmd.Flags()); err != nil {
				return err
			}
			return opts.Check()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCopy(cmd.Context(), opts, gopts, cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	opts.AddFlags(cmd.Flags())
	return cmd
}

// nbdSchemes are the URI schemes libnbd connects to.
var nbdSchemes = map[string]bool{
	"nbd": true, "nbds": true, "nbd+unix": true, "nbds+unix": true, "nbd+vsock": true, "nbds+vsock": true,
}

// checkURI rejects what cannot be an NBD URI before connecting.
func checkURI(which, s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return usageErrorf("%s %q is not a valid NBD URI: %v", which, s, err)
	}
	if !nbdSchemes[u.Scheme] {
		return usageErrorf("%s %q is not an NBD URI: use nbd://HOST[:PORT][/EXPORT] or nbd+unix:///[EXPORT]?socket=PATH", which, s)
	}
	if strings.HasSuffix(u.Scheme, "+unix") && u.Query().Get("socket") == "" {
		return usageErrorf("%s %q names no socket: add ?socket=PATH", which, s)
	}
	return nil
}

// copySummary is the "summary" JSON line and the result's text form.
type copySummary struct {
	MessageType string `json:"message_type"`
	copier.Stats
	Connections int    `json:"connections"`
	Requests    int    `json:"requests"`
	RequestSize int    `json:"request_size"`
	SHA256      string `json:"sha256,omitempty"`
}

func (s copySummary) Write(w io.Writer) {
	fmt.Fprintf(w, "copied %s in %.2f s (%.1f MiB/s): read %s, written %s, zeroed %s, skipped %s\n",
		units.FormatSize(s.BytesWritten+s.BytesZeroed+s.BytesSkipped), s.Seconds, s.MiBps,
		units.FormatSize(s.BytesRead), units.FormatSize(s.BytesWritten),
		units.FormatSize(s.BytesZeroed), units.FormatSize(s.BytesSkipped))
	if s.SHA256 != "" {
		fmt.Fprintf(w, "sha256 %s\n", s.SHA256)
	}
}

// runCopy copies args[0] onto args[1].
func runCopy(ctx context.Context, opts copyOptions, gopts globalOptions, stdout, stderr io.Writer, args []string) error {
	if len(args) != 2 {
		return usageErrorf("copy needs SRC and DST (see 'sendense copy --help')")
	}
	if opts.requestSize == 0 {
		if err := opts.Check(); err != nil {
			return err
		}
	}
	if err := checkURI("SRC", args[0]); err != nil {
		return err
	}
	if err := checkURI("DST", args[1]); err != nil {
		return err
	}
	src, err := copier.OpenNBD(args[0])
	if err != nil {
		return fmt.Errorf("source %s: %w", args[0], err)
	}
	defer src.Close()
	dst, err := copier.OpenNBD(args[1])
	if err != nil {
		return fmt.Errorf("destination %s: %w", args[1], err)
	}
	defer dst.Close()
	slog.Debug("copy source", "uri", args[0], "size", src.Size(), "block_status", src.CanExtents(), "multi_conn", src.CanMultiConn())
	slog.Debug("copy destination", "uri", args[1], "size", dst.Size(), "read_only", dst.ReadOnly(),
		"zero", dst.CanZero(), "multi_conn", dst.CanMultiConn())

	pr := newCopyProgress(opts.Progress, gopts, stdout, stderr)
	copts := copier.Options{
		Connections:            opts.Connections,
		Requests:               opts.Requests,
		RequestSize:            opts.requestSize,
		Incremental:            opts.Incremental,
		DestinationIsZero:      opts.DestinationIsZero,
		AllowLargerDestination: opts.AllowLargerDestination,
		Rate:                   opts.rate,
		Checksum:               opts.Checksum,
	}
	if pr.mode != 0 {
		copts.Progress, copts.ProgressInterval = pr.update, pr.minGap
	}
	res, err := copier.Copy(ctx, src, dst, copts)
	pr.done()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("copy %s to %s interrupted: %w", args[0], args[1], err)
		}
		return fmt.Errorf("copy %s to %s: %w", args[0], args[1], err)
	}
	sum := copySummary{"summary", res.Stats, res.Connections, res.Requests, res.RequestSize, res.SHA256}
	switch {
	case gopts.JSON:
		return json.NewEncoder(stdout).Encode(sum)
	case !gopts.Quiet:
		sum.Write(stdout)
	}
	return nil
}

// copyProgress prints progress: a bar on a terminal, JSON status lines
// with --json, nothing otherwise. Output is rate-limited.
type copyProgress struct {
	mu     sync.Mutex
	mode   int // 0 silent, 1 bar, 2 JSON
	w      io.Writer
	last   time.Time
	drawn  bool
	minGap time.Duration
}

func newCopyProgress(enabled bool, gopts globalOptions, stdout, stderr io.Writer) *copyProgress {
	p := &copyProgress{}
	switch {
	case !enabled:
	case gopts.JSON:
		p.mode, p.w, p.minGap = 2, stdout, time.Second
	case copyIsTerminal(stderr) && !gopts.Quiet:
		p.mode, p.w, p.minGap = 1, stderr, 100*time.Millisecond
	}
	return p
}

func copyIsTerminal(w io.Writer) bool { return isTerminal(w) }

// copyStatus is a "status" JSON line.
type copyStatus struct {
	MessageType    string  `json:"message_type"`
	PercentDone    float64 `json:"percent_done"`
	BytesDone      uint64  `json:"bytes_done"`
	TotalBytes     uint64  `json:"total_bytes"`
	SecondsElapsed float64 `json:"seconds_elapsed"`
	copier.Stats
}

func (p *copyProgress) update(pr copier.Progress) {
	if p.mode == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < p.minGap && pr.Done < pr.Total {
		return
	}
	p.last = now
	pct := 100.0
	if pr.Total > 0 {
		pct = float64(pr.Done) * 100 / float64(pr.Total)
	}
	if p.mode == 2 {
		json.NewEncoder(p.w).Encode(copyStatus{"status", pct, pr.Done, pr.Total, pr.Seconds, pr.Stats})
		return
	}
	const width = 30
	fill := int(pct * width / 100)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	fmt.Fprintf(p.w, "\r[%s] %5.1f%% %s / %s %6.1f MiB/s ", bar, pct,
		units.FormatSize(pr.Done), units.FormatSize(pr.Total), pr.MiBps)
	p.drawn = true
}

// done ends the bar's line.
func (p *copyProgress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
