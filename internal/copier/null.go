package copier

// Null is a destination that discards everything and reads as zeroes,
// like nbdcopy's null: (for benchmarks and checksum-only passes).
type Null struct{ size uint64 }

// NewNull returns a null destination of the given size.
func NewNull(size uint64) *Null { return &Null{size} }

func (n *Null) Size() uint64 { return n.size }

func (n *Null) ReadAt(p []byte, off uint64) error {
	clear(p)
	return nil
}

func (n *Null) WriteAt(p []byte, off uint64) error { return nil }
func (n *Null) Zero(off, length uint64) error      { return nil }
func (n *Null) CanZero() bool                      { return true }
func (n *Null) Flush() error                       { return nil }
func (n *Null) Close() error                       { return nil }
