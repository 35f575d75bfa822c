package cache

import (
	"errors"
	"fmt"
)

// ErrInUse refuses to remove a file a caller holds or a fetch writes.
var ErrInUse = errors.New("the file is in use")

// Remove deletes the file with that sha256, its chunk index and its stamp: a
// distribution point drops the version it replaced. A file someone holds
// (Acquire without release) or fetches is left (ErrInUse).
func (c *Cache) Remove(sha256 string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[sha256]; e != nil && e.refs > 0 || c.flights[sha256] != nil {
		return fmt.Errorf("remove %s: %w", sha256, ErrInUse)
	}
	err := c.removeFiles(sha256)
	c.restat(sha256)
	return err
}
