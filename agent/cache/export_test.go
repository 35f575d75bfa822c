package cache

// Hashes tells how many times c hashed a cached file to verify it.
func Hashes(c *Cache) int64 { return c.hashes.Load() }
