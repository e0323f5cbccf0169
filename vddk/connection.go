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

// openCloseMu serialises ConnectEx, Open, Close and Disconnect across the
// process, as VDDK requires.
var openCloseMu sync.Mutex

// ConnectParams says where the disks are. With Server empty it is local
// mode: every VDDK connect parameter is NULL and Open takes local paths.
type ConnectParams struct {
	VM          string // VM moref, e.g. "vm-42" or "moref=vm-42" (vmxSpec "moref=vm-42")
	Server      string // vCenter/ESXi host; empty = local mode
	Port        uint32 // 0 = VDDK default (443)
	User        string
	Password    string // never logged
	Thumbprint  string // SHA-1 thumbprint of the server certificate
	NFCHostPort uint32 // 0 = VDDK default
	Snapshot    string // snapshot moref passed as snapshotRef, e.g. "snapshot-7"
	Transports  string // e.g. "nbd:nbdssl"; "" = VDDK default
}

// Connection is a VixDiskLib connection (ConnectEx). Close it after its
// disks.
type Connection struct {
	lib *Library

	mu    sync.Mutex
	c     C.VixDiskLibConnection // nil once closed
	disks map[*disk]struct{}
}

// Connect calls VixDiskLib_ConnectEx(params, readOnly=1, snapshotRef,
// transports). Init must have been called.
func (l *Library) Connect(p ConnectParams) (*Connection, error) {
	if !l.initialized() {
		return nil, errNotInitialized
	}
	remote := p.Server != ""
	vmx := p.VM
	if vmx != "" && !strings.HasPrefix(vmx, "moref=") {
		vmx = "moref=" + vmx
	}
	var cparams *C.VixDiskLibConnectParams
	{
		cs := []*C.char{}
		str := func(s string) *C.char {
			if s == "" {
				return nil
			}
			c := C.CString(s)
			cs = append(cs, c)
			return c
		}
		var cpass *C.char
		if remote {
			cpass = C.CString(p.Password)
			defer C.vdk_free_secret(cpass)
		}
		cparams = C.vdk_params_new(str(vmx), str(p.Server), str(p.Thumbprint),
			str(p.User), cpass, C.uint32_t(p.Port), C.uint32_t(p.NFCHostPort))
		for _, c := range cs {
			C.free(unsafe.Pointer(c))
		}
	}
	if cparams == nil {
		return nil, errors.New("vddk: out of memory")
	}
	defer C.vdk_params_free(cparams)
	var csnap, ctrans *C.char
	if p.Snapshot != "" {
		csnap = C.CString(p.Snapshot)
		defer C.free(unsafe.Pointer(csnap))
	}
	if p.Transports != "" {
		ctrans = C.CString(p.Transports)
		defer C.free(unsafe.Pointer(ctrans))
	}

	var conn C.VixDiskLibConnection
	openCloseMu.Lock()
	_, err := l.call(fnConnectEx, 0, func() string {
		if !remote {
			return fmt.Sprintf("local, readOnly=1, snapshotRef=%q, transports=%q", p.Snapshot, p.Transports)
		}
		return fmt.Sprintf("vmxSpec=%q server=%q port=%d nfcHostPort=%d thumbprint=%q user=%q password=<hidden> readOnly=1 snapshotRef=%q transports=%q",
			vmx, p.Server, p.Port, p.NFCHostPort, p.Thumbprint, p.User, p.Snapshot, p.Transports)
	}, func() C.struct_vdk_ret {
		return C.vdk_ConnectEx(l.c, cparams, csnap, ctrans, &conn)
	})
	openCloseMu.Unlock()
	if err != nil {
		return nil, err
	}
	return &Connection{lib: l, c: conn, disks: map[*disk]struct{}{}}, nil
}

// Close closes the connection's disks that are still open, then calls
// VixDiskLib_Disconnect. Closing twice is harmless.
func (c *Connection) Close() error {
	c.mu.Lock()
	conn := c.c
	c.c = nil // no more opens
	disks := make([]*disk, 0, len(c.disks))
	for d := range c.disks {
		disks = append(disks, d)
	}
	c.mu.Unlock()

	var errs []error
	for _, d := range disks {
		errs = append(errs, d.Close())
	}
	if conn == nil {
		return errors.Join(errs...)
	}
	openCloseMu.Lock()
	_, err := c.lib.call(fnDisconnect, 0, noArgs, func() C.struct_vdk_ret {
		return C.vdk_Disconnect(c.lib.c, conn)
	})
	openCloseMu.Unlock()
	return errors.Join(append(errs, err)...)
}

func (c *Connection) forget(d *disk) {
	c.mu.Lock()
	delete(c.disks, d)
	c.mu.Unlock()
}
