// Package vddk drives VMware's VixDiskLib (VDDK) from Go. The library is
// never linked: Load dlopens $libdir/lib64/libvixDiskLib.so.N (N = 9, 8, 7,
// 6, like nbdkit-vddk-plugin) and resolves every function it uses from one
// table (stubs.h) that lists each function once as required or optional.
// A missing optional function turns the feature that needs it into
// ErrNotSupported or a documented fallback.
//
// # Naming between C and Go
//
// VixDiskLib_X is resolved into the function pointer X of struct vdk_lib
// and called through the C trampoline vdk_X (cgo cannot call function
// pointers). Every trampoline returns the VixError together with VDDK's
// text for it, fetched with GetErrorText and released with FreeErrorText
// inside the same C call. Every call goes through Library.call, which logs
// it (SetTrace), times it (Library.Stats) and turns a failure into *Error.
// No C type appears in the exported API.
//
// # Threads
//
// VDDK handles are not thread-safe: calls on one Disk are serialised by
// the Disk's mutex, while different Disks read concurrently. ConnectEx,
// Open, Close and Disconnect are serialised under one package-level lock,
// as VMware asks ("one designated thread should do all opens and closes")
// and as nbdkit-vddk-plugin does. InitEx starts threads: call
// Library.Init only in the process that will use VDDK (after nbdkit's
// fork). Buffers are lent to C for the duration of a call only.
//
// # Secrets
//
// Passwords are copied to C memory only for ConnectEx, wiped afterwards,
// and never logged or put in an error.
package vddk
