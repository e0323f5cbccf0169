package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sendense/capture/internal/atomicfile"
	"github.com/sendense/capture/internal/lab"
	"github.com/sendense/capture/internal/units"
)

func init() {
	rootCmd.AddCommand(newLabCommand())
}

// labOptions are the flags of "sendense lab".
type labOptions struct {
	Env        string
	Dir        string
	Listen     string
	LibDir     string
	BlockSize  string
	PageLimit  int
	Links      bool
	VMs        []string
	blockSize  uint64
	vms        []lab.VMSpec
	ready      func(labReady) // tests: called once the lab serves
	executable func() (string, error)
}

// labEnv maps flags to their environment fallbacks.
var labEnv = map[string]string{
	"dir":    "SENDENSE_LAB_DIR",
	"listen": "SENDENSE_LAB_LISTEN",
}

// AddFlags registers the flags on f.
func (o *labOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&o.Env, "env", "", "also write the connection settings as shell assignments to `FILE` (removed when the lab stops)")
	f.StringVar(&o.Dir, "dir", "", "put the lab's files (datastores, password, CA, control socket) in `DIR`, created if needed; they are removed when the lab stops; default: a new temporary directory ($SENDENSE_LAB_DIR)")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:0", "serve the vSphere API on `ADDR` (port 0: any free port) ($SENDENSE_LAB_LISTEN)")
	f.StringVar(&o.LibDir, "vddk-libdir", "", "VDDK directory to announce; default: the fake VDDK next to this binary (`DIR`/fakevddk)")
	f.StringVar(&o.BlockSize, "block-size", "64K", "CBT block size in `BYTES`, a power of two")
	f.IntVar(&o.PageLimit, "page-limit", 2000, "at most `N` areas per QueryChangedDiskAreas answer")
	f.BoolVar(&o.Links, "snapshot-links", false, "take snapshots as hard links to the disks, copied at the next write through the lab, instead of copying the disks at once: snapshots cost next to nothing, as on vSphere, but a write made to a flat file directly then also changes the snapshots that share it")
	f.StringArrayVar(&o.VMs, "vm", nil, "add a VM (powered on, CBT on) to the default inventory: `NAME:SIZE[+DATA][,SIZE[+DATA]...]`, one SIZE per disk with DATA bytes of initial data, e.g. bench:16G+4G (repeatable)")
}

// Finalize applies the environment fallbacks to flags not given.
func (o *labOptions) Finalize(f *pflag.FlagSet) error {
	for flag, env := range labEnv {
		if v, ok := os.LookupEnv(env); ok && !f.Changed(flag) {
			if err := f.Set(flag, v); err != nil {
				return usageErrorf("invalid %s=%q: %v", env, v, err)
			}
		}
	}
	return nil
}

// Check validates the options.
func (o *labOptions) Check() error {
	n, err := units.ParseSize(o.BlockSize)
	if err != nil {
		return usageErrorf("--block-size: %v", err)
	}
	if n < 512 || n&(n-1) != 0 {
		return usageErrorf("--block-size must be a power of two of at least 512, not %s", o.BlockSize)
	}
	o.blockSize = uint64(n)
	if o.PageLimit < 1 {
		return usageErrorf("--page-limit must be at least 1, not %d", o.PageLimit)
	}
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return usageErrorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:0", o.Listen)
	}
	o.vms = nil
	for i, v := range o.VMs {
		spec, err := parseLabVM(v, uint64(i+1)*100)
		if err != nil {
			return usageErrorf("--vm %q: %v", v, err)
		}
		o.vms = append(o.vms, spec)
	}
	return nil
}

