package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/dustin/go-humanize"
	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/transfer"
)

// fetchDelta downloads sha256 as the chunks that have lack, keeps its
// chunk index beside it, and returns the bytes that came from the server.
func (c *Cache) fetchDelta(ctx context.Context, src DeltaSource, sha256 string, have []transfer.LocalBlob, progress transfer.ProgressFunc) (int64, error) {
	if len(have) > 0 {
		c.log.Info("downloading file, reusing the chunks of cached files", "sha256", sha256, "candidates", len(have))
	} else {
		c.log.Info("downloading file", "sha256", sha256)
	}
	d, err := src.DownloadDelta(ctx, sha256, c.Path(sha256), have, progress)
	if err != nil {
		return 0, fmt.Errorf("download into the cache: %w", err)
	}
	total := d.Local + d.Downloaded + d.Resumed
	c.log.Info("file downloaded", "sha256", sha256, "size", humanize.IBytes(uint64(total)),
		"downloaded", humanize.IBytes(uint64(d.Downloaded)), "from_cached_files", humanize.IBytes(uint64(d.Local)),
		"resumed", humanize.IBytes(uint64(d.Resumed)))
	if d.Chunks != nil {
		if err := c.writeIndex(sha256, total, d.Chunks); err != nil {
			c.log.Warn("keeping the chunk index of a cached file failed; it is made again when needed", "sha256", sha256, "error", err)
		}
	}
	return d.Downloaded + d.Resumed, nil
}

// candidates holds the cached files whose chunks a download of sha256 may
// reuse, with their chunk indexes, and returns them and their release. A
// file too small to have chunks is none; one without an index is cut now
// and its index kept, once.
func (c *Cache) candidates(ctx context.Context, sha256 string) ([]transfer.LocalBlob, func()) {
	c.mu.Lock()
	var held []string
	for sha, e := range c.entries {
		if sha != sha256 && e.size >= chunks.MinBlobBytes && c.flights[sha] == nil {
			e.refs++
			held = append(held, sha)
		}
	}
	c.mu.Unlock()
	release := func() {
		for _, sha := range held {
			c.unref(sha, false)
		}
	}
	var have []transfer.LocalBlob
	for _, sha := range held {
		list, err := c.index(ctx, sha)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Debug("a cached file's chunks are not candidates", "sha256", sha, "error", err)
			}
			continue
		}
		have = append(have, transfer.LocalBlob{Path: c.Path(sha), Chunks: list})
	}
	return have, release
}

// index returns the chunk index of the cached file sha256, from the file
// beside it when that describes the file, else cut now and kept. The index
// only says where to look: every chunk taken from the file is checked
// against its digest first.
func (c *Cache) index(ctx context.Context, sha256 string) ([]chunks.Chunk, error) {
	info, err := os.Stat(c.Path(sha256))
	if err != nil {
		return nil, err
	}
	if list, err := c.readIndex(sha256, info.Size()); err == nil {
		return list, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("a cached file's chunk index is unreadable; cutting the file again", "sha256", sha256, "error", err)
	}
	list, err := chunks.OfFile(ctx, c.Path(sha256))
	if err != nil {
		return nil, err
	}
	if err := c.writeIndex(sha256, info.Size(), list); err != nil {
		c.log.Warn("keeping the chunk index of a cached file failed", "sha256", sha256, "error", err)
	}
	return list, nil
}

// readIndex reads the chunk index kept beside sha256, a file of size bytes.
func (c *Cache) readIndex(sha256 string, size int64) ([]chunks.Chunk, error) {
	data, err := os.ReadFile(c.Path(sha256) + IndexSuffix)
	if err != nil {
		return nil, err
	}
	idx := &osvcv1.ChunkIndex{}
	if err := proto.Unmarshal(data, idx); err != nil {
		return nil, err
	}
	return chunks.FromIndex(idx, sha256, size)
}

// writeIndex keeps list, the chunks of sha256, beside it.
func (c *Cache) writeIndex(sha256 string, size int64, list []chunks.Chunk) error {
	data, err := proto.Marshal(chunks.Index(sha256, size, list))
	if err != nil {
		return err
	}
	if err := writeRenamed(c.Path(sha256)+IndexSuffix, data); err != nil {
		return err
	}
	c.mu.Lock()
	c.restat(sha256)
	c.mu.Unlock()
	return nil
}
