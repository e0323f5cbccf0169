// Command tunnelbench is the helper of bench/tunnel.sh:
//
//	tunnelbench sshd DIR
//	    start sshd (internal/sshtest) with its files in DIR, print the
//	    shell assignments port=, user=, key=, known_hosts= and close
//	    standard output; run until SIGTERM or SIGINT.
//	tunnelbench copy [-connections N] [-rate BYTES] [-cipher NAME] PORT USER KEY KNOWN_HOSTS SOCKET -- CMD ARG...
//	    dial 127.0.0.1:PORT with internal/tunnel, forward the remote
//	    unix socket SOCKET, run CMD with every "{}" argument replaced by
//	    the forward's NBD URI, then close; exit with CMD's status.
//	tunnelbench nbdwrite FILE URI
//	    write FILE to the NBD server at URI (nbd+unix:///?socket=PATH),
//	    see nbdwrite.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"syscall"

	"github.com/sendense/capture/internal/sshtest"
	"github.com/sendense/capture/internal/tunnel"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tunnelbench sshd DIR | copy [flags] PORT USER KEY KNOWN_HOSTS SOCKET -- CMD... | nbdwrite FILE URI")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "sshd":
		err = sshd(os.Args[2:])
	case "copy":
		err = copyCmd(os.Args[2:])
	case "nbdwrite":
		err = nbdwrite(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tunnelbench:", err)
		os.Exit(1)
	}
}

func sshd(args []string) error {
	if len(args) != 1 {
		return errors.New("sshd DIR")
	}
	s, err := sshtest.New(args[0], sshtest.Options{})
	if err != nil {
		return err
	}
	defer s.Stop()
	fmt.Printf("port=%d\nuser=%s\nkey=%s\nknown_hosts=%s\n", s.Port, s.User, s.UserKeyFile, s.KnownHostsFile)
	os.Stdout.Close()
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
	return nil
}

func copyCmd(args []string) error {
	fs := flag.NewFlagSet("copy", flag.ContinueOnError)
	conns := fs.Int("connections", 0, "SSH connections (0: the default)")
	rate := fs.Int64("rate", 0, "bytes per second (0: unlimited)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the tunnel to this file")
	traceFile := fs.String("trace", "", "write an execution trace of the tunnel to this file")
	cipher := fs.String("cipher", "", "the only cipher to offer (default: tunnel.DefaultCiphers)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	a := fs.Args()
	if len(a) < 7 || a[5] != "--" {
		return errors.New("copy [flags] PORT USER KEY KNOWN_HOSTS SOCKET -- CMD ARG...")
	}
	port, err := strconv.Atoi(a[0])
	if err != nil {
		return err
	}
	if *cpuprofile != "" {
		pf, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(pf)
		defer pprof.StopCPUProfile()
	}
	if *traceFile != "" {
		tf, err := os.Create(*traceFile)
		if err != nil {
			return err
		}
		trace.Start(tf)
		defer trace.Stop()
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	ctx := context.Background()
	cfg := tunnel.Config{
		Host: "127.0.0.1", Port: port, User: a[1], KeyFile: a[2], KnownHosts: a[3],
		Connections: *conns, Rate: *rate,
	}
	if *cipher != "" {
		cfg.Ciphers = []string{*cipher}
	}
	t, err := tunnel.Dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer t.Close()
	f, err := t.ForwardUnix(ctx, a[4])
	if err != nil {
		return err
	}
	argv := append([]string(nil), a[6:]...)
	for i := range argv {
		if argv[i] == "{}" {
			argv[i] = f.URI()
		}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}
