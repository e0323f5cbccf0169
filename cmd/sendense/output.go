package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"golang.org/x/term"
)

// printJSON writes v as one JSON object per line, with a message_type
// field first (STYLE.md: --json output).
func printJSON(w io.Writer, messageType string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > 2 && b[0] == '{' {
		head := fmt.Sprintf(`{"message_type":%q,`, messageType)
		if string(b) == "{}" {
			head = fmt.Sprintf(`{"message_type":%q`, messageType)
		}
		b = append([]byte(head), b[1:]...)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// newTable returns a tab-aligned writer for text tables.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// isTerminal reports whether w is a terminal (progress bars only then).
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
