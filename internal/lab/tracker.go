package lab

import (
	"crypto/rand"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/sendense/capture/internal/extent"
	"github.com/vmware/govmomi/vim25/types"
)

// The tracker mimics vSphere's Changed Block Tracking for the lab's disks.
//
// Per disk it keeps a tracking epoch (a UUID, new every time CBT is enabled)
// and a sequence number. Writes made through the lab while tracking is
// active are recorded as (sequence, block). Tracking becomes active at the
// first snapshot after CBT was enabled (vSphere needs a stun/unstun cycle);
// that snapshot and every later one get the changeId "UUID/sequence" and
// bump the sequence, so the writes between two snapshots carry a sequence in
// (older.seq, newer.seq]. Disabling CBT forgets the epoch and its history,
// so earlier changeIds fail, as they do on vSphere.
//
// The tracker is not safe for concurrent use: the Lab's mutex guards it.
type tracker struct {
	blockSize uint64
	vms       map[string]*vmTrack   // by VM moref
	snaps     map[string]*snapTrack // by snapshot moref
}

type vmTrack struct {
	ref     types.ManagedObjectReference
	name    string
	path    string // inventory path
	enabled bool   // config.changeTrackingEnabled as last seen
	disks   []*diskTrack
}

type diskTrack struct {
	key      int32
	fileName string // "[LocalDS_0] lab-small/disk1.vmdk"
	flat     string // absolute path of the -flat.vmdk
	capacity uint64
	shared   bool // flat is also a snapshot's frozen file (a hard link): copy before writing

	uuid    string // tracking epoch; "" while CBT is off
	active  bool   // tracking started (a snapshot was taken since enabling)
	seq     uint64 // sequence of the writes being recorded
	changes map[uint64]map[uint64]struct{}
}

type snapTrack struct {
	ref    string
	parent string // the VM's current snapshot when this one was taken
	vm     *vmTrack
	disks  map[int32]*snapDisk
}

type snapDisk struct {
	frozen   string // the disk's content at snapshot time
	capacity uint64
	uuid     string // "" when tracking was not active at snapshot time
	seq      uint64
}

func (s *snapDisk) changeID() string {
	if s.uuid == "" {
		return ""
	}
	return fmt.Sprintf("%s/%d", s.uuid, s.seq)
}

func newTracker(blockSize uint64) *tracker {
	return &tracker{blockSize: blockSize, vms: map[string]*vmTrack{}, snaps: map[string]*snapTrack{}}
}

func (v *vmTrack) disk(key int32) *diskTrack {
	for _, d := range v.disks {
		if d.key == key {
			return d
		}
	}
	return nil
}

// newEpochUUID returns a CTK-style UUID: "52 xx xx xx xx xx xx xx-xx xx xx xx xx xx xx xx".
func newEpochUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[0] = 0x52
	var sb strings.Builder
	for i, c := range b {
		switch {
		case i == 8:
			sb.WriteByte('-')
		case i > 0:
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%02x", c)
	}
	return sb.String()
}

// setEnabled records the VM's changeTrackingEnabled. Enabling starts a new
// epoch on every disk (tracking starts at the next snapshot); disabling
// drops the epoch and its history.
func (t *tracker) setEnabled(v *vmTrack, on bool) {
	if v.enabled == on {
		return
	}
	v.enabled = on
	for _, d := range v.disks {
		d.active, d.seq, d.changes = false, 0, nil
		d.uuid = ""
		if on {
			d.uuid = newEpochUUID()
		}
	}
}

// noteWrite records a write of [off, off+length) to d.
func (t *tracker) noteWrite(d *diskTrack, off, length uint64) {
	if !d.active || length == 0 {
		return
	}
	if d.changes == nil {
		d.changes = map[uint64]map[uint64]struct{}{}
	}
	set := d.changes[d.seq]
	if set == nil {
		set = map[uint64]struct{}{}
		d.changes[d.seq] = set
	}
	for b := off / t.blockSize; b <= (off+length-1)/t.blockSize; b++ {
		set[b] = struct{}{}
	}
}

// snapshot records a new snapshot of v; frozen gives the path of each
// disk's frozen content. It returns the snapshot's changeIds by disk key.
func (t *tracker) snapshot(v *vmTrack, ref string, frozen map[int32]string) *snapTrack {
	s := &snapTrack{ref: ref, vm: v, disks: map[int32]*snapDisk{}}
	for _, d := range v.disks {
		sd := &snapDisk{frozen: frozen[d.key], capacity: d.capacity}
		if d.uuid != "" {
			if !d.active {
				d.active, d.seq = true, 1
			}
			sd.uuid, sd.seq = d.uuid, d.seq
			d.seq++
		}
		s.disks[d.key] = sd
	}
	t.snaps[ref] = s
	return s
}

// qfault is a vSphere fault with its message.
type qfault struct {
	msg   string
	fault types.BaseMethodFault
}

func (f *qfault) Error() string { return f.msg }

func cbtFault(file, format string, a ...any) *qfault {
	msg := fmt.Sprintf(format, a...)
	f := &types.FileFault{File: file}
	f.FaultMessage = []types.LocalizableMessage{{Key: "vim.hostd.vmsvc.cbt.cannotGetChanges", Message: msg}}
	return &qfault{msg: msg, fault: f}
}

func invalidArgument(prop, format string, a ...any) *qfault {
	return &qfault{
		msg:   "A specified parameter was not correct: " + prop + ": " + fmt.Sprintf(format, a...),
		fault: &types.InvalidArgument{InvalidProperty: prop},
	}
}

// queryLimits bound one QueryChangedDiskAreas answer.
type queryLimits struct {
	pageLimit int    // at most this many areas
	maxWindow uint64 // at most this many bytes of the disk (0 = no limit)
}

