package vddk

/*
#include <stdlib.h>
#include "vixdisklib.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"
)

// openCloseMu serialises ConnectEx, Create, Open, Close and Disconnect
// across the process, as VDDK requires.
var openCloseMu sync.Mutex

// ConnectParams says where the disks are. With Server empty it is local
// mode: every VDDK connect parameter is NULL and Open takes local paths.
type ConnectParams struct {
	// VM is the vmxSpec: "moref=vm-42" (a bare moref gets the "moref="
	// prefix) or any other form VDDK accepts, passed as is.
	VM          string
	Server      string // vCenter/ESXi host; empty = local mode
	Port        uint32 // 0 = VDDK default (443)
	User        string
	Password    string // never logged; may be empty
	Cookie      string // a vSphere session cookie: VIXDISKLIB_CRED_SESSIONID; never logged
	Thumbprint  string // SHA-1 thumbprint of the server certificate, passed as is
	NFCHostPort uint32 // 0 = VDDK default
	Snapshot    string // snapshot moref passed as snapshotRef, e.g. "snapshot-7"
	Transports  string // e.g. "nbd:nbdssl"; "" = VDDK default
	ReadOnly    bool   // ConnectEx's readOnly: only read-only disks are opened
}

// Connection is a VixDiskLib connection (ConnectEx). Close it after its
// disks.
type Connection struct {
	lib      *Library
	readOnly bool

	mu     sync.Mutex
	c      C.VixDiskLibConnection // VDDK's handle: opaque, may be NULL
	closed bool
	params *C.struct_vdk_params // lives as long as the connection
	disks  map[*disk]struct{}
}

// vmxSpec is the vmxSpec of VM: a bare moref gets "moref=".
func vmxSpec(vm string) string {
	if vm != "" && !strings.Contains(vm, "=") {
		return "moref=" + vm
	}
	return vm
}

// Connect calls VixDiskLib_ConnectEx(params, readOnly, snapshotRef,
// transports). Init must have been called. The connect parameters come
// from AllocateConnectParams when this VDDK has it and live until Close.
func (l *Library) Connect(p ConnectParams) (*Connection, error) {
	if !l.initialized() {
		return nil, errNotInitialized
	}
	remote := p.Server != ""
	vmx := vmxSpec(p.VM)
	var cparams *C.struct_vdk_params
	{
		var cs []*C.char
		str := func(s string) *C.char {
			if s == "" {
				return nil
			}
			c := C.CString(s)
			cs = append(cs, c)
			return c
		}
		var cpass, ccookie *C.char
		if remote {
			cpass = C.CString(p.Password)
			defer C.vdk_free_secret(cpass)
			if p.Cookie != "" {
				ccookie = C.CString(p.Cookie)
				defer C.vdk_free_secret(ccookie)
			}
		}
		cparams = C.vdk_params_new(l.c, str(vmx), str(p.Server), str(p.Thumbprint),
			str(p.User), cpass, ccookie, C.uint32_t(p.Port), C.uint32_t(p.NFCHostPort))
		for _, c := range cs {
			C.free(unsafe.Pointer(c))
		}
	}
	if cparams == nil {
		return nil, errors.New("vddk: out of memory")
	}
	var csnap, ctrans *C.char
	if p.Snapshot != "" {
		csnap = C.CString(p.Snapshot)
		defer C.free(unsafe.Pointer(csnap))
	}
	if p.Transports != "" {
		ctrans = C.CString(p.Transports)
		defer C.free(unsafe.Pointer(ctrans))
	}
	ro := 0
	if p.ReadOnly {
		ro = 1
	}

	var conn C.VixDiskLibConnection
	openCloseMu.Lock()
	_, err := l.call(fnConnectEx, 0, func() string {
		if !remote {
			return fmt.Sprintf("local, readOnly=%d, snapshotRef=%q, transports=%q", ro, p.Snapshot, p.Transports)
		}
		creds := fmt.Sprintf("user=%q password=<hidden>", p.User)
		if p.Cookie != "" {
			creds = fmt.Sprintf("cookie=<hidden> user=%q key=<hidden>", p.User)
		}
		return fmt.Sprintf("vmxSpec=%q server=%q port=%d nfcHostPort=%d thumbprint=%q %s readOnly=%d snapshotRef=%q transports=%q",
			vmx, p.Server, p.Port, p.NFCHostPort, p.Thumbprint, creds, ro, p.Snapshot, p.Transports)
	}, func() C.struct_vdk_ret {
		return C.vdk_ConnectEx(l.c, cparams.p, C.int(ro), csnap, ctrans, &conn)
	})
	openCloseMu.Unlock()
	if err != nil {
		C.vdk_params_free(l.c, cparams)
		return nil, err
	}
	return &Connection{lib: l, readOnly: p.ReadOnly, c: conn, params: cparams, disks: map[*disk]struct{}{}}, nil
}

// Close closes the connection's disks that are still open, then calls
// VixDiskLib_Disconnect. Closing twice is harmless.
func (c *Connection) Close() error {
	c.mu.Lock()
	conn, closed := c.c, c.closed
	c.closed = true // no more opens
	disks := make([]*disk, 0, len(c.disks))
	for d := range c.disks {
		disks = append(disks, d)
	}
	c.mu.Unlock()

	var errs []error
	for _, d := range disks {
		errs = append(errs, d.Close())
	}
	if closed {
		return errors.Join(errs...)
	}
	openCloseMu.Lock()
	_, err := c.lib.call(fnDisconnect, 0, noArgs, func() C.struct_vdk_ret {
		return C.vdk_Disconnect(c.lib.c, conn)
	})
	openCloseMu.Unlock()
	C.vdk_params_free(c.lib.c, c.params)
	c.params = nil
	return errors.Join(append(errs, err)...)
}

func (c *Connection) forget(d *disk) {
	c.mu.Lock()
	delete(c.disks, d)
	c.mu.Unlock()
}
