package vddk

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "vixdisklib.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"unsafe"
)

// Library is a loaded libvixDiskLib. Load returns the same *Library for
// the same file, so Init/Exit state is per process, as VDDK requires.
type Library struct {
	path    string // the .so loaded
	libdir  string // the libdir= it came from (passed to InitEx)
	version int    // the VDDK major of its file name
	c       *C.struct_vdk_lib
	stats   [numFns]callCounters

	initMu sync.Mutex
	inited bool
	exited bool
}

var (
	loadMu sync.Mutex
	loaded = map[string]*Library{}
)

// Find returns the path of the libvixDiskLib that Load would use and its
// VDDK major: for N = 9, 8, 7, 6, the first of
// $libdir/lib64/libvixDiskLib.so.N and $libdir/libvixDiskLib.so.N that
// exists (nbdkit-vddk-plugin's order; loader.c, shared with the C front).
// It does not dlopen.
func Find(libdir string) (string, error) {
	p, _, err := find(libdir)
	return p, err
}

func find(libdir string) (string, int, error) {
	if libdir == "" {
		return "", 0, errors.New("vddk: libdir is empty: set libdir= to the VDDK directory (the one holding lib64/)")
	}
	clibdir := C.CString(libdir)
	defer C.free(unsafe.Pointer(clibdir))
	var path [4096]C.char
	var tried [8192]C.char
	n := C.vdk_find(clibdir, &path[0], C.size_t(len(path)), &tried[0], C.size_t(len(tried)))
	if n == 0 {
		return "", 0, fmt.Errorf("vddk: no libvixDiskLib in libdir %s: tried %s; "+
			"set libdir= to the directory that contains lib64/libvixDiskLib.so.N",
			libdir, C.GoString(&tried[0]))
	}
	return C.GoString(&path[0]), int(n), nil
}

// Load finds the library under libdir (see Find), dlopens it
// (RTLD_NOW|RTLD_LOCAL; it is never unloaded) and resolves every function
// in stubs.h. A missing required function is an error naming it; missing
// optional ones are recorded (see Symbols).
func Load(libdir string) (*Library, error) {
	path, version, err := find(libdir)
	if err != nil {
		return nil, err
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}

	loadMu.Lock()
	defer loadMu.Unlock()
	if l := loaded[path]; l != nil {
		return l, nil
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var errbuf [1024]C.char
	var cl *C.struct_vdk_lib
	switch C.vdk_load(cpath, &cl, &errbuf[0], C.size_t(len(errbuf))) {
	case 0:
	case -2:
		return nil, fmt.Errorf("vddk: %s lacks required function(s) %s: "+
			"this is not a usable VDDK (need VDDK 6.5 or later)", path, C.GoString(&errbuf[0]))
	default:
		return nil, fmt.Errorf("vddk: cannot load %s: %s", path, C.GoString(&errbuf[0]))
	}
	if abs, err := filepath.Abs(libdir); err == nil {
		libdir = abs
	}
	l := &Library{path: path, libdir: libdir, version: version, c: cl}
	for _, s := range l.Symbols() {
		if !s.Present {
			debugf("%s: optional %s is missing", path, s.Name)
		}
	}
	loaded[path] = l
	return l, nil
}

// Path returns the file that was loaded.
func (l *Library) Path() string { return l.path }

// Version returns the VDDK major of the file loaded (6, 7, 8 or 9).
func (l *Library) Version() int { return l.version }

// Symbol tells whether one stubs.h function was found.
type Symbol struct {
	Name     string // e.g. "VixDiskLib_QueryAllocatedBlocks"
	Required bool
	Present  bool
}

// Symbols lists every function of stubs.h and whether it was found.
func (l *Library) Symbols() []Symbol {
	out := make([]Symbol, numFns)
	for i := range out {
		out[i] = Symbol{fnNames[i], fnRequired[i], l.has(fnID(i))}
	}
	return out
}

func (l *Library) has(id fnID) bool { return C.vdk_fn_present(l.c, C.int(id)) != 0 }

// Init calls VixDiskLib_InitEx(6, 5, log, warn, panic, libdir, configFile)
// once; later calls do nothing and return nil. configFile "" passes NULL.
// VDDK may be initialised only once per process: after Exit, Init fails.
func (l *Library) Init(configFile string) error {
	l.initMu.Lock()
	defer l.initMu.Unlock()
	if l.inited {
		return nil
	}
	if l.exited {
		return errors.New("vddk: VixDiskLib_Exit was called; VDDK cannot be initialised again in this process")
	}
	clibdir := C.CString(l.libdir)
	defer C.free(unsafe.Pointer(clibdir))
	var cconfig *C.char
	if configFile != "" {
		cconfig = C.CString(configFile)
		defer C.free(unsafe.Pointer(cconfig))
	}
	_, err := l.call(fnInitEx, 0,
		func() string { return fmt.Sprintf("6, 5, libDir=%q, configFile=%q", l.libdir, configFile) },
		func() C.struct_vdk_ret { return C.vdk_InitEx(l.c, clibdir, cconfig) })
	if err != nil {
		return err
	}
	l.inited = true
	return nil
}

func (l *Library) initialized() bool {
	l.initMu.Lock()
	defer l.initMu.Unlock()
	return l.inited
}

// Exit calls VixDiskLib_Exit if Init succeeded. Close every Connection
// first.
func (l *Library) Exit() {
	l.initMu.Lock()
	defer l.initMu.Unlock()
	if !l.inited {
		return
	}
	l.call(fnExit, 0, noArgs, func() C.struct_vdk_ret { return C.vdk_Exit(l.c) })
	l.inited = false
	l.exited = true
}
