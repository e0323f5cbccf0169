// Package lab is the Sendense vSphere lab: a vCenter SIMULATOR (govmomi's
// vcsim) with TLS, fixed credentials and virtual machines whose disks are
// real sparse flat files, plus a Changed Block Tracking tracker that answers
// QueryChangedDiskAreas from the writes made through the lab, the way
// vSphere does. Tests use it in-process; `sendense lab` runs it as a
// process for demos and shell tests. It is never a real vCenter.
//
// The fake VDDK (tests/fakevddk) reads the same files: set FAKEVDDK_ROOT to
// DatastoreRoot(). A snapshot's disks are frozen at snapshot time into
// "<dir>/<disk>-<snapshot moref>-flat.vmdk" (a copy, or with
// Options.SnapshotLinks a hard link until the next write through the lab),
// which the fake VDDK reads when it is given that snapshot.
//
// See docs/lab.md.
package lab

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// The lab's fixed credentials.
const (
	User     = "sendense@vsphere.local"
	Password = "sendense-lab"
)

// Datastore is the name of the lab's datastore.
const Datastore = "LocalDS_0"

// MiB is 1 MiB, for disk specs.
const MiB = 1 << 20

// Options configure Start. The zero value gives the default lab.
type Options struct {
	// Dir is the lab directory (datastores, CA file, password file). ""
	// means a new temporary directory, removed by Close. A given directory
	// is created if needed; Close removes what the lab put in it.
	Dir string
	// Listen is the address of the vSphere endpoint; default 127.0.0.1:0.
	Listen string
	// VMs to create; nil means DefaultVMs().
	VMs []VMSpec
	// BlockSize is the CBT block size in bytes (a power of two); default 64 KiB.
	BlockSize uint64
	// PageLimit is the maximum number of areas in one QueryChangedDiskAreas
	// answer; default 2000.
	PageLimit int
	// MaxWindow, when not 0, limits the bytes of the disk one
	// QueryChangedDiskAreas answer covers, so that clients see windows
	// without areas, as vSphere may answer.
	MaxWindow uint64
	// SnapshotLinks makes taking a snapshot cost next to nothing, as on
	// vSphere: a disk's frozen file is a hard link to its flat file until
	// the next write through the lab, which first gives the disk a copy
	// of its own. Without it the disk is copied at snapshot time. With it
	// a write made to a flat file directly (not through the lab) while a
	// snapshot shares it changes that snapshot too.
	SnapshotLinks bool
}

// VMSpec describes a lab VM.
type VMSpec struct {
	Name    string
	Folder  string // folder path under the datacenter's vm folder, e.g. "prod/db"; "" = directly in it
	Dir     string // directory in the datastore; default Name
	PowerOn bool
	CBT     bool // changeTrackingEnabled at creation (tracking starts at the first snapshot)
	Disks   []DiskSpec
}

// DiskSpec describes a lab disk. Disk i gets device key 2000+i and the file
// "[LocalDS_0] <dir>/disk<i+1>.vmdk".
type DiskSpec struct {
	Capacity uint64 // bytes, a multiple of 1 MiB
	Data     uint64 // bytes of deterministic initial data (rounded up to 1 MiB chunks)
	Seed     uint64 // seed of the initial data
}

// DefaultVMs is the default inventory: lab-small (one 64 MiB disk, powered
// on, CBT off) and lab-multi (three disks of 32, 16 and 48 MiB, powered off,
// CBT on).
func DefaultVMs() []VMSpec {
	return []VMSpec{
		{Name: "lab-small", PowerOn: true, Disks: []DiskSpec{{Capacity: 64 * MiB, Data: 24 * MiB, Seed: 1}}},
		{Name: "lab-multi", CBT: true, Disks: []DiskSpec{
			{Capacity: 32 * MiB, Data: 12 * MiB, Seed: 2},
			{Capacity: 16 * MiB, Data: 4 * MiB, Seed: 3},
			{Capacity: 48 * MiB, Data: 16 * MiB, Seed: 4},
		}},
	}
}

