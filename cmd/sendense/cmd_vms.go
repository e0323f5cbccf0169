package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sendense/capture/cbt"
	"github.com/sendense/capture/internal/agent"
	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/units"
	"github.com/sendense/capture/internal/vmselect"
	"github.com/sendense/capture/orchestrator"
)

func init() {
	rootCmd.AddCommand(newVMsCommand(), newVMCommand(), newCBTCommand())
}

// vcenterCommand builds a command that needs a vCenter session; run gets
// the logged-in client.
func vcenterCommand(cmd *cobra.Command, run func(ctx context.Context, c *cbt.Client, args []string, w io.Writer) error) *cobra.Command {
	var vf vcenterFlags
	vf.register(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cfg, err := loadConfig(cmd)
		if err != nil {
			return err
		}
		vf.apply(cmd.Flags(), cfg)
		if _, err := orchestrator.ResolveVCenter(cfg); err != nil {
			return usageErrorf("%v", err)
		}
		ctx := cmd.Context()
		client, _, err := orchestrator.Connect(ctx, cfg)
		if err != nil {
			return err
		}
		defer client.Close(context.WithoutCancel(ctx))
		err = run(ctx, client, args, cmd.OutOrStdout())
		return withSuggestions(ctx, client, args, err)
	}
	return cmd
}

// withSuggestions adds the closest VM names to a "VM not found" error
// about the command's VM argument.
func withSuggestions(ctx context.Context, c *cbt.Client, args []string, err error) error {
	if len(args) != 1 || !errors.Is(err, cbt.ErrNotFound) {
		return err
	}
	inv, lerr := c.ListVMs(ctx)
	if lerr != nil {
		return err
	}
	return vmselect.NotFound(inv, args[0])
}

const vcenterExitStatus = `
EXIT STATUS
  0  success
  1  an error (vCenter unreachable, login refused, VM not found…)
  2  bad flags, arguments or configuration`

