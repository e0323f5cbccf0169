package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/nbdtest"
	"github.com/spf13/pflag"
)

func TestCopyOptionsCheck(t *testing.T) {
	ok := func() copyOptions {
		return copyOptions{Connections: 4, Requests: 64, RequestSize: "256K", Rate: "0"}
	}
	for _, tc := range []struct {
		name   string
		change func(*copyOptions)
		bad    string
		size   int
		rate   int64
	}{
		{"defaults", func(o *copyOptions) {}, "", 256 << 10, 0},
		{"sizes", func(o *copyOptions) { o.RequestSize, o.Rate = "1M", "100M" }, "", 1 << 20, 100 << 20},
		{"smallest request", func(o *copyOptions) { o.RequestSize = "512" }, "", 512, 0},
		{"largest request", func(o *copyOptions) { o.RequestSize = "32M" }, "", 32 << 20, 0},
		{"request too large", func(o *copyOptions) { o.RequestSize = "64M" }, "--request-size", 0, 0},
		{"request not a power of two", func(o *copyOptions) { o.RequestSize = "300K" }, "--request-size", 0, 0},
		{"request unparsable", func(o *copyOptions) { o.RequestSize = "big" }, "--request-size", 0, 0},
		{"rate unparsable", func(o *copyOptions) { o.Rate = "fast" }, "--rate", 0, 0},
		{"automatic connections", func(o *copyOptions) { o.Connections = 0 }, "", 256 << 10, 0},
		{"negative connections", func(o *copyOptions) { o.Connections = -1 }, "--connections", 0, 0},
		{"no requests", func(o *copyOptions) { o.Requests = -1 }, "--requests", 0, 0},
		{"incremental onto zero", func(o *copyOptions) { o.Incremental, o.DestinationIsZero = true, true }, "--incremental", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ok()
			tc.change(&o)
			err := o.Check()
			if tc.bad != "" {
				var ce *codedError
				if err == nil || !strings.Contains(err.Error(), tc.bad) || !errors.As(err, &ce) || ce.code != exitUsage {
					t.Fatalf("Check = %v, want a usage error about %s", err, tc.bad)
				}
				return
			}
			if err != nil || o.requestSize != tc.size || o.rate != tc.rate {
				t.Fatalf("Check = %v, size %d rate %d", err, o.requestSize, o.rate)
			}
		})
	}
}

func TestCopyOptionsEnv(t *testing.T) {
	var o copyOptions
	fs := pflag.NewFlagSet("copy", pflag.ContinueOnError)
	o.AddFlags(fs)
	t.Setenv("SENDENSE_CONNECTIONS", "2")
	t.Setenv("SENDENSE_REQUEST_SIZE", "1M")
	t.Setenv("SENDENSE_RATE", "50M")
	if err := fs.Parse([]string{"--connections", "3"}); err != nil {
		t.Fatal(err)
	}
	if err := o.Finalize(fs); err != nil {
		t.Fatal(err)
	}
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	// A flag wins over its environment variable.
	if o.Connections != 3 || o.requestSize != 1<<20 || o.rate != 50<<20 || o.Requests != 64 {
		t.Fatalf("options %+v", o)
	}
	t.Setenv("SENDENSE_REQUESTS", "many")
	if err := o.Finalize(fs); err == nil || !strings.Contains(err.Error(), "SENDENSE_REQUESTS") {
		t.Fatalf("bad environment: %v", err)
	}
}

func TestCheckURI(t *testing.T) {
	for _, tc := range []struct {
		uri string
		bad string
	}{
		{"nbd://localhost", ""},
		{"nbd://host:10809/disk0", ""},
		{"nbds://host/disk0", ""},
		{"nbd+unix:///?socket=/run/s.sock", ""},
		{"nbd+unix:///exp?socket=/run/s.sock", ""},
		{"nbd+unix:///", "names no socket"},
		{"/run/s.sock", "not an NBD URI"},
		{"http://host/", "not an NBD URI"},
		{"nbd://[::1", "not a valid NBD URI"},
	} {
		err := checkURI("SRC", tc.uri)
		if (tc.bad == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.bad) {
			t.Errorf("checkURI(%q) = %v, want %q", tc.uri, err, tc.bad)
		}
	}
}

// copyTestServer starts "nbdkit -f -U SOCKET args..." and returns its URI.
func copyTestServer(t *testing.T, args ...string) string {
	t.Helper()
	_, uri := nbdtest.NBDKit(t, args...)
	return uri
}

func TestRunCopyJSON(t *testing.T) {
	src := copyTestServer(t, "-r", "sparse-random", "size=16M", "seed=1")
	dst := copyTestServer(t, "memory", "size=16M")
	opts := copyOptions{Connections: 2, Requests: 8, RequestSize: "64K", Rate: "0", Checksum: true, Progress: true}
	if err := opts.Check(); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := runCopy(context.Background(), opts, globalOptions{JSON: true}, &stdout, &stderr, []string{src, dst})
	if err != nil {
		t.Fatal(err)
	}
	var statuses int
	var sum map[string]any
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		switch m["message_type"] {
		case "status":
			statuses++
			if _, ok := m["percent_done"]; !ok {
				t.Fatalf("status line without percent_done: %q", line)
			}
		case "summary":
			sum = m
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
	if statuses == 0 || sum == nil {
		t.Fatalf("%d status lines, summary %v", statuses, sum)
	}
	total := sum["bytes_written"].(float64) + sum["bytes_zeroed"].(float64) + sum["bytes_skipped"].(float64)
	if total != 16<<20 || sum["connections"].(float64) != 2 || len(sum["sha256"].(string)) != 64 {
		t.Fatalf("summary %v", sum)
	}
	if stderr.Len() != 0 {
		t.Fatalf("stderr %q: the bar is for terminals only", stderr.String())
	}

	// Text form; --progress off a terminal is silent.
	stdout.Reset()
	opts.Checksum = false
	if err := runCopy(context.Background(), opts, globalOptions{}, &stdout, &stderr, []string{src, dst}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout.String(), "copied 16.0 MiB in ") || stderr.Len() != 0 {
		t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}

func TestCopyExitStatus(t *testing.T) {
	src := copyTestServer(t, "-r", "memory", "size=1M")
	small := copyTestServer(t, "memory", "size=512K")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"copy", src}, exitUsage, "accepts 2 arg"},
		{[]string{"copy", "--request-size", "3K", src, src}, exitUsage, "--request-size"},
		{[]string{"copy", src, "ftp://x/"}, exitUsage, "not an NBD URI"},
		{[]string{"copy", src, small}, exitError, "smaller than the source"},
		{[]string{"copy", src, src}, exitError, "read-only"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("sendense %v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.msg)
		}
		resetCopyFlags(t)
	}
}

// resetCopyFlags puts the copy command's flags back to their defaults, since
// the cobra command tree is global.
func resetCopyFlags(t *testing.T) {
	t.Helper()
	for _, c := range rootCmd.Commands() {
		if c.Name() != "copy" {
			continue
		}
		c.Flags().VisitAll(func(f *pflag.Flag) {
			f.Value.Set(f.DefValue)
			f.Changed = false
		})
	}
}
