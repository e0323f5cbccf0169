package offsite

import (
	"context"
	"sync"
)

// parallel runs fn(0..n-1) on at most conns goroutines; it stops handing
// out work when ctx is done.
func parallel(ctx context.Context, conns, n int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(max(conns, 1), n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}
