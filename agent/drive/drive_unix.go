//go:build unix

package drive

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Local is this server's System: no drive letters, and Automatic is the
// agent's data folder rather than the root of its volume, which a Linux
// service does not own.
func Local(dataDir string) System {
	return System{
		Automatic: func() (string, error) { return filepath.Abs(dataDir) },
		Folder:    folder,
	}
}

// SpaceOf returns the free and total space of the volume holding path.
func SpaceOf(path string) (Space, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return Space{}, fmt.Errorf("free space of %s: %w", path, err)
	}
	return Space{Free: int64(st.Bavail) * int64(st.Bsize), Total: int64(st.Blocks) * int64(st.Bsize)}, nil
}

// Lock takes an exclusive lock on the file at path (created when missing)
// without waiting: ErrLocked when another process holds it. The lock goes
// with the process, so a crashed agent's lock is gone with it.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}
