package content

import "context"

// CollectAt is the collector's removal of one blob whose record it judged at
// revision rev, for tests of the revision guard.
func (l *Library) CollectAt(ctx context.Context, sha string, rev int64) (bool, error) {
	return l.collect(ctx, sha, rev)
}

// AfterChunkList makes fn run between a pass's choice of the chunks to
// remove and their removal, for tests of a write reusing one meanwhile.
func (c *Collector) AfterChunkList(fn func()) { c.afterChunkList = fn }

// SetReadAhead sets how many chunks a stream of a blob stored as chunks
// holds at once, for the benchmark of read-ahead (1: none).
func (l *Library) SetReadAhead(n int) { l.readAhead = n }
