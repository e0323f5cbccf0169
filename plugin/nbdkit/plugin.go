package nbdkit

// Plugin is the process-wide part of a plugin. Config and ConfigComplete
// run twice (in the pre-fork check and again in the serving process) and
// must have no lasting side effects; AfterFork runs once in the serving
// process and is where libraries start threads or log in.
type Plugin interface {
	Config(key, value string) error
	ConfigComplete() error
	AfterFork() error
	Unload()
	// Debug receives nbdkit's -D sendense.NAME=VALUE flags the front
	// knows (stats, datapath), after Config.
	Debug(name string, value int)
	Open(readonly bool) (Connection, error)
}

// Connection is the per-NBD-connection part of a plugin. With the
// parallel thread model its methods are called concurrently.
type Connection interface {
	Close()
	GetSize() (uint64, error)
	// BlockSize returns the minimum, preferred and maximum block sizes.
	BlockSize() (minimum, preferred, maximum uint32, err error)
	// PRead fills buf entirely from offset.
	PRead(buf []byte, offset uint64, flags uint32) error
	CanWrite() (bool, error)
	// PWrite writes all of buf at offset; FlagFUA in flags asks for it to
	// be durable on return.
	PWrite(buf []byte, offset uint64, flags uint32) error
	CanFlush() (bool, error)
	Flush(flags uint32) error
	// Zero makes [offset, offset+count) read as zeroes (FlagFUA as for
	// PWrite; FlagMayTrim may be ignored).
	Zero(count uint32, offset uint64, flags uint32) error
	CanExtents() (bool, error)
	// Extents adds extents covering at least the first byte of
	// [offset, offset+count) to e.
	Extents(count uint32, offset uint64, flags uint32, e Extents) error
	CanMultiConn() (bool, error)
	ExportDescription() (string, error)
}

var thePlugin Plugin

// Register makes p the plugin served by the library. Call it from an
// init function of the main package.
func Register(p Plugin) { thePlugin = p }
