package main

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sendense/capture/internal/tunnel"
)

// tunnelRetryStatus shows the failed attempts of an SSH connection that
// is retried: on a terminal one status line, updated at each attempt and
// removed when the dialing is over; otherwise one line on standard error
// at the first retry (the others are debug logs). The final error says
// when and why sendense gave up.
func tunnelRetryStatus() func(tunnel.Retry) {
	var mu sync.Mutex
	told := map[string]bool{}
	return func(r tunnel.Retry) {
		slot := "ssh " + r.Target
		if r.Attempt == 0 {
			ui.Set(slot, nil)
			return
		}
		cause := strings.TrimPrefix(r.Err.Error(), "ssh "+r.Target+": ")
		msg := fmt.Sprintf("ssh %s: attempt %d failed, retrying in %v, giving up in %v: %s", r.Target, r.Attempt,
			r.Wait.Round(100*time.Millisecond), r.Left.Round(time.Second), cause)
		if ui != nil {
			ui.Set(slot, []string{msg})
			return
		}
		mu.Lock()
		first := !told[r.Target]
		told[r.Target] = true
		mu.Unlock()
		if first && !gopts.Quiet && !gopts.JSON {
			fmt.Fprintf(errOut, "sendense: %v; retrying for up to %v\n", r.Err, r.Left.Round(time.Second))
			return
		}
		slog.Debug("ssh: connection failed, retrying", "ssh", r.Target, "attempt", r.Attempt, "retry_in", r.Wait, "give_up_in", r.Left, "err", r.Err)
	}
}
