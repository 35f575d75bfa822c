//go:build windows

package drive

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/windows"
)

// SpaceOf returns the free and total space of the volume holding path, as
// GetDiskFreeSpaceEx tells them for the agent's user (quotas included).
func SpaceOf(path string) (Space, error) {
	p, err := windows.UTF16PtrFromString(path)
	if err != nil {
		return Space{}, fmt.Errorf("free space of %s: %w", path, err)
	}
	var free, total, totalFree uint64
	if err := windows.GetDiskFreeSpaceEx(p, &free, &total, &totalFree); err != nil {
		return Space{}, fmt.Errorf("free space of %s: %w", path, err)
	}
	return Space{Free: int64(free), Total: int64(total)}, nil
}

// Lock takes an exclusive lock on the file at path (created when missing)
// without waiting: ErrLocked when another process holds it. Windows
// releases the lock when the process ends.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, err
	}
	ol := new(windows.Overlapped)
	err = windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
	if err != nil {
		f.Close()
		if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
			return nil, ErrLocked
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}
