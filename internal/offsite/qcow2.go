package offsite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// checkImage reads the qcow2 header of a staged image and returns its
// backing file name. A bucket is input from outside: an image that is not
// qcow2, has an external data file, or whose backing file is not a plain
// name (an absolute path, "..") would make qemu read files outside the
// staging repository, so it is refused before any tool opens it.
func checkImage(path string) (backing string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var h [104]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return "", errors.New("not a qcow2 image (too short)")
	}
	be := binary.BigEndian
	if string(h[:4]) != "QFI\xfb" {
		return "", errors.New("not a qcow2 image (no QFI magic)")
	}
	version := be.Uint32(h[4:])
	if version != 2 && version != 3 {
		return "", fmt.Errorf("qcow2 version %d is not 2 or 3", version)
	}
	if version == 3 && be.Uint64(h[72:])&(1<<2) != 0 {
		return "", errors.New("the image has an external data file (not a sendense image)")
	}
	off, size := be.Uint64(h[8:]), be.Uint32(h[16:])
	if off == 0 || size == 0 {
		return "", nil
	}
	if size > 1023 {
		return "", fmt.Errorf("backing file name of %d bytes", size)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("reading the backing file name: %w", err)
	}
	return string(name), nil
}
