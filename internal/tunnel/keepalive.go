package tunnel

import (
	"fmt"
	"time"
)

// keepAlive sends a keepalive@openssh.com request on c every interval
// (with at most one outstanding) and fails the Tunnel when Count
// consecutive intervals pass without an answer. Any answer counts: OpenSSH
// replies with a failure to requests it does not know.
func (t *Tunnel) keepAlive(c *conn) {
	ka := t.cfg.KeepAlive
	tick := time.NewTicker(ka.Interval)
	defer tick.Stop()
	answered := make(chan struct{}, 1)
	waiting, missed := false, 0
	for {
		select {
		case <-t.done:
			return
		case <-answered:
			waiting, missed = false, 0
		case <-tick.C:
			if waiting {
				missed++
				t.log.Warn("ssh: keepalive unanswered", "conn", c.id, "missed", missed, "of", ka.Count)
				if missed >= ka.Count {
					t.fail(&DeadError{Target: t.cfg.target(), Conn: c.id,
						Err: fmt.Errorf("no answer to %d keepalives in %v", missed, time.Duration(missed)*ka.Interval)})
					c.tcp.Close()
					return
				}
				continue
			}
			waiting = true
			go func() {
				if _, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil); err == nil {
					answered <- struct{}{}
				}
			}()
		}
	}
}
