package content_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
)

// watchedChunks is a chunk store that counts the chunks open at once and
// holds each read of one until let lets it go on, or the context of the
// chunk's Open ends.
type watchedChunks struct {
	content.Blobs
	// let tells whether a read of the chunk sha may go on while open
	// chunks are open; nil lets every read go on. It is called under mu.
	let func(sha string, open int) bool
	// damage, when set, tells whether a read of the chunk sha returns
	// it with a bit flipped, as a disk or a network might. It is called
	// under mu.
	damage func(sha string) bool

	mu sync.Mutex
	// asked counts the calls of Open.
	asked int
	open  int
	// most is the most chunks open at once.
	most int
	// changed is closed, and replaced, whenever open changes.
	changed chan struct{}
}

// watchChunks is a library on an object store whose chunk store is
// watched, on the bucket and records of lib, which writes the blobs.
func watchChunks(t *testing.T, lib *library, w *watchedChunks) *library {
	t.Helper()
	w.Blobs = bucketStore(t, lib.bucket, s3store.ChunksPrefix, 0)
	w.changed = make(chan struct{})
	return backends[1].newLibraryOn(t, content.Config{Store: lib.cfg.Store, Chunks: w}, lib)
}

func (w *watchedChunks) Open(ctx context.Context, sha string) (content.Blob, error) {
	w.mu.Lock()
	w.asked++
	w.mu.Unlock()
	b, err := w.Blobs.Open(ctx, sha)
	if err != nil {
		return nil, err
	}
	w.add(1)
	return &watchedChunk{Blob: b, w: w, ctx: ctx, sha: sha}, nil
}

func (w *watchedChunks) add(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open += n
	w.most = max(w.most, w.open)
	close(w.changed)
	w.changed = make(chan struct{})
}

// counts returns the chunks open now, the most open at once and how many
// times a chunk was asked for.
func (w *watchedChunks) counts() (open, most, asked int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.open, w.most, w.asked
}

// wait waits until let lets a read of sha go on, or ctx ends.
func (w *watchedChunks) wait(ctx context.Context, sha string) error {
	for {
		w.mu.Lock()
		ok, changed := w.let == nil || w.let(sha, w.open), w.changed
		w.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// watchedChunk is an open chunk of a watchedChunks.
type watchedChunk struct {
	content.Blob
	w   *watchedChunks
	ctx context.Context
	sha string
}

func (c *watchedChunk) Stream(off, n int64) (io.Reader, error) {
	if err := c.w.wait(c.ctx, c.sha); err != nil {
		return nil, err
	}
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

func (c *watchedChunk) Close() error {
	c.w.add(-1)
	return c.Blob.Close()
}

// wantFourInFlight reads with read, through a library on lib's blobs
// whose chunk store lets a read of a chunk go on only once four chunks
// were open at once, and checks it returns want and never had more than
// four chunks open. A read fetching fewer at once waits until the
// deadline, a minute, and fails.
func wantFourInFlight(t *testing.T, lib *library, want []byte, read func(ctx context.Context, watched *library) ([]byte, error)) {
	t.Helper()
	four := false
	w := &watchedChunks{let: func(_ string, open int) bool {
		four = four || open >= 4
		return four
	}}
	watched := watchChunks(t, lib, w)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, err := read(ctx, watched)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read: %v, or other bytes", err)
	}
	if _, most, _ := w.counts(); most != 4 {
		t.Errorf("%d chunks were open at once, want 4", most)
	}
}

func TestAStreamOfABlobStoredAsChunksFetchesFourChunksAheadAndNoMore(t *testing.T) {
	t.Parallel()
	lib, data, sha := backends[1].withBlobOfChunks(t)
	wantFourInFlight(t, lib, data, func(ctx context.Context, watched *library) ([]byte, error) {
		return watched.readWithin(ctx, sha)
	})
}

func TestClosingABlobStoredAsChunksEndsTheFetchesOfAStreamItsReaderLeft(t *testing.T) {
	t.Parallel()
	lib, data, sha := backends[1].withBlobOfChunks(t)
	first, _ := lib.chunkAt(t, sha, data, 0)
	// The chunks after the first are fetched until the blob is closed.
	w := &watchedChunks{let: func(chunk string, _ int) bool { return chunk == first }}
	watched := watchChunks(t, lib, w)
	blob, err := watched.Open(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	r, err := blob.Stream(0, blob.Size())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		blob.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("Close has not returned after a minute: the fetches it waits for were not ended")
	}
	if open, _, _ := w.counts(); open != 0 {
		t.Errorf("%d chunks are still open after Close: their fetches outlived it", open)
	}
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

func TestAStreamOfNoBytesFetchesNoChunk(t *testing.T) {
	t.Parallel()
	lib, data, sha := backends[1].withBlobOfChunks(t)
	w := &watchedChunks{}
	watched := watchChunks(t, lib, w)
	blob, err := watched.Open(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	// From the middle of a chunk, where the chunk holding the byte before
	// is the one holding the first.
	r, err := blob.Stream(int64(len(data))/2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("Read = %d, %v; want 0, EOF", n, err)
	}
	// Close waits for the fetches: a chunk asked for is counted by then.
	blob.Close()
	if _, _, asked := w.counts(); asked != 0 {
		t.Errorf("%d chunks were asked for no bytes", asked)
	}
}
