package vddk

import (
	"fmt"
	"strings"
)

// OpenFlags are VixDiskLib_Open's flags (VIXDISKLIB_FLAG_OPEN_*).
type OpenFlags uint32

// Open flags. Connection.Open always adds OpenReadOnly.
const (
	OpenUnbuffered        OpenFlags = 1
	OpenSingleLink        OpenFlags = 2
	OpenReadOnly          OpenFlags = 4
	OpenCompressionZlib   OpenFlags = 16
	OpenCompressionFastLZ OpenFlags = 32
	OpenCompressionSkipZ  OpenFlags = 64
)

var flagNames = []struct {
	f    OpenFlags
	name string
}{
	{OpenUnbuffered, "UNBUFFERED"},
	{OpenSingleLink, "SINGLE_LINK"},
	{OpenReadOnly, "READ_ONLY"},
	{OpenCompressionZlib, "COMPRESSION_ZLIB"},
	{OpenCompressionFastLZ, "COMPRESSION_FASTLZ"},
	{OpenCompressionSkipZ, "COMPRESSION_SKIPZ"},
}

// String names the flags, e.g. "READ_ONLY|COMPRESSION_ZLIB".
func (f OpenFlags) String() string {
	var parts []string
	rest := f
	for _, n := range flagNames {
		if f&n.f != 0 {
			parts = append(parts, n.name)
			rest &^= n.f
		}
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint32(rest)))
	}
	if len(parts) == 0 {
		return "NONE"
	}
	return strings.Join(parts, "|")
}

// ParseCompression maps a compression= value ("none", "zlib", "fastlz",
// "skipz", as nbdkit-vddk-plugin accepts; case-insensitive, "" = none) to
// its open flag.
func ParseCompression(s string) (OpenFlags, error) {
	switch strings.ToLower(s) {
	case "", "none":
		return 0, nil
	case "zlib":
		return OpenCompressionZlib, nil
	case "fastlz":
		return OpenCompressionFastLZ, nil
	case "skipz":
		return OpenCompressionSkipZ, nil
	}
	return 0, fmt.Errorf("unknown compression %q: use none, zlib, fastlz or skipz", s)
}
