// Package nbd is our cgo binding to the system libnbd (libnbd.h 1.14, from
// Debian's libnbd-dev): a client for NBD servers such as nbdkit and
// qemu-nbd.
//
// A Handle is one connection. Create one with Create (which already asks
// for the base:allocation metadata context, so BlockStatus works when the
// server offers it), then Connect with an NBD URI, ConnectUnix or
// ConnectSocket. Synchronous calls (Pread, Pwrite, Zero, Trim, Flush,
// BlockStatus) wait for the server's reply. The Aio* calls only start a
// command: the caller names it with a tag, drives the socket (PollEvents,
// Notify, or Poll) and collects finished commands with Completions, so one
// connection can keep many requests in flight. Their buffers are Buffers,
// which live in C memory so that libnbd may keep using them after the call
// returns.
//
// Naming: nbd_<verb> becomes Handle.<Verb> (nbd_pread → Pread, nbd_aio_zero
// → AioZero, nbd_can_multi_conn → CanMultiConn, nbd_is_read_only →
// IsReadOnly, nbd_connect_uri → Connect). LIBNBD_CMD_FLAG_X becomes CmdFlagX.
// No C type appears in the API.
//
// Errors are *Error values carrying the libnbd function, libnbd's own
// message and errno; errors.Is(err, syscall.EIO) and friends work. Each C
// wrapper (wrappers.c) copies the thread-local error inside the same C call,
// so a goroutine moving between OS threads cannot lose it. A failure on a
// handle whose connection was lost matches ErrDisconnected, decided by
// libnbd's state rather than by the message.
//
// libnbd handles are thread-safe, but a synchronous call holds the handle
// for its whole duration, so calls from several goroutines on one handle
// serialise. For parallelism use several requests in flight (Aio*) and, when
// the server allows multi-conn, several handles.
package nbd
