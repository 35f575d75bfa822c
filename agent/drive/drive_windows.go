//go:build windows

package drive

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/windows"
)

// Local is this server's System: drive letters name volumes, and Automatic
// is the root of the volume holding the agent's executable, the drive the
// agent is installed on. dataDir does not count here.
func Local(dataDir string) System {
	return System{DriveLetters: true, Automatic: executableVolume, Folder: folder}
}

// executableVolume is the root of the volume holding the running
// executable: C:\ for C:\osvc\osvc-agent.exe.
func executableVolume() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the agent's executable: %w", err)
	}
	vol := filepath.VolumeName(exe)
	if vol == "" {
		return "", fmt.Errorf("the agent's executable %s is on no volume", exe)
	}
	return vol + `\`, nil
}

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
