package content_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
)

// watchedChunks is a chunk store whose reads may damage what they return.
type watchedChunks struct {
	content.Blobs
	// damage, when set, tells whether a read of the chunk sha returns
	// it with a bit flipped, as a disk or a network might. It is called
	// under mu.
	damage func(sha string) bool

	mu sync.Mutex
}

// watchChunks is a library on an object store whose chunk store is
// watched, on the bucket and records of lib, which writes the blobs.
func watchChunks(t *testing.T, lib *library, w *watchedChunks) *library {
	t.Helper()
	w.Blobs = bucketStore(t, lib.bucket, s3store.ChunksPrefix, 0)
	return backends[1].newLibraryOn(t, content.Config{Store: lib.cfg.Store, Chunks: w}, lib)
}

func (w *watchedChunks) Open(ctx context.Context, sha string) (content.Blob, error) {
	b, err := w.Blobs.Open(ctx, sha)
	if err != nil {
		return nil, err
	}
	return &watchedChunk{Blob: b, w: w, sha: sha}, nil
}

// watchedChunk is an open chunk of a watchedChunks.
type watchedChunk struct {
	content.Blob
	w   *watchedChunks
	sha string
}

func (c *watchedChunk) Stream(off, n int64) (io.Reader, error) {
	r, err := c.Blob.Stream(off, n)
	c.w.mu.Lock()
	damaged := c.w.damage != nil && c.w.damage(c.sha)
	c.w.mu.Unlock()
	if err != nil || !damaged {
		return r, err
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	data[len(data)/2] ^= 1
	return bytes.NewReader(data), nil
}

func TestAChunkAReadFoundDamagedStaysWhenItIsSoundReadAgain(t *testing.T) {
	t.Parallel()
	lib, data, sha := backends[1].withBlobOfChunks(t)
	second, _ := lib.chunkAt(t, sha, data, 1)
	// The first read of the chunk is damaged on the way; the chunk is
	// sound, as one a write stored again after the read would be.
	reads := 0
	w := &watchedChunks{damage: func(chunk string) bool {
		if chunk != second {
			return false
		}
		reads++
		return reads == 1
	}}
	watched := watchChunks(t, lib, w)
	if _, err := watched.read(sha); !errors.Is(err, errdefs.ErrDataLoss) || !strings.Contains(err.Error(), second) {
		t.Fatalf("read: %v, want DataLoss naming the chunk %s", err, second)
	}
	if _, err := lib.chunkInfo(t, second); err != nil {
		t.Fatalf("the sound chunk was removed: %v", err)
	}
	if got, err := watched.read(sha); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read again: %v, or other bytes", err)
	}
}