// Lab is a running lab.
type Lab struct {
	opts    Options
	dir     string
	tempDir bool
	dsRoot  string // FAKEVDDK_ROOT
	dsDir   string // the datastore's directory
	caFile  string
	pwFile  string

	model  *simulator.Model
	server *simulator.Server
	url    *url.URL
	thumb  string

	mu sync.Mutex // guards t, the disk files' content and the freezes
	t  *tracker

	ref types.ManagedObjectReference // of labHooks, as a simulator.RegisterObject

	opsMu  sync.Mutex
	client *govmomi.Client // the lab's own session, for control operations

	pauses pauses // Pause

	ready      atomic.Bool  // the inventory is built: adopt new VMs (adopt.go)
	adoptUntil atomic.Int64 // unix ns: look for new VMs before each call until then

	closeOnce sync.Once
}

// Start creates and starts a lab.
func Start(ctx context.Context, opts Options) (*Lab, error) {
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.VMs == nil {
		opts.VMs = DefaultVMs()
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = 64 << 10
	}
	if opts.BlockSize&(opts.BlockSize-1) != 0 || opts.BlockSize < 512 {
		return nil, fmt.Errorf("lab: block size %d is not a power of two of at least 512", opts.BlockSize)
	}
	if opts.PageLimit <= 0 {
		opts.PageLimit = 2000
	}
	l := &Lab{opts: opts, t: newTracker(opts.BlockSize)}
	l.ref = types.ManagedObjectReference{Type: "SendenseLab", Value: fmt.Sprintf("lab-%p", l)}
	var err error
	if opts.Dir == "" {
		if l.dir, err = os.MkdirTemp("", "sendense-lab-"); err != nil {
			return nil, err
		}
		l.tempDir = true
	} else {
		if l.dir, err = filepath.Abs(opts.Dir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(l.dir, 0o755); err != nil {
			return nil, err
		}
	}
	if err := l.start(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Lab) start(ctx context.Context) error {
	l.dsRoot = filepath.Join(l.dir, "datastores")
	l.dsDir = filepath.Join(l.dsRoot, Datastore)
	l.caFile = filepath.Join(l.dir, "ca.pem")
	l.pwFile = filepath.Join(l.dir, "password")
	if err := os.MkdirAll(l.dsDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(l.pwFile, []byte(Password+"\n"), 0o600); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(l.opts.Listen)
	if err != nil {
		return fmt.Errorf("lab: listen address %q: %v", l.opts.Listen, err)
	}
	cert, err := newCertificate(host, l.caFile)
	if err != nil {
		return fmt.Errorf("lab: making the certificate: %w", err)
	}

	m := simulator.VPX()
	m.Datacenter, m.Cluster, m.ClusterHost, m.Host = 1, 1, 1, 0
	m.Datastore, m.Machine, m.Portgroup = 0, 0, 0
	m.Autostart = false
	if err := m.Create(); err != nil {
		return fmt.Errorf("lab: creating the simulator model: %w", err)
	}
	l.model = m
	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	m.Service.Listen = &url.URL{Host: l.opts.Listen, User: url.UserPassword(User, Password)}
	m.Map().Handler = l.handle
	m.Map().AddHandler(labHooks{l})

	vc, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		return fmt.Errorf("lab: in-process client: %w", err)
	}
	if err := l.buildInventory(ctx, vc); err != nil {
		return err
	}
	l.ready.Store(true)

	l.server = m.Service.NewServer()
	u := *l.server.URL
	u.User = nil
	l.url = &u
	l.thumb = l.server.CertificateInfo().ThumbprintSHA1
	return nil
}

// Close stops the lab and removes its files.
func (l *Lab) Close() {
	l.closeOnce.Do(func() {
		l.pauses.releaseAll()
		l.opsMu.Lock()
		if l.client != nil {
			_ = l.client.Logout(context.Background())
			l.client = nil
		}
		l.opsMu.Unlock()
		if l.server != nil {
			l.server.Close()
		}
		if l.model != nil {
			l.model.Remove()
		}
		if l.tempDir {
			_ = os.RemoveAll(l.dir)
			return
		}
		for _, p := range []string{l.dsRoot, l.caFile, l.pwFile} {
			if p != "" {
				_ = os.RemoveAll(p)
			}
		}
	})
}

// URL returns the vSphere SDK URL (https://127.0.0.1:PORT/sdk), without
// credentials.
func (l *Lab) URL() *url.URL { u := *l.url; return &u }

// Thumbprint returns the SHA-1 thumbprint of the server certificate.
func (l *Lab) Thumbprint() string { return l.thumb }

// CAFile returns the PEM file of the (self-signed) server certificate.
func (l *Lab) CAFile() string { return l.caFile }

// PasswordFile returns a 0600 file holding Password.
func (l *Lab) PasswordFile() string { return l.pwFile }

// Dir returns the lab directory.
func (l *Lab) Dir() string { return l.dir }

// DatastoreRoot returns the directory to use as FAKEVDDK_ROOT: it holds one
// directory per datastore, named like the datastore.
func (l *Lab) DatastoreRoot() string { return l.dsRoot }

// BlockSize returns the CBT block size.
func (l *Lab) BlockSize() uint64 { return l.opts.BlockSize }

// PageLimit returns the maximum number of areas per QueryChangedDiskAreas answer.
func (l *Lab) PageLimit() int { return l.opts.PageLimit }

// Model returns the simulator model, for tests that need vcsim directly.
func (l *Lab) Model() *simulator.Model { return l.model }

// VMInfo describes a lab VM.
type VMInfo struct {
	Name  string     `json:"name"`
	Moref string     `json:"moref"`
	Path  string     `json:"path"` // inventory path
	Disks []DiskInfo `json:"disks"`
}

// DiskInfo describes a lab disk.
type DiskInfo struct {
	Key      int32  `json:"key"`
	FileName string `json:"file"` // "[LocalDS_0] lab-small/disk1.vmdk"
	Path     string `json:"path"` // the -flat.vmdk on the local file system
	Capacity uint64 `json:"capacity"`
}

// VMs lists the lab's VMs in creation order.
func (l *Lab) VMs() []VMInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []VMInfo
	for _, v := range l.vmList() {
		out = append(out, v.info())
	}
	return out
}

func (v *vmTrack) info() VMInfo {
	vi := VMInfo{Name: v.name, Moref: v.ref.Value, Path: v.path}
	for _, d := range v.disks {
		vi.Disks = append(vi.Disks, DiskInfo{Key: d.key, FileName: d.fileName, Path: d.flat, Capacity: d.capacity})
	}
	return vi
}

func (l *Lab) vmList() []*vmTrack {
	var vs []*vmTrack
	for _, v := range l.t.vms {
		vs = append(vs, v)
	}
	sort.Slice(vs, func(i, j int) bool { return morefLess(vs[i].ref.Value, vs[j].ref.Value) })
	return vs
}

func morefLess(a, b string) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	return a < b
}