// parseLabVM parses --vm NAME:SIZE[+DATA][,SIZE[+DATA]...].
func parseLabVM(s string, seed uint64) (lab.VMSpec, error) {
	name, disks, ok := strings.Cut(s, ":")
	if !ok || name == "" || disks == "" {
		return lab.VMSpec{}, fmt.Errorf("want NAME:SIZE[+DATA][,...], e.g. bench:16G+4G")
	}
	vm := lab.VMSpec{Name: name, PowerOn: true, CBT: true}
	for i, d := range strings.Split(disks, ",") {
		size, data, _ := strings.Cut(d, "+")
		c, err := units.ParseSize(size)
		if err != nil || c <= 0 || c%lab.MiB != 0 {
			return lab.VMSpec{}, fmt.Errorf("disk %d: size %q must be a positive multiple of 1M", i+1, size)
		}
		var n int64
		if data != "" {
			if n, err = units.ParseSize(data); err != nil || n > c {
				return lab.VMSpec{}, fmt.Errorf("disk %d: data %q must be a size no larger than the disk", i+1, data)
			}
		}
		vm.Disks = append(vm.Disks, lab.DiskSpec{Capacity: uint64(c), Data: uint64(n), Seed: seed + uint64(i)})
	}
	return vm, nil
}

const labLong = `Start the Sendense lab: a vCenter SIMULATOR (govmomi's vcsim), not a real
vCenter. It serves the vSphere API over TLS with fixed credentials and
virtual machines whose disks are sparse files, tracks the writes made to
them through the lab with Changed Block Tracking and answers
QueryChangedDiskAreas the way vSphere does. The fake VDDK reads the same
files (FAKEVDDK_ROOT). It is for tests and demos only.

The default inventory has lab-small (one 64 MiB disk, key 2000, powered on,
CBT off) and lab-multi (disks 2000, 2001, 2002 of 32, 16 and 48 MiB,
powered off, CBT on), with deterministic data and holes on their disks.

The lab prints its URL, user, password file, thumbprint, VDDK libdir and
FAKEVDDK_ROOT, and runs until SIGINT or SIGTERM; then it removes its files.
With --env FILE it also writes them as shell assignments:

  SENDENSE_VCENTER_URL, SENDENSE_VCENTER_USER, SENDENSE_VCENTER_PASSWORD_FILE,
  SENDENSE_VCENTER_THUMBPRINT, SENDENSE_VDDK_LIBDIR, FAKEVDDK_ROOT,
  SENDENSE_LAB_SOCKET, SENDENSE_LAB_DIR, SENDENSE_LAB_CA_FILE,
  SENDENSE_STATE_DIR (the lab directory's state/: jobs' VM locks)

The subcommands act on a running lab through its control socket
(--socket, default $SENDENSE_LAB_SOCKET). See docs/lab.md.

EXAMPLES
  Start the lab and use it from another shell:
    sendense lab --env /tmp/lab.env &
    . /tmp/lab.env
    sendense lab write lab-small 2000 1M 64K

  Simulate guest writes of zeros, and a trim:
    sendense lab write lab-multi 2001 0 128K --zero
    sendense lab write lab-multi 2001 1M 64K --trim

  Make the next two snapshots of lab-small fail:
    sendense lab fault CreateSnapshot lab-small --count 2

EXIT STATUS
  0    the lab ran and was stopped by SIGINT or SIGTERM
  1    the lab could not start (address in use, directory not writable)
  2    bad flags or arguments`

