package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/osvc/osvc/pkg/transfer"
)

// VerifiedSuffix names the file beside a cached file that holds its stamp
// (JSON): the state the file was in when it last hashed to its name.
const VerifiedSuffix = ".verified"

// maxStampBytes bounds a stamp file read back: a stamp is a few dozen
// bytes, and a larger file is not one the cache wrote.
const maxStampBytes = 4 << 10

// stamp is one state of a file, as the file system tells it: a file whose
// stamp is the one it had when it hashed to its name has not been written
// since, so it is served without hashing its gigabytes again. The change
// time (Ctime) is what makes that hold: any write, and any setting of the
// modification time, moves it to the clock's present, and user space cannot
// set it back. Any other change of the inode moves it too (a hard link made
// or removed, as a run's link to an update file): the file is then hashed
// once more, which is safe.
//
// Limits: the change time is as fine as the file system's clock. Linux
// before 6.13 moves it only from one clock tick (a few milliseconds) to the
// next, so a write in the very tick a stamp was taken in can leave it as it
// was; since 6.13, ext4, xfs, btrfs and tmpfs give a change after a stat a
// finer time. And no stamp sees damage below the file system (a disk
// returning other bytes); the data's own checks catch that (clients check a
// distribution point's file against its sha256, a run verifies its copy).
type stamp struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
}

// unchanged tells whether sha256's file, in the state info, is still as it
// was when it last hashed to its name: for this cache (in memory) or, after
// a restart, for an earlier one (its stamp file).
func (c *Cache) unchanged(sha256 string, info fs.FileInfo) bool {
	now, ok := fileStamp(info)
	if !ok {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entry(sha256)
	if e.verified == nil {
		s, err := c.readStamp(sha256)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				c.log.Warn("the stamp of a cached file is unreadable: hashing the file", "sha256", sha256, "error", err)
			}
			return false
		}
		e.verified = &s
	}
	return *e.verified == now
}

// remember records that sha256's file hashed to its name in the state
// info, taken before it was read (a write since then shows in the stamp).
// The file is synced first: its stamp outlives the agent, and must not
// outlive the data it vouches for (pkg/transfer does not sync what it
// downloads). The stamp file is written by the touch that follows the
// fetch.
func (c *Cache) remember(sha256 string, info fs.FileInfo) {
	s, ok := fileStamp(info)
	if !ok {
		return
	}
	if err := syncFile(c.Path(sha256)); err != nil {
		c.log.Warn("syncing a cached file failed: it is hashed again when next served", "sha256", sha256, "error", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entry(sha256).verified = &s
}

// readStamp reads the stamp kept beside sha256's file.
func (c *Cache) readStamp(sha256 string) (stamp, error) {
	f, err := os.Open(c.Path(sha256) + VerifiedSuffix)
	if err != nil {
		return stamp{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStampBytes+1))
	if err != nil {
		return stamp{}, err
	}
	if len(data) > maxStampBytes {
		return stamp{}, fmt.Errorf("stamp file larger than %d bytes", maxStampBytes)
	}
	var s stamp
	if err := json.Unmarshal(data, &s); err != nil {
		return stamp{}, fmt.Errorf("stamp file: %w", err)
	}
	return s, nil
}

// writeStamp keeps s beside sha256's file, or removes the stamp there when
// s is nil. The write is a rename, so a stamp file is whole or absent; it is
// not synced: a stamp lost in a crash costs a hash, and an old one does not
// match the file.
func (c *Cache) writeStamp(sha256 string, s *stamp) error {
	path := c.Path(sha256) + VerifiedSuffix
	if s == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return writeRenamed(path, data)
}

// writeRenamed writes data to path through a file beside it, renamed into
// place, so that path is whole or absent.
func writeRenamed(path string, data []byte) error {
	tmp := path + transfer.PartialSuffix
	if err := os.WriteFile(tmp, data, 0o640); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// statStamp returns the stamp of the file at path; ok is false when it has
// none (it is missing, or the system gives no change time).
func statStamp(path string) (s stamp, ok bool) {
	info, err := os.Stat(path)
	if err != nil {
		return stamp{}, false
	}
	return fileStamp(info)
}

// syncFile makes the data of the file at path durable.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
