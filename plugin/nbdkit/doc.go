// Package nbdkit is the Go side of the Sendense nbdkit plugin: a thin cgo
// layer over nbdkit-plugin.h (API version 2).
//
// nbdkit loads a small C front (plugin/front), which loads the Go library
// built from this package and the repository's plugin.go after nbdkit has
// forked, and forwards the callbacks to the sendense_go_* functions exported
// here. A plugin registers itself with Register; each exported function
// turns C arguments into Go values, calls the Plugin or Connection, and
// turns Go errors (and panics) into nbdkit_error plus nbdkit_set_error.
//
// Naming: C callback .foo is exported as sendense_go_foo and implemented by
// the Go method Foo. Handles given to nbdkit are runtime/cgo.Handle values,
// never Go pointers, so C retains no Go memory.
//
// The nbdkit_* functions (nbdkit_error, nbdkit_debug, nbdkit_add_extent…)
// resolve at run time from the nbdkit executable that loaded the front, so
// this package links with unresolved symbols allowed.
package nbdkit