// lookup finds a VM by moref, inventory path or unique name; l.mu is held.
func (l *Lab) lookup(spec string) (*vmTrack, error) {
	spec = strings.TrimPrefix(strings.TrimSpace(spec), "moref=")
	if v := l.t.vms[spec]; v != nil {
		return v, nil
	}
	var found []*vmTrack
	for _, v := range l.vmList() {
		if v.name == spec || v.path == spec {
			found = append(found, v)
		}
	}
	switch len(found) {
	case 0:
		var names []string
		for _, v := range l.vmList() {
			names = append(names, v.name)
		}
		return nil, fmt.Errorf("lab: no VM %q (VMs: %s)", spec, strings.Join(names, ", "))
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("lab: %d VMs are named %q: use the moref or the inventory path", len(found), spec)
}

func (l *Lab) disk(vm string, key int32) (*vmTrack, *diskTrack, error) {
	v, err := l.lookup(vm)
	if err != nil {
		return nil, nil, err
	}
	d := v.disk(key)
	if d == nil {
		var keys []string
		for _, d := range v.disks {
			keys = append(keys, fmt.Sprint(d.key))
		}
		return nil, nil, fmt.Errorf("lab: VM %s has no disk %d (disks: %s)", v.name, key, strings.Join(keys, ", "))
	}
	return v, d, nil
}

// VM returns the description of a VM given by name, moref or inventory path.
func (l *Lab) VM(vm string) (VMInfo, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.lookup(vm)
	if err != nil {
		return VMInfo{}, err
	}
	return v.info(), nil
}

// DiskPath returns the flat file of a disk: what the guest writes to.
func (l *Lab) DiskPath(vm string, key int32) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, d, err := l.disk(vm, key)
	if err != nil {
		return "", err
	}
	return d.flat, nil
}