func newVMsCommand() *cobra.Command {
	return vcenterCommand(&cobra.Command{
		Use:   "vms",
		Short: "List the virtual machines of vCenter",
		Long: `List every virtual machine of the vCenter or ESXi server: inventory path,
managed object id (moref), power state, whether Changed Block Tracking is
enabled, number of disks and their total size.

With --json, one "vm" line per VM: the VM object the agent API's GET
/api/v1/vms answers with (docs/api.md, Objects): cbt is {"enabled",
"supported"}, snapshots and disks are lists.

EXAMPLES
  sendense vms
  sendense vms --json | jq -r 'select(.cbt.enabled == false) | .path'
` + vcenterExitStatus,
		Args: cobra.NoArgs,
	}, func(ctx context.Context, c *cbt.Client, _ []string, w io.Writer) error {
		vms, err := c.ListVMs(ctx)
		if err != nil {
			return err
		}
		if gopts.JSON {
			for _, vm := range vms {
				if err := printJSON(w, "vm", vm); err != nil {
					return err
				}
			}
			return nil
		}
		t := newTable(w)
		fmt.Fprintln(t, "PATH\tMOREF\tPOWER\tCBT\tDISKS\tSIZE")
		for _, vm := range vms {
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%d\t%s\n", vm.Path, vm.Moref, vm.PowerState, onOff(vm.CBT.Enabled), len(vm.Disks), units.FormatSize(vm.Capacity))
		}
		return t.Flush()
	})
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func newVMCommand() *cobra.Command {
	vm := &cobra.Command{
		Use:   "vm",
		Short: "Show a virtual machine",
	}
	vm.AddCommand(vcenterCommand(&cobra.Command{
		Use:   "info VM",
		Short: "Show a VM's specifications and disk layout",
		Long: `Show a virtual machine's identity, power state, CBT state, snapshots and
disks (device key, label, capacity, backing file, UUID). A snapshot a
sendense job took shows its job and process; one named sendense-* without
sendense's owner marker is "foreign": a user's, never removed by a job
(see docs/snapshots-and-locks.md). With --json: the same VM object as
'sendense vms --json' and the API (docs/api.md, Objects).

VM is a managed object id (vm-42), an inventory path (/DC/vm/folder/name)
or a unique name.

EXAMPLES
  sendense vm info /DC0/vm/lab-small
  sendense vm info vm-42 --json
` + vcenterExitStatus,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *cbt.Client, args []string, w io.Writer) error {
		info, err := orchestrator.DescribeVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		if gopts.JSON {
			return printJSON(w, "vm_info", info)
		}
		fmt.Fprintf(w, "Name:        %s\nPath:        %s\nMoref:       %s\nPower state: %s\nCBT:         %s (supported: %v)\nSnapshots:   %d\n",
			info.Name, info.Path, info.Moref, info.PowerState, onOff(info.CBT.Enabled), info.CBT.Supported, len(info.Snapshots))
		for _, s := range info.Snapshots {
			fmt.Fprintf(w, "  snapshot %s  %s  %s%s\n", s.Moref, s.Name, s.Created.Format("2006-01-02 15:04:05"), snapshotNote(s))
		}
		t := newTable(w)
		fmt.Fprintln(t, "\nKEY\tLABEL\tCAPACITY\tFILE\tUUID")
		for _, d := range info.Disks {
			fmt.Fprintf(t, "%d\t%s\t%s\t%s\t%s\n", d.Key, d.Label, units.FormatSize(d.Capacity), d.FileName, d.UUID)
		}
		return t.Flush()
	}))
	return vm
}

func newCBTCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cbt",
		Short: "Show, enable or reset Changed Block Tracking of a VM",
	}
	var statusRepo repoDirFlag
	status := vcenterCommand(&cobra.Command{
		Use:   "status VM",
		Short: "Show whether CBT is enabled and the changeId each disk's next incremental starts from",
		Long: `Show the Changed Block Tracking state of a VM: enabled, supported, power
state, snapshots, and for each disk the changeId recorded by the VM's latest
backup in the repository (--repo, default [repository] path): the one the
next incremental starts from; none means the next backup of that disk is
full. Foreign snapshots (named sendense-* but not made by a sendense job)
are listed. With --json the object is the agent API's cbt-status answer
(docs/api.md).

EXAMPLES
  sendense cbt status lab-small
  sendense cbt status --repo /srv/backups --json db01 | jq .disks
` + vcenterExitStatus,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *cbt.Client, args []string, w io.Writer) error {
		vm, err := c.FindVM(ctx, args[0])
		if err != nil {
			return err
		}
		cfg := statusRepo.cfg
		if cfg == nil {
			cfg = config.Defaults()
		}
		svc := &orchestrator.Services{Config: cfg, Client: c, AcceptNewHostKey: statusRepo.tunnel.acceptNewHostKey,
			OnTunnelRetry: tunnelRetryStatus()}
		defer svc.CloseTunnels()
		st, err := agent.ReadCBTStatus(ctx, svc, vm, statusRepo.dir)
		if err != nil {
			return err
		}
		if gopts.JSON {
			return printJSON(w, "cbt_status", st)
		}
		fmt.Fprintf(w, "%s: CBT %s (supported: %v, power: %s, snapshots: %d)\n",
			st.VMPath, onOff(st.Enabled), st.Supported, st.PowerState, st.Snapshots)
		for _, s := range st.Foreign {
			fmt.Fprintf(w, "  snapshot %s  %s%s\n", s.Moref, s.Name, snapshotNote(s))
		}
		if st.RepoError != "" {
			fmt.Fprintf(w, "  repository %s: %s\n", st.Repository, st.RepoError)
		}
		for _, d := range st.Disks {
			next := "none: the next backup is full"
			if d.LastChangeID != "" {
				next = d.LastChangeID + " (backup " + st.LastBackupID + ")"
			}
			if st.Repository == "" {
				next = "unknown (no repository: --repo)"
			}
			fmt.Fprintf(w, "  disk %d (%s): %s, last changeId %s\n", d.Key, d.Label, units.FormatSize(d.Capacity), next)
		}
		return nil
	})
	statusRepo.register(status.Flags())
	status.PreRunE = func(cmd *cobra.Command, args []string) error {
		err := statusRepo.resolve(cmd)
		if err != nil && statusRepo.dir == "" { // no repository: vCenter's fields only
			return nil
		}
		return err
	}
	enable := vcenterCommand(&cobra.Command{
		Use:   "enable VM",
		Short: "Enable CBT on a VM",
		Long: `Enable Changed Block Tracking (ReconfigVM changeTrackingEnabled). vSphere
starts tracking at the next snapshot, so the next backup of each disk is
full; if the VM already had snapshots, they are not tracked.

EXAMPLES
  sendense cbt enable /DC0/vm/db01
` + vcenterExitStatus,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *cbt.Client, args []string, w io.Writer) error {
		vm, err := c.FindVM(ctx, args[0])
		if err != nil {
			return err
		}
		res, err := c.EnableCBT(ctx, vm)
		if err != nil {
			return err
		}
		if gopts.JSON {
			return printJSON(w, "cbt_enable", struct {
				VM string `json:"vm"`
				cbt.EnableResult
			}{vm.String(), res})
		}
		if res.AlreadyEnabled {
			fmt.Fprintf(w, "%s: CBT was already enabled\n", vm)
			return nil
		}
		fmt.Fprintf(w, "%s: CBT enabled; %s\n", vm, res.Notice)
		return nil
	})
	reset := vcenterCommand(&cobra.Command{
		Use:   "reset VM",
		Short: "Reset CBT on a VM (disable, stun, enable)",
		Long: `Reset Changed Block Tracking: disable it, stun the VM with a snapshot
create and remove so the tracking files are dropped, and enable it again.
Use it when CBT is suspected corrupt. Every earlier changeId becomes
invalid: the next backup of each disk is full.

EXAMPLES
  sendense cbt reset /DC0/vm/db01
` + vcenterExitStatus,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *cbt.Client, args []string, w io.Writer) error {
		vm, err := c.FindVM(ctx, args[0])
		if err != nil {
			return err
		}
		notice, err := c.ResetCBT(ctx, vm)
		if err != nil {
			return err
		}
		if gopts.JSON {
			return printJSON(w, "cbt_reset", map[string]string{"vm": vm.String(), "notice": notice})
		}
		fmt.Fprintf(w, "%s: CBT reset; %s\n", vm, strings.TrimSpace(notice))
		return nil
	})
	cmd.AddCommand(status, enable, reset)
	return cmd
}

// snapshotNote says whose a snapshot is, when sendense has a say.
func snapshotNote(s cbt.Snapshot) string {
	switch {
	case s.Foreign:
		return "  (foreign: named like a sendense job's but without its owner marker; never removed by sendense)"
	case s.Owner != nil:
		return fmt.Sprintf("  (sendense job %s, pid %d, started %s)", s.Owner.Job, s.Owner.PID, s.Owner.Started.Format(time.RFC3339))
	}
	return ""
}
