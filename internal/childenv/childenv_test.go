package childenv

import (
	"slices"
	"testing"
)

func TestEnviron(t *testing.T) {
	t.Setenv("CHILDENV_SECRET", "hunter2")
	t.Setenv("CHILDENV_PLAIN", "x")
	if env := Environ(); !slices.Contains(env, "CHILDENV_SECRET=hunter2") {
		t.Fatal("a variable not hidden is missing")
	}
	Hide("CHILDENV_SECRET")
	env := Environ("CHILDENV_PLAIN=y", "LD_LIBRARY_PATH=/x")
	for _, kv := range env {
		if kv == "CHILDENV_SECRET=hunter2" || kv == "CHILDENV_PLAIN=x" {
			t.Fatalf("%s in %v", kv, env)
		}
	}
	if !slices.Contains(env, "CHILDENV_PLAIN=y") || !slices.Contains(env, "LD_LIBRARY_PATH=/x") {
		t.Fatalf("extra variables missing: %v", env)
	}
}
