package repo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// syncFile fsyncs an existing file.
func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

// exists says whether path exists (errors other than "not found" count as
// existing, so nothing is overwritten by mistake).
func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// allocated is the space a file takes on disk, 0 when it is missing.
func allocated(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}
