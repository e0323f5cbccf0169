// Package childenv builds the environment of the processes sendense
// starts (nbdkit, qemu-img, qemu-nbd…): its own, minus the variables
// that hold secrets, such as the one [vcenter] password_env names. Every
// exec site sets cmd.Env = childenv.Environ(…).
package childenv

import (
	"os"
	"strings"
	"sync"
)

var (
	mu     sync.Mutex
	hidden = map[string]bool{}
)

// Hide keeps the variable name out of every child's environment.
func Hide(name string) {
	if name == "" {
		return
	}
	mu.Lock()
	hidden[name] = true
	mu.Unlock()
}

// Environ returns this process's environment without the hidden
// variables, with extra ("NAME=value") set over it.
func Environ(extra ...string) []string {
	mu.Lock()
	defer mu.Unlock()
	var out []string
	set := map[string]bool{}
	for _, kv := range extra {
		name, _, _ := strings.Cut(kv, "=")
		set[name] = true
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !hidden[name] && !set[name] {
			out = append(out, kv)
		}
	}
	for _, kv := range extra {
		name, _, _ := strings.Cut(kv, "=")
		if !hidden[name] {
			out = append(out, kv)
		}
	}
	return out
}