// query answers QueryChangedDiskAreas for disk key of snapshot snapRef of
// VM v. allocated lists the allocated areas of a file (for changeId "*").
func (t *tracker) query(v *vmTrack, snapRef string, key int32, start int64, changeID string,
	lim queryLimits, allocated func(string) (extent.List, error)) (types.DiskChangeInfo, *qfault) {

	var none types.DiskChangeInfo
	s := t.snaps[snapRef]
	if s == nil || s.vm != v {
		return none, &qfault{msg: fmt.Sprintf("snapshot %s of VM %s not found", snapRef, v.name),
			fault: &types.ManagedObjectNotFound{Obj: types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snapRef}}}
	}
	d := v.disk(key)
	sd := s.disks[key]
	if d == nil || sd == nil {
		return none, invalidArgument("deviceKey", "VM %s has no disk %d in snapshot %s", v.name, key, snapRef)
	}
	ctk := strings.TrimSuffix(d.fileName, ".vmdk") + "-ctk.vmdk"
	if !v.enabled {
		return none, cbtFault(ctk, "change tracking is not enabled on VM %s (vim.hostd.vmsvc.cbt.noTrack)", v.name)
	}
	if sd.uuid == "" {
		return none, cbtFault(ctk, "change tracking was not active on disk %d of VM %s when snapshot %s was taken "+
			"(CBT was off, or enabled after it; tracking starts at the next snapshot): take a new snapshot and do a full backup",
			key, v.name, snapRef)
	}
	if d.uuid != sd.uuid {
		return none, cbtFault(ctk, "change tracking of disk %d of VM %s was reset or disabled after snapshot %s was taken: "+
			"its changes are no longer known", key, v.name, snapRef)
	}
	if start < 0 || uint64(start) >= sd.capacity {
		return none, invalidArgument("startOffset", "%d is not inside disk %d (capacity %d bytes)", start, key, sd.capacity)
	}
	var areas extent.List
	if strings.TrimSpace(changeID) == "*" {
		alloc, err := allocated(sd.frozen)
		if err != nil {
			return none, cbtFault(ctk, "reading the allocation of disk %d of snapshot %s: %v", key, snapRef, err)
		}
		areas = extent.RoundOut(alloc, t.blockSize, sd.capacity)
	} else {
		uuid, seq, err := splitChangeID(changeID)
		if err != nil {
			return none, invalidArgument("changeId", "%v", err)
		}
		if normUUID(uuid) != normUUID(sd.uuid) {
			return none, cbtFault(ctk, "changeId %q is not valid for disk %d of VM %s: its UUID is not the disk's current "+
				"tracking epoch (%s); CBT was reset or enabled again since that changeId (or it is from another disk): "+
				"a full backup is needed", changeID, key, v.name, sd.uuid)
		}
		if seq > sd.seq {
			return none, cbtFault(ctk, "changeId %q is newer than snapshot %s of disk %d (changeId %s)", changeID, snapRef, key, sd.changeID())
		}
		areas = t.changedBlocks(d, seq, sd.seq, sd.capacity)
	}
	return page(areas, uint64(start), sd.capacity, lim), nil
}

// changedBlocks returns the blocks written with a sequence in (from, to].
func (t *tracker) changedBlocks(d *diskTrack, from, to, capacity uint64) extent.List {
	var blocks []uint64
	seen := map[uint64]struct{}{}
	for seq, set := range d.changes {
		if seq <= from || seq > to {
			continue
		}
		for b := range set {
			if _, ok := seen[b]; !ok {
				seen[b] = struct{}{}
				blocks = append(blocks, b)
			}
		}
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i] < blocks[j] })
	var out extent.List
	for _, b := range blocks {
		off := b * t.blockSize
		if off >= capacity {
			continue
		}
		length := min(t.blockSize, capacity-off)
		if n := len(out); n > 0 && out[n-1].End() == off {
			out[n-1].Length += length
			continue
		}
		out = append(out, extent.Extent{Offset: off, Length: length})
	}
	return out
}

// page cuts the answer for one call: the areas from start on, at most
// lim.pageLimit of them and within lim.maxWindow bytes; the window ends at
// the end of the last area returned when the page is full.
func page(areas extent.List, start, capacity uint64, lim queryLimits) types.DiskChangeInfo {
	end := capacity
	if lim.maxWindow > 0 && start+lim.maxWindow < end {
		end = start + lim.maxWindow
	}
	in := areas.Clip(start, end-start)
	if lim.pageLimit > 0 && len(in) > lim.pageLimit {
		in = in[:lim.pageLimit]
		end = in[len(in)-1].End()
	}
	info := types.DiskChangeInfo{StartOffset: int64(start), Length: int64(end - start)}
	for _, e := range in {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: int64(e.Offset), Length: int64(e.Length)})
	}
	return info
}

func splitChangeID(s string) (string, uint64, error) {
	s = strings.TrimSpace(s)
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return "", 0, fmt.Errorf("malformed changeId %q (want UUID/sequence or *)", s)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s[i+1:]), 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("malformed changeId %q (want UUID/sequence or *)", s)
	}
	return s[:i], n, nil
}

func normUUID(s string) string {
	return strings.ToLower(strings.NewReplacer(" ", "", "-", "").Replace(s))
}

// forget removes snapshot ref and returns the files to delete.
func (t *tracker) forget(ref string) []string {
	s := t.snaps[ref]
	if s == nil {
		return nil
	}
	delete(t.snaps, ref)
	var files []string
	for _, sd := range s.disks {
		if sd.frozen != "" {
			files = append(files, sd.frozen)
		}
	}
	return files
}
