package main

import (
	"bytes"
	"flag"
	"os"
	"testing"
)

var updateDocs = flag.Bool("update", false, "rewrite docs/cli.md")

// TestCLIReferenceUpToDate keeps docs/cli.md true to the code; run
// `make docs` (go test ./cmd/sendense -run CLIReference -update) after
// changing a command or flag.
func TestCLIReferenceUpToDate(t *testing.T) {
	var b bytes.Buffer
	writeReference(&b, rootCmd)
	const path = "../../docs/cli.md"
	if *updateDocs {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	have, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run make docs)", err)
	}
	if !bytes.Equal(have, b.Bytes()) {
		t.Fatal("docs/cli.md is out of date: run make docs")
	}
}