// snapshotPath is where a disk's content is frozen for snapshot ref.
func snapshotPath(flat, ref string) string {
	return strings.TrimSuffix(flat, "-flat.vmdk") + "-" + ref + "-flat.vmdk"
}

// SnapshotPath returns the file holding a disk's content frozen at
// snapshot time ("<dir>/<disk>-<snapshot>-flat.vmdk").
func (l *Lab) SnapshotPath(vm string, key int32, snapshot string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, d, err := l.disk(vm, key)
	if err != nil {
		return "", err
	}
	s := l.t.snaps[snapshot]
	if s == nil || s.vm != v {
		return "", fmt.Errorf("lab: VM %s has no snapshot %s", v.name, snapshot)
	}
	return snapshotPath(d.flat, snapshot), nil
}

// ChangeID returns the changeId the lab gave disk key in snapshot ("" when
// tracking was not active).
func (l *Lab) ChangeID(snapshot string, key int32) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.t.snaps[snapshot]
	if s == nil {
		return "", fmt.Errorf("lab: no snapshot %s", snapshot)
	}
	sd := s.disks[key]
	if sd == nil {
		return "", fmt.Errorf("lab: snapshot %s has no disk %d", snapshot, key)
	}
	return sd.changeID(), nil
}

// Write writes data to a disk at off, as the guest would; the write is
// tracked by CBT when tracking is active.
func (l *Lab) Write(vm string, key int32, off uint64, data []byte) error {
	return l.write(vm, key, off, uint64(len(data)), func(path string) error { return writeAt(path, off, data) })
}

// WriteRandom writes length bytes of the deterministic random stream of
// seed to a disk at off.
func (l *Lab) WriteRandom(vm string, key int32, off, length, seed uint64) error {
	return l.write(vm, key, off, length, func(path string) error {
		return writeFill(path, off, length, randomFiller(seed))
	})
}

// WriteZeroes writes length zero bytes to a disk at off (the area stays
// allocated). CBT reports it as changed.
func (l *Lab) WriteZeroes(vm string, key int32, off, length uint64) error {
	return l.write(vm, key, off, length, func(path string) error {
		return writeFill(path, off, length, func(b []byte) { clear(b) })
	})
}

// Trim deallocates [off, off+length) of a disk, like a guest UNMAP: it then
// reads as zeros and is unallocated. CBT reports it as changed.
func (l *Lab) Trim(vm string, key int32, off, length uint64) error {
	return l.write(vm, key, off, length, func(path string) error { return punchHole(path, off, length) })
}

func (l *Lab) write(vm string, key int32, off, length uint64, do func(string) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, d, err := l.disk(vm, key)
	if err != nil {
		return err
	}
	if off > d.capacity || length > d.capacity-off {
		return fmt.Errorf("lab: write of %d bytes at %d is beyond the end of disk %d (capacity %d)", length, off, key, d.capacity)
	}
	if length == 0 {
		return nil
	}
	if err := unshare(d); err != nil {
		return fmt.Errorf("lab: writing disk %d: %w", key, err)
	}
	if err := do(d.flat); err != nil {
		return fmt.Errorf("lab: writing disk %d: %w", key, err)
	}
	l.t.noteWrite(d, off, length)
	return nil
}

// Client returns a govmomi client logged in to the lab as User (created on
// first use, closed by Close). Control operations use it.
func (l *Lab) Client(ctx context.Context) (*govmomi.Client, error) {
	l.opsMu.Lock()
	defer l.opsMu.Unlock()
	if l.client != nil {
		if us, err := l.client.SessionManager.UserSession(ctx); err == nil && us != nil {
			return l.client, nil
		}
		_ = l.client.Logout(ctx)
		l.client = nil
	}
	u := l.URL()
	u.User = url.UserPassword(User, Password)
	c, err := govmomi.NewClient(ctx, u, true) // it is our own server
	if err != nil {
		return nil, fmt.Errorf("lab: logging in to the simulator: %w", err)
	}
	l.client = c
	return c, nil
}

// vmObject returns the simulator's VM; only for use under its lock.
func (l *Lab) vmObject(ref types.ManagedObjectReference) *simulator.VirtualMachine {
	vm, _ := l.model.Map().Get(ref).(*simulator.VirtualMachine)
	return vm
}

var _ simulator.RegisterObject = labHooks{}
