package extent

// Block-status types, bit-compatible with NBD's base:allocation context and
// nbdkit's NBDKIT_EXTENT_* flags.
const (
	Data uint32 = 0      // allocated data
	Hole uint32 = 1 << 0 // NBD_STATE_HOLE: not allocated
	Zero uint32 = 1 << 1 // NBD_STATE_ZERO: reads as zeroes
)

// Typed is an extent with a block-status type.
type Typed struct {
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
	Type   uint32 `json:"type"`
}

// End returns the first byte after the extent.
func (t Typed) End() uint64 { return t.Offset + t.Length }

// Map is a contiguous block-status map: each extent starts where the
// previous one ended and neighbours have different types.
type Map []Typed

// Append adds [off, off+length) of type typ to m, merging it with the last
// extent when that one has the same type and ends at off. It panics if the
// new extent does not start where m ends, which would be a bug.
func (m Map) Append(off, length uint64, typ uint32) Map {
	if length == 0 {
		return m
	}
	if n := len(m); n > 0 {
		last := &m[n-1]
		if last.End() != off {
			panic("extent: Map.Append out of order")
		}
		if last.Type == typ {
			last.Length += length
			return m
		}
	}
	return append(m, Typed{off, length, typ})
}

// Build returns the map of [off, off+length) where the parts covered by in
// (normal) have type inType and the rest have type outType.
func Build(in List, off, length uint64, inType, outType uint32) Map {
	var m Map
	pos, end := off, off+length
	for _, e := range in.Clip(off, length) {
		m = m.Append(pos, e.Offset-pos, outType)
		m = m.Append(e.Offset, e.Length, inType)
		pos = e.End()
	}
	return m.Append(pos, end-pos, outType)
}
