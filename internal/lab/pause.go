package lab

import (
	"strings"
	"sync"
)

// pauses are the pending Pause requests of a lab, by method name.
type pauses struct {
	mu sync.Mutex
	m  map[string]*pause
}

type pause struct {
	reached chan struct{} // closed when a call waits
	release chan struct{} // closed by the release function
	hit     bool
}

// Pause makes the next call of method (a vSphere method name such as
// "CreateSnapshot", "RemoveSnapshot_Task", "QueryChangedDiskAreas" or
// "Logout"; task methods with or without "_Task") wait, before the
// simulator runs it, until release is called; reached is closed once it
// waits. Tests use it to act (send a signal, count snapshots) while a job
// is in a given phase. Later calls of the method run normally; release is
// safe to call twice, and the lab's Close releases what still waits.
func (l *Lab) Pause(method string) (reached <-chan struct{}, release func()) {
	method = strings.TrimSpace(method)
	if taskMethods[method] {
		method += "_Task"
	}
	p := &pause{reached: make(chan struct{}), release: make(chan struct{})}
	l.pauses.mu.Lock()
	if l.pauses.m == nil {
		l.pauses.m = map[string]*pause{}
	}
	if old := l.pauses.m[method]; old != nil {
		close(old.release)
	}
	l.pauses.m[method] = p
	l.pauses.mu.Unlock()
	var once sync.Once
	return p.reached, func() {
		once.Do(func() {
			l.pauses.mu.Lock()
			if l.pauses.m[method] == p {
				delete(l.pauses.m, method)
			}
			l.pauses.mu.Unlock()
			close(p.release)
		})
	}
}

// wait blocks a call of method while a Pause holds it.
func (ps *pauses) wait(method string) {
	ps.mu.Lock()
	p := ps.m[method]
	if p == nil || p.hit {
		ps.mu.Unlock()
		return
	}
	p.hit = true
	close(p.reached)
	ps.mu.Unlock()
	<-p.release
}

// releaseAll lets every waiting call go (the lab stops).
func (ps *pauses) releaseAll() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for k, p := range ps.m {
		close(p.release)
		delete(ps.m, k)
	}
}
