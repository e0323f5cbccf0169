package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"time"

	"github.com/sendense/capture/internal/copier"
	"github.com/sendense/capture/internal/extent"
	"github.com/sendense/capture/internal/nbd"
)

// Reconnector re-establishes a destination after its connection was lost
// (a new SSH connection and forward) and returns its new NBD URI.
type Reconnector func(ctx context.Context) (string, error)

// Resume policy: how often and how patiently a copy whose destination
// connection dropped is resumed.
var (
	resumeAttempts   = 6
	resumeFirstDelay = time.Second
	resumeMaxDelay   = 30 * time.Second
)

// isConnectionLoss reports whether err looks like the NBD connection
// itself broke (as opposed to the server refusing a request). libnbd
// says so by the handle's state (nbd.ErrDisconnected), whatever the
// message: a request issued just after the loss fails as "invalid
// state", EINVAL.
func isConnectionLoss(err error) bool {
	for _, e := range []error{nbd.ErrDisconnected, syscall.ENOTCONN, syscall.ECONNRESET, syscall.EPIPE, syscall.ESHUTDOWN, syscall.ECONNABORTED, syscall.ETIMEDOUT, io.EOF, io.ErrUnexpectedEOF} {
		if errors.Is(err, e) {
			return true
		}
	}
	msg := err.Error()
	for _, s := range []string{"not connected", "connection reset", "broken pipe", "server disconnected", "unexpected end of file", "EOF"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// copyResumable copies srcURI to dstURI; when the destination connection
// is lost and reconnect is set, it reconnects with exponential backoff and
// continues from the checkpoint: the ranges completed before the loss,
// made durable by a flush through the new connection (a server advertising
// multi-conn guarantees that a flush covers other connections' writes;
// without it nothing of the lost attempt is trusted). After the retry
// budget, the last error is returned.
func (j *vmJob) copyResumable(ctx context.Context, srcURI, dstURI string, opts copier.Options, reconnect Reconnector) (*copier.Result, error) {
	var (
		done   extent.List
		chunks []copier.Chunk
		total  copier.Stats
		timing copier.Timing
		delay  = resumeFirstDelay
	)
	for attempt := 1; ; attempt++ {
		opts.Skip = done
		res, err := copyURIs(ctx, srcURI, dstURI, opts)
		if res != nil {
			addStats(&total, res.Stats)
			timing.Add(res.Timing)
			res.Timing = timing
		}
		if err == nil {
			// Work is what every attempt did; skipped is what the last one
			// skipped besides the checkpoint, which earlier attempts copied.
			skipped := res.BytesSkipped - done.Bytes()
			res.Chunks = mergeChunks(chunks, res.Chunks)
			res.Stats = total
			res.BytesSkipped = skipped
			return res, nil
		}
		if reconnect == nil || !isConnectionLoss(err) || ctx.Err() != nil {
			return res, err
		}
		// Reconnect, within the budget: a failed reconnection costs an
		// attempt but is not followed by a copy to the old, dead address.
		var newURI string
		var rerr error
		for {
			if attempt > resumeAttempts {
				if rerr != nil {
					return res, fmt.Errorf("%w (gave up after %d reconnections; the last one failed: %v)", err, resumeAttempts, rerr)
				}
				return res, fmt.Errorf("%w (gave up after %d reconnections)", err, resumeAttempts)
			}
			j.notice("the connection to the destination was lost (%v): reconnecting in %v (attempt %d of %d)", err, delay, attempt, resumeAttempts)
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(delay):
			}
			delay = min(delay*2, resumeMaxDelay)
			if newURI, rerr = reconnect(ctx); rerr == nil {
				break
			}
			slog.Warn("reconnecting failed", "attempt", attempt, "err", rerr)
			attempt++
		}
		dstURI = newURI
		if res == nil {
			continue
		}
		if durable, why := flushThrough(dstURI); durable {
			done = extent.Normalize(append(done, res.Completed...))
			chunks = mergeChunks(chunks, within(res.Chunks, res.Completed))
			j.notice("resuming: %d bytes completed and flushed before the connection was lost are not copied again", done.Bytes())
		} else {
			j.notice("resuming from the last checkpoint: %s", why)
		}
	}
}

// flushThrough flushes the destination through a new connection; it
// reports whether that makes the writes of the lost connection durable.
func flushThrough(uri string) (bool, string) {
	dst, err := copier.OpenNBD(uri)
	if err != nil {
		return false, fmt.Sprintf("cannot reopen the destination: %v", err)
	}
	defer dst.Close()
	if !dst.CanMultiConn() {
		return false, "the destination does not advertise multi-conn, so a flush on a new connection does not cover the lost one's writes"
	}
	if err := dst.Flush(); err != nil {
		return false, fmt.Sprintf("flush failed: %v", err)
	}
	return true, ""
}

func addStats(t *copier.Stats, s copier.Stats) {
	t.BytesRead += s.BytesRead
	t.BytesWritten += s.BytesWritten
	t.BytesZeroed += s.BytesZeroed
	t.Seconds += s.Seconds
	if t.Seconds > 0 {
		t.MiBps = float64(t.BytesRead) / (1 << 20) / t.Seconds
	}
}

// within returns the chunks lying entirely inside l (normal form).
func within(chunks []copier.Chunk, l extent.List) []copier.Chunk {
	var out []copier.Chunk
	for _, c := range chunks {
		if i := l.Search(c.Offset); i < len(l) && l[i].Offset <= c.Offset && c.Offset+c.Length <= l[i].End() {
			out = append(out, c)
		}
	}
	return out
}

// mergeChunks merges two offset-sorted chunk lists.
func mergeChunks(a, b []copier.Chunk) []copier.Chunk {
	out := make([]copier.Chunk, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if a[0].Offset <= b[0].Offset {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return append(append(out, a...), b...)
}
