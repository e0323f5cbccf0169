package main

import (
	"errors"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/tunnel"
	"github.com/sendense/capture/orchestrator"
)

// childCommand is the command line of the child process whose failure
// err reports (qemu-img, qemu-nbd, a remote command over SSH), secrets
// redacted; "" when err is not such a failure. --verbose prints it.
// nbdkit's failures carry their command line themselves.
func childCommand(err error) string {
	var qe *qemu.ExitError
	var te *tunnel.ExitError
	switch {
	case errors.As(err, &qe):
		return orchestrator.RedactArgs(append([]string{qe.Tool}, qe.Args...))
	case errors.As(err, &te):
		return "ssh " + te.Target + " " + orchestrator.RedactArgs([]string{te.Cmd})
	}
	return ""
}
