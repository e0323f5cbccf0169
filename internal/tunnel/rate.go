package tunnel

import (
	"context"

	"golang.org/x/time/rate"
)

// limiter is the token bucket of Config.Rate shared by all forwards; a nil
// *limiter does not limit.
type limiter struct {
	l     *rate.Limiter
	burst int
}

func newLimiter(bytesPerSec int64) *limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	// A burst of 1/20 s of traffic (within 16 KiB..256 KiB) keeps the
	// stream smooth without costing a wakeup per packet.
	burst := int(min(max(bytesPerSec/20, 16<<10), 256<<10))
	return &limiter{l: rate.NewLimiter(rate.Limit(bytesPerSec), burst), burst: burst}
}

// chunk is how many bytes to move per read: at most a burst.
func (l *limiter) chunk(n int) int {
	if l == nil || n <= l.burst {
		return n
	}
	return l.burst
}

// wait blocks until n bytes may pass.
func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		k := min(n, l.burst)
		if err := l.l.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