func newLabCommand() *cobra.Command {
	var opts labOptions
	cmd := &cobra.Command{
		Use:   "lab [flags]",
		Short: "Run the built-in vCenter simulator with CBT (for tests and demos)",
		Long:  labLong,
		Args:  cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.Finalize(cmd.Flags()); err != nil {
				return err
			}
			return opts.Check()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runLab(cmd.Context(), opts, gopts, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	opts.AddFlags(cmd.Flags())
	for _, sub := range labClientCommands() {
		cmd.AddCommand(sub)
	}
	return cmd
}

// labReady is what a started lab announces (text banner, --json status line).
type labReady struct {
	MessageType string `json:"message_type"`
	lab.Info
	VDDKLibDir string `json:"vddk_libdir"`
	Socket     string `json:"socket"`
	EnvFile    string `json:"env_file,omitempty"`
	// StateDir is the [state] dir the env file sets: the VM locks of jobs
	// against this lab (whose vCenter is new at every start), in the lab
	// directory, so that any user can run backups against the lab.
	StateDir string `json:"state_dir"`
}

func (r labReady) Write(w io.Writer) {
	fmt.Fprintf(w, "Sendense lab: a vCenter SIMULATOR (govmomi vcsim), not a real vCenter; for tests and demos only.\n")
	fmt.Fprintf(w, "  URL:            %s\n", r.URL)
	fmt.Fprintf(w, "  user:           %s\n", r.User)
	fmt.Fprintf(w, "  password file:  %s\n", r.PasswordFile)
	fmt.Fprintf(w, "  thumbprint:     %s\n", r.Thumbprint)
	fmt.Fprintf(w, "  CA file:        %s\n", r.CAFile)
	fmt.Fprintf(w, "  VDDK libdir:    %s (the fake VDDK)\n", r.VDDKLibDir)
	fmt.Fprintf(w, "  FAKEVDDK_ROOT:  %s\n", r.DatastoreRoot)
	fmt.Fprintf(w, "  control socket: %s\n", r.Socket)
	fmt.Fprintf(w, "  state dir:      %s (SENDENSE_STATE_DIR: the VM locks of jobs)\n", r.StateDir)
	if r.EnvFile != "" {
		fmt.Fprintf(w, "  env file:       %s\n", r.EnvFile)
	}
	fmt.Fprintf(w, "  CBT block size: %s, at most %d areas per QueryChangedDiskAreas answer\n", units.FormatSize(r.BlockSize), r.PageLimit)
	for _, v := range r.VMs {
		var disks []string
		for _, d := range v.Disks {
			disks = append(disks, fmt.Sprintf("%d (%s)", d.Key, units.FormatSize(d.Capacity)))
		}
		fmt.Fprintf(w, "  VM %-12s %-8s %s, disks %s\n", v.Name, v.Moref, v.Path, strings.Join(disks, ", "))
	}
	fmt.Fprintf(w, "Stop it with Ctrl-C (SIGINT) or SIGTERM.\n")
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// envFile returns the --env file's content.
func (r labReady) envFile() string {
	var b strings.Builder
	b.WriteString("# Sendense lab: a vCenter SIMULATOR, not a real vCenter. Source this file (. FILE).\n")
	for _, kv := range [][2]string{
		{"SENDENSE_VCENTER_URL", r.URL},
		{"SENDENSE_VCENTER_USER", r.User},
		{"SENDENSE_VCENTER_PASSWORD_FILE", r.PasswordFile},
		{"SENDENSE_VCENTER_THUMBPRINT", r.Thumbprint},
		{"SENDENSE_VDDK_LIBDIR", r.VDDKLibDir},
		{"FAKEVDDK_ROOT", r.DatastoreRoot},
		{"SENDENSE_LAB_SOCKET", r.Socket},
		{"SENDENSE_LAB_DIR", filepath.Dir(r.PasswordFile)},
		{"SENDENSE_LAB_CA_FILE", r.CAFile},
		{"SENDENSE_STATE_DIR", r.StateDir},
	} {
		fmt.Fprintf(&b, "export %s=%s\n", kv[0], shellQuote(kv[1]))
	}
	return b.String()
}

// defaultLibDir is the fake VDDK next to the sendense binary.
func defaultLibDir(executable func() (string, error)) string {
	exe, err := executable()
	if err != nil {
		return "fakevddk"
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	return filepath.Join(filepath.Dir(exe), "fakevddk")
}

// runLab runs the lab until ctx is done.
func runLab(ctx context.Context, opts labOptions, gopts globalOptions, stdout, stderr io.Writer) error {
	if opts.blockSize == 0 {
		if err := opts.Check(); err != nil {
			return err
		}
	}
	if !gopts.Verbose {
		log.SetOutput(io.Discard) // vcsim's own log lines
	}
	if opts.executable == nil {
		opts.executable = os.Executable
	}
	libdir := opts.LibDir
	if libdir == "" {
		libdir = defaultLibDir(opts.executable)
	}
	if abs, err := filepath.Abs(libdir); err == nil {
		libdir = abs
	}
	envPath := opts.Env
	if envPath != "" {
		abs, err := filepath.Abs(envPath)
		if err != nil {
			return err
		}
		envPath = abs
	}

	var vms []lab.VMSpec
	if len(opts.vms) > 0 {
		vms = append(lab.DefaultVMs(), opts.vms...)
	}
	l, err := lab.Start(ctx, lab.Options{Dir: opts.Dir, Listen: opts.Listen, BlockSize: opts.blockSize, PageLimit: opts.PageLimit, SnapshotLinks: opts.Links, VMs: vms})
	if err != nil {
		return err
	}
	defer l.Close()

	sock := filepath.Join(l.Dir(), "control.sock")
	if len(sock) > 107 {
		return fmt.Errorf("the control socket path %s is too long for a unix socket: use a shorter --dir", sock)
	}
	_ = os.Remove(sock) // a stale socket from a killed lab
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	defer os.Remove(sock)
	serveCtx, stopServe := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- l.Serve(serveCtx, ln) }()
	defer func() { stopServe(); <-served }()

	ready := labReady{MessageType: "status", Info: l.Info(), VDDKLibDir: libdir, Socket: sock, EnvFile: envPath,
		StateDir: filepath.Join(l.Dir(), "state")}
	if _, err := os.Lstat(ready.StateDir); os.IsNotExist(err) {
		defer os.RemoveAll(ready.StateDir) // made by the jobs: the lab's
	}
	if envPath != "" {
		if err := atomicfile.WriteFile(envPath, []byte(ready.envFile()), 0o644); err != nil {
			return fmt.Errorf("--env: %w", err)
		}
		defer os.Remove(envPath)
	}
	switch {
	case gopts.JSON:
		_ = json.NewEncoder(stdout).Encode(ready)
	case !gopts.Quiet:
		ready.Write(stdout)
	}
	if opts.ready != nil {
		opts.ready(ready)
	}

	select {
	case <-ctx.Done():
	case err := <-served:
		served <- err
		if err != nil {
			return fmt.Errorf("control socket: %w", err)
		}
	}
	if !gopts.Quiet && !gopts.JSON {
		fmt.Fprintln(stderr, "sendense lab: stopping the simulator and removing its files")
	}
	return nil
}

// labClientOptions are the flags shared by the lab's client subcommands.
type labClientOptions struct {
	Socket string
}

func (o *labClientOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&o.Socket, "socket", "", "control socket of the running lab (`PATH`) ($SENDENSE_LAB_SOCKET)")
}

func (o *labClientOptions) Finalize() error {
	if o.Socket == "" {
		o.Socket = os.Getenv("SENDENSE_LAB_SOCKET")
	}
	if o.Socket == "" {
		return usageErrorf("no lab to talk to: set --socket or SENDENSE_LAB_SOCKET (the env file of 'sendense lab --env FILE' sets it)")
	}
	return nil
}

const labClientExit = `

EXIT STATUS
  0    done
  1    the lab refused the request or is not running
  2    bad flags or arguments`

// labClientCommand builds one subcommand that sends a request.
func labClientCommand(use, short, long string, args cobra.PositionalArgs, addFlags func(*pflag.FlagSet), build func([]string) (lab.Request, error)) *cobra.Command {
	var copts labClientOptions
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long + labClientExit,
		Args:  args,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			return copts.Finalize()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := build(args)
			if err != nil {
				return err
			}
			return runLabClient(cmd.Context(), copts, gopts, cmd.OutOrStdout(), req)
		},
	}
	copts.AddFlags(cmd.Flags())
	if addFlags != nil {
		addFlags(cmd.Flags())
	}
	return cmd
}

