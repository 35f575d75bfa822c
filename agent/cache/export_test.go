package cache

// Hashes tells how many times c hashed a cached file to verify it.
func Hashes(c *Cache) int64 { return c.hashes.Load() }

// SetSyncFile makes c sync the files it verified with f instead of
// fsync(2), so that a test can hold a sync; call it before c fetches.
func SetSyncFile(c *Cache, f func(path string) error) { c.syncFile = f }

// WaitSynced waits for the background syncs c started so far; call it
// when no fetch is under way.
func WaitSynced(c *Cache) { c.syncs.Wait() }
