package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// The control socket lets another process (`sendense lab write`, shell
// tests) act on a running lab: one JSON Request per connection, one JSON
// Response back.

// Control operations.
const (
	OpWrite          = "write"           // VM, Key, Offset, Length, Zero|Trim|Seed
	OpFault          = "fault"           // Method, VM, Count
	OpClearFaults    = "clear-faults"    //
	OpDisks          = "disks"           // VM
	OpVMs            = "vms"             //
	OpSnapshot       = "snapshot"        // VM, Name
	OpRemoveSnapshot = "remove-snapshot" // Snapshot
	OpCBT            = "cbt"             // VM, On
	OpInfo           = "info"            //
)

// Request is a control request.
type Request struct {
	Op       string `json:"op"`
	VM       string `json:"vm,omitempty"`
	Key      int32  `json:"key,omitempty"`
	Offset   uint64 `json:"offset,omitempty"`
	Length   uint64 `json:"length,omitempty"`
	Zero     bool   `json:"zero,omitempty"`
	Trim     bool   `json:"trim,omitempty"`
	Seed     uint64 `json:"seed,omitempty"`
	Method   string `json:"method,omitempty"`
	Count    int    `json:"count,omitempty"`
	Name     string `json:"name,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	On       bool   `json:"on,omitempty"`
}

// Response is a control response: Text for people and scripts, Data (a
// JSON value) for --json.
type Response struct {
	Error string          `json:"error,omitempty"`
	Text  string          `json:"text,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// Info is what OpInfo returns (and what `sendense lab` prints).
type Info struct {
	Simulator     bool     `json:"simulator"` // always true: this is not a vCenter
	URL           string   `json:"url"`
	User          string   `json:"user"`
	PasswordFile  string   `json:"password_file"`
	Thumbprint    string   `json:"thumbprint"`
	CAFile        string   `json:"ca_file"`
	DatastoreRoot string   `json:"fakevddk_root"`
	BlockSize     uint64   `json:"block_size"`
	PageLimit     int      `json:"page_limit"`
	VMs           []VMInfo `json:"vms"`
}

// Info describes the lab.
func (l *Lab) Info() Info {
	return Info{
		Simulator: true, URL: l.URL().String(), User: User, PasswordFile: l.pwFile,
		Thumbprint: l.thumb, CAFile: l.caFile, DatastoreRoot: l.dsRoot,
		BlockSize: l.opts.BlockSize, PageLimit: l.opts.PageLimit, VMs: l.VMs(),
	}
}

// Serve answers control requests on ln until ln is closed or ctx is done.
func (l *Lab) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			var req Request
			var resp Response
			if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
				resp.Error = fmt.Sprintf("bad control request: %v", err)
			} else {
				resp = l.Do(ctx, req)
			}
			_ = json.NewEncoder(conn).Encode(resp)
		}()
	}
}

func errResponse(err error) Response { return Response{Error: err.Error()} }

func dataResponse(text string, v any) Response {
	b, err := json.Marshal(v)
	if err != nil {
		return errResponse(err)
	}
	return Response{Text: text, Data: b}
}

// Do executes one control request.
func (l *Lab) Do(ctx context.Context, req Request) Response {
	switch req.Op {
	case OpWrite:
		var err error
		what := "random data"
		switch {
		case req.Zero && req.Trim:
			return Response{Error: "write: --zero and --trim are mutually exclusive"}
		case req.Zero:
			what = "zeros"
			err = l.WriteZeroes(req.VM, req.Key, req.Offset, req.Length)
		case req.Trim:
			what = "a hole (trim)"
			err = l.Trim(req.VM, req.Key, req.Offset, req.Length)
		default:
			what = fmt.Sprintf("random data (seed %d)", req.Seed)
			err = l.WriteRandom(req.VM, req.Key, req.Offset, req.Length, req.Seed)
		}
		if err != nil {
			return errResponse(err)
		}
		return dataResponse(fmt.Sprintf("wrote %d bytes of %s to %s disk %d at offset %d", req.Length, what, req.VM, req.Key, req.Offset), req)
	case OpFault:
		if err := l.InjectFault(req.Method, req.VM, req.Count); err != nil {
			return errResponse(err)
		}
		n := max(req.Count, 1)
		return dataResponse(fmt.Sprintf("the next %d call(s) of %s on %s will fail", n, req.Method, req.VM), req)
	case OpClearFaults:
		l.ClearFaults()
		return Response{Text: "injected faults cleared"}
	case OpDisks:
		v, err := l.VM(req.VM)
		if err != nil {
			return errResponse(err)
		}
		var sb strings.Builder
		for _, d := range v.Disks {
			fmt.Fprintf(&sb, "%d\t%d\t%s\t%s\n", d.Key, d.Capacity, d.Path, d.FileName)
		}
		return dataResponse(strings.TrimSuffix(sb.String(), "\n"), v.Disks)
	case OpVMs:
		var sb strings.Builder
		vms := l.VMs()
		for _, v := range vms {
			cbt := "off"
			if on, _ := l.CBTEnabled(v.Moref); on {
				cbt = "on"
			}
			fmt.Fprintf(&sb, "%s\t%s\t%s\tcbt=%s\tdisks=%d\n", v.Name, v.Moref, v.Path, cbt, len(v.Disks))
		}
		return dataResponse(strings.TrimSuffix(sb.String(), "\n"), vms)
	case OpSnapshot:
		name := req.Name
		if name == "" {
			name = "lab-" + time.Now().UTC().Format("20060102T150405")
		}
		si, err := l.CreateSnapshot(ctx, req.VM, name)
		if err != nil {
			return errResponse(err)
		}
		var sb strings.Builder
		sb.WriteString(si.Moref)
		for _, d := range si.Disks {
			fmt.Fprintf(&sb, "\n%d\t%s\t%s", d.Key, d.ChangeID, d.Path)
		}
		return dataResponse(sb.String(), si)
	case OpRemoveSnapshot:
		if err := l.RemoveSnapshot(ctx, req.Snapshot); err != nil {
			return errResponse(err)
		}
		return Response{Text: "removed snapshot " + req.Snapshot}
	case OpCBT:
		if err := l.SetCBT(ctx, req.VM, req.On); err != nil {
			return errResponse(err)
		}
		state := "disabled"
		if req.On {
			state = "enabled (tracking starts at the next snapshot)"
		}
		return Response{Text: fmt.Sprintf("CBT %s on %s", state, req.VM)}
	case OpInfo:
		return dataResponse(fmt.Sprintf("Sendense lab (a vCenter simulator) at %s", l.URL()), l.Info())
	}
	return Response{Error: fmt.Sprintf("unknown control operation %q", req.Op)}
}

// Call sends one request to the control socket at path.
func Call(ctx context.Context, path string, req Request) (Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Response{}, fmt.Errorf("cannot reach the lab's control socket %s (is `sendense lab` running?): %w", path, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return Response{}, err
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("reading the lab's answer: %w", err)
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}