// labResult is the --json form of a client subcommand's answer.
type labResult struct {
	MessageType string          `json:"message_type"`
	Op          string          `json:"op"`
	Text        string          `json:"text,omitempty"`
	Data        json.RawMessage `json:"data,omitempty"`
}

// runLabClient sends req to the lab at copts.Socket and prints the answer.
func runLabClient(ctx context.Context, copts labClientOptions, gopts globalOptions, stdout io.Writer, req lab.Request) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	resp, err := lab.Call(ctx, copts.Socket, req)
	if err != nil {
		return err
	}
	switch {
	case gopts.JSON:
		return json.NewEncoder(stdout).Encode(labResult{MessageType: "summary", Op: req.Op, Text: resp.Text, Data: resp.Data})
	case resp.Text != "":
		_, err = fmt.Fprintln(stdout, resp.Text)
	}
	return err
}

func parseKey(s string) (int32, error) {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil || n <= 0 {
		return 0, usageErrorf("DISK-KEY %q is not a device key such as 2000", s)
	}
	return int32(n), nil
}

func parseBytes(what, s string) (uint64, error) {
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, usageErrorf("%s: %v", what, err)
	}
	return uint64(n), nil
}

func labClientCommands() []*cobra.Command {
	var zero, trim bool
	var seed uint64
	write := labClientCommand("write VM DISK-KEY OFFSET LENGTH [--zero|--trim] [--seed N]",
		"Simulate a guest write into a running lab's disk (tracked by its CBT)",
		`Write LENGTH bytes at OFFSET of disk DISK-KEY of VM (name, moref or
inventory path) in the running lab, as the guest would: random data (the
stream of --seed, so a test can reproduce it), zeros (--zero: the area stays
allocated) or a trim (--trim: the area is deallocated and reads as zeros).
The lab's CBT records the write when tracking is active. OFFSET and LENGTH
are bytes, with an optional K, M, G suffix. This is a simulator.

EXAMPLES
  sendense lab write lab-small 2000 1M 64K --seed 7
  sendense lab write lab-multi 2002 0 4K --zero`,
		cobra.ExactArgs(4),
		func(f *pflag.FlagSet) {
			f.BoolVar(&zero, "zero", false, "write zeros instead of random data")
			f.BoolVar(&trim, "trim", false, "deallocate the area (a guest UNMAP) instead of writing")
			f.Uint64Var(&seed, "seed", 0, "seed of the random data (`N`)")
		},
		func(args []string) (lab.Request, error) {
			key, err := parseKey(args[1])
			if err != nil {
				return lab.Request{}, err
			}
			off, err := parseBytes("OFFSET", args[2])
			if err != nil {
				return lab.Request{}, err
			}
			length, err := parseBytes("LENGTH", args[3])
			if err != nil {
				return lab.Request{}, err
			}
			if zero && trim {
				return lab.Request{}, usageErrorf("--zero and --trim are mutually exclusive")
			}
			return lab.Request{Op: lab.OpWrite, VM: args[0], Key: key, Offset: off, Length: length, Zero: zero, Trim: trim, Seed: seed}, nil
		})

	var count int
	fault := labClientCommand("fault METHOD VM [--count N]",
		"Make the next calls of a vSphere method on a lab VM fail",
		`Make the next --count calls of the vSphere method METHOD on VM (or on its
snapshots) fail with a SystemError fault saying it was injected by the lab.
METHOD is a vSphere method name: CreateSnapshot, RemoveSnapshot_Task,
QueryChangedDiskAreas, ReconfigVM... (the _Task suffix is optional).

EXAMPLES
  sendense lab fault RemoveSnapshot lab-small
  sendense lab fault QueryChangedDiskAreas lab-multi --count 3`,
		cobra.ExactArgs(2),
		func(f *pflag.FlagSet) { f.IntVar(&count, "count", 1, "number of calls that fail (`N`)") },
		func(args []string) (lab.Request, error) {
			if count < 1 {
				return lab.Request{}, usageErrorf("--count must be at least 1, not %d", count)
			}
			return lab.Request{Op: lab.OpFault, Method: args[0], VM: args[1], Count: count}, nil
		})

	clearFaults := labClientCommand("clear-faults", "Remove every injected fault",
		"Remove every fault injected with 'sendense lab fault'.", cobra.NoArgs, nil,
		func([]string) (lab.Request, error) { return lab.Request{Op: lab.OpClearFaults}, nil })

	disks := labClientCommand("disks VM", "List a lab VM's disks and their flat files",
		`Print one line per disk of VM: device key, capacity in bytes, the flat file
the guest writes to (local path) and the datastore file name, separated by
tabs.

EXAMPLES
  sendense lab disks lab-multi | cut -f3`,
		cobra.ExactArgs(1), nil,
		func(args []string) (lab.Request, error) { return lab.Request{Op: lab.OpDisks, VM: args[0]}, nil })

	vms := labClientCommand("vms", "List the lab's VMs",
		"Print one line per VM: name, moref, inventory path, CBT state and number of disks (tab-separated).",
		cobra.NoArgs, nil,
		func([]string) (lab.Request, error) { return lab.Request{Op: lab.OpVMs}, nil })

	snapshot := labClientCommand("snapshot VM [NAME]", "Take a snapshot of a lab VM",
		`Take a snapshot of VM through the vSphere API, as a backup would. Prints the
snapshot moref on the first line, then one line per disk: device key,
changeId (empty when CBT was not active) and the file holding the disk's
content frozen at snapshot time, separated by tabs.

EXAMPLES
  snap=$(sendense lab snapshot lab-small | head -n1)
  changeid=$(sendense lab snapshot lab-small | awk -F'\t' '$1 == 2000 { print $2 }')`,
		cobra.RangeArgs(1, 2), nil,
		func(args []string) (lab.Request, error) {
			req := lab.Request{Op: lab.OpSnapshot, VM: args[0]}
			if len(args) == 2 {
				req.Name = args[1]
			}
			return req, nil
		})

	remove := labClientCommand("remove-snapshot SNAPSHOT", "Remove a snapshot of a lab VM",
		"Remove the snapshot with moref SNAPSHOT (e.g. snapshot-7) through the vSphere API, keeping its children.",
		cobra.ExactArgs(1), nil,
		func(args []string) (lab.Request, error) {
			return lab.Request{Op: lab.OpRemoveSnapshot, Snapshot: args[0]}, nil
		})

	cbt := labClientCommand("cbt VM on|off", "Enable or disable CBT on a lab VM",
		`Set changeTrackingEnabled of VM through the vSphere API. As on vSphere,
tracking starts at the next snapshot, and disabling it invalidates every
changeId of the VM's disks.`,
		cobra.ExactArgs(2), nil,
		func(args []string) (lab.Request, error) {
			switch args[1] {
			case "on":
				return lab.Request{Op: lab.OpCBT, VM: args[0], On: true}, nil
			case "off":
				return lab.Request{Op: lab.OpCBT, VM: args[0]}, nil
			}
			return lab.Request{}, usageErrorf("cbt: want on or off, not %q", args[1])
		})

	info := labClientCommand("info", "Describe the running lab",
		"Print the running lab's URL; with --json its whole description (credentials file, thumbprint, VMs).",
		cobra.NoArgs, nil,
		func([]string) (lab.Request, error) { return lab.Request{Op: lab.OpInfo}, nil })

	return []*cobra.Command{write, fault, clearFaults, disks, vms, snapshot, remove, cbt, info}
}
