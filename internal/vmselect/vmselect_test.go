package vmselect

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sendense/capture/cbt"
)

func inventory() []cbt.VMInfo {
	var inv []cbt.VMInfo
	for i, p := range []string{
		"/DC0/vm/web01", "/DC0/vm/web02", "/DC0/vm/prod/db01", "/DC0/vm/prod/db02",
		"/DC0/vm/prod/eu/db03", "/DC1/vm/prod/app", "/DC1/vm/test/app", "/DC0/vm/production/x",
	} {
		inv = append(inv, cbt.VMInfo{VM: cbt.VM{Moref: "vm-" + string(rune('1'+i)), Name: p[strings.LastIndex(p, "/")+1:], Path: p}})
	}
	return inv
}

func names(vms []cbt.VM) string {
	var out []string
	for _, vm := range vms {
		out = append(out, vm.Path)
	}
	return strings.Join(out, " ")
}

func TestSelect(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
		err  string
	}{
		{Spec{Args: []string{"web01"}}, "/DC0/vm/web01", ""},
		{Spec{Args: []string{"web*"}}, "/DC0/vm/web01 /DC0/vm/web02", ""},
		{Spec{Args: []string{"/DC0/vm/prod/*"}}, "/DC0/vm/prod/db01 /DC0/vm/prod/db02", ""},
		{Spec{Args: []string{"vm-3", "moref=vm-1"}}, "/DC0/vm/prod/db01 /DC0/vm/web01", ""},
		{Spec{Args: []string{"db01", "db*"}}, "/DC0/vm/prod/db01 /DC0/vm/prod/db02 /DC0/vm/prod/eu/db03", ""},
		// Folders are recursive; a relative one is below any datacenter's VM folder.
		{Spec{Folders: []string{"/DC0/vm/prod"}}, "/DC0/vm/prod/db01 /DC0/vm/prod/db02 /DC0/vm/prod/eu/db03", ""},
		{Spec{Folders: []string{"prod"}, Exclude: []string{"db0[12]"}}, "/DC0/vm/prod/eu/db03 /DC1/vm/prod/app", ""},
		{Spec{All: true, Exclude: []string{"/DC0/*/*", "app"}}, "/DC0/vm/prod/db01 /DC0/vm/prod/db02 /DC0/vm/prod/eu/db03 /DC0/vm/production/x", ""},
		{Spec{Args: []string{"app"}}, "", "2 VMs are named"},
		{Spec{Args: []string{"wbe01"}}, "", `no VM named "wbe01"; did you mean web01? ('sendense vms' lists the VMs)`},
		{Spec{Args: []string{"zz*"}}, "", `pattern "zz*" matches no VM`},
		{Spec{Folders: []string{"nope"}}, "", "no VM below folder nope"},
		{Spec{Args: []string{"web01"}, Exclude: []string{"web*"}}, "", "no VM left"},
		{Spec{Args: []string{"[x"}}, "", "bad pattern"},
	} {
		got, err := Select(inventory(), tc.spec)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%+v: error %v, want %q", tc.spec, err, tc.err)
			}
		case err != nil:
			t.Errorf("%+v: %v", tc.spec, err)
		case names(got) != tc.want:
			t.Errorf("%+v: %s, want %s", tc.spec, names(got), tc.want)
		}
	}
	_, err := Select(inventory(), Spec{Args: []string{"nothing-like-it"}})
	if !errors.Is(err, cbt.ErrNotFound) || strings.Contains(err.Error(), "did you mean") {
		t.Fatalf("no suggestion expected: %v", err)
	}
}

func TestSuggest(t *testing.T) {
	inv := inventory()
	if got := Suggest(inv, "db1"); !slices.Contains(got, "db01") {
		t.Errorf("db1: %v", got)
	}
	if got := Suggest(inv, "/DC0/vm/prod/db0l"); len(got) == 0 || got[0] != "/DC0/vm/prod/db01" {
		t.Errorf("path: %v", got)
	}
	if got := Suggest(inv, "prod"); len(got) != 0 {
		t.Errorf("prod: %v", got)
	}
}

func TestNeedsInventory(t *testing.T) {
	if (Spec{Args: []string{"db01", "/DC0/vm/x", "vm-4"}}).NeedsInventory() {
		t.Error("plain names need no inventory")
	}
	for _, s := range []Spec{{Args: []string{"db*"}}, {All: true}, {Folders: []string{"x"}}, {Args: []string{"a"}, Exclude: []string{"b"}}} {
		if !s.NeedsInventory() {
			t.Errorf("%+v needs the inventory", s)
		}
	}
}
