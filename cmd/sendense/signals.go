package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/sendense/capture/orchestrator"
)

// handleSignals makes SIGINT and SIGTERM cancel the returned context (jobs
// then remove their snapshots and keep nothing) and keeps a closed stdout
// or stderr (sendense backup --json … | head) from killing the process
// before its cleanup: with SIGPIPE handled, Go returns EPIPE from writes to
// fds 1 and 2 instead of dying (os/signal, "SIGPIPE"), and pipeWriter turns
// that into "stop printing". Children get the default SIGPIPE back at exec.
func handleSignals() (context.Context, context.CancelFunc) {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// pipeWriter writes to f until the reader goes away (EPIPE); from then on
// it discards what it is given, so printing never fails a job.
type pipeWriter struct {
	f      *os.File
	closed atomic.Bool
}

func newPipeWriter(f *os.File) *pipeWriter { return &pipeWriter{f: f} }

func (w *pipeWriter) Write(p []byte) (int, error) {
	if w.closed.Load() {
		return len(p), nil
	}
	n, err := w.f.Write(p)
	if errors.Is(err, syscall.EPIPE) {
		w.closed.Store(true)
		return len(p), nil
	}
	return n, err
}

// Fd lets isTerminal see the file.
func (w *pipeWriter) Fd() uintptr { return w.f.Fd() }

// jobOutcome is how one VM's backup or replication ended.
type jobOutcome struct {
	vm     string
	report *orchestrator.Report
	err    error
}

// interrupted is the result of a run of jobs that SIGINT or SIGTERM
// interrupted: it says for each VM what was kept, and returns nil when
// every job had committed before the interrupt took effect (exit 0),
// exit status 130 when none kept anything, else exit status 1.
func interrupted(kind string, outs []jobOutcome, stderr io.Writer) error {
	kept := 0
	var lines []string
	for _, o := range outs {
		if o.err == nil {
			kept++
		}
		lines = append(lines, interruptedLine(kind, o))
	}
	if len(outs) == 1 && kept == 0 {
		return &codedError{exitInterrupted, errors.New(lines[0])}
	}
	for _, l := range lines {
		fmt.Fprintf(stderr, "sendense: %s\n", l)
	}
	switch {
	case kept == len(outs):
		return nil
	case kept == 0:
		return &codedError{exitInterrupted, fmt.Errorf("interrupted: nothing of the %d %ss was kept", len(outs), kind)}
	}
	return &codedError{exitError, fmt.Errorf("interrupted: %d of %d %ss were committed before the interrupt, the others kept nothing", kept, len(outs), kind)}
}

// interruptedLine says what an interrupt left of one VM's job.
func interruptedLine(kind string, o jobOutcome) string {
	r := o.report
	switch {
	case o.err == nil && kind == "backup" && r != nil:
		return fmt.Sprintf("backup %s of %s was committed before the interrupt", r.BackupID, o.vm)
	case o.err == nil:
		return fmt.Sprintf("%s of %s was complete before the interrupt", kind, o.vm)
	case r == nil || r.Snapshot == "":
		return fmt.Sprintf("%s of %s interrupted before its snapshot was taken: nothing kept", kind, o.vm)
	case r.SnapshotLeft != "":
		return fmt.Sprintf("%s of %s interrupted: nothing kept, but its snapshot %s could not be removed (the next job of the VM removes it)", kind, o.vm, r.SnapshotLeft)
	case kind == "replication":
		return fmt.Sprintf("replication of %s interrupted: snapshot %s removed, nothing recorded (the targets may hold part of the new data; the next replication copies it again)", o.vm, r.Snapshot)
	}
	return fmt.Sprintf("%s of %s interrupted: snapshot %s removed, nothing kept", kind, o.vm, r.Snapshot)
}
