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
		// Kept only once its file was synced (see persist).
		e.verified, e.durable = &s, true
	}
	return *e.verified == now
}

// remember records that sha256's file hashed to its name in the state
// info, taken before it was read (a write since then shows in the stamp).
// The stamp is kept in memory at once: in this process the page cache is
// coherent, so the file is served on it without a sync, and the fetch
// does not wait for the write-back of a file of gigabytes. Its stamp file,
// which outlives the agent, must not outlive the data it vouches for
// (pkg/transfer does not sync what it downloads, and a file hashed from
// the page cache may not be on disk either, e.g. left by an agent killed
// before its sync): it is written once a sync in the background has made
// the data durable (see persist).
func (c *Cache) remember(sha256 string, info fs.FileInfo) {
	s, ok := fileStamp(info)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entry(sha256)
	e.verified, e.durable = &s, false
	c.lastSyncID++
	id := c.lastSyncID
	e.syncID = id
	// Started by a fetch, which wg counts: Close waits for wg, then syncs.
	c.syncs.Go(func() { c.persist(sha256, id) })
}

// persist syncs sha256's file, remembered as the background sync id, and
// then, if the file is still as verified, marks it durable and keeps its
// stamp beside it. A file removed, evicted, fetched again or written
// since keeps nothing: a later stamp is its own sync's to keep, and a file
// written is hashed when next served.
func (c *Cache) persist(sha256 string, id uint64) {
	err := c.syncFile(c.Path(sha256))
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[sha256]
	if e == nil || e.syncID != id || e.verified == nil {
		return
	}
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("syncing a cached file failed: it is hashed again after a restart", "sha256", sha256, "error", err)
		}
		return
	}
	// Still as verified: nothing wrote the file since its stamp was taken,
	// so the data the sync made durable is the data verified.
	if now, ok := statStamp(c.Path(sha256)); !ok || now != *e.verified {
		return
	}
	e.durable = true
	c.keepStamp(sha256, e)
}

// keepStamp writes e's stamp beside sha256's file when its data is
// durable, and otherwise removes the stamp file there, if any; c.mu is
// held.
func (c *Cache) keepStamp(sha256 string, e *entry) {
	s := e.verified
	if !e.durable {
		s = nil
	}
	if err := c.writeStamp(sha256, s); err != nil {
		c.log.Warn("keeping the stamp of a cached file failed: it is hashed again after a restart", "sha256", sha256, "error", err)
	}
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

// fsync makes the data of the file at path durable.
func fsync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
