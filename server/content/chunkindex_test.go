package content_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store"
)

// noise returns n bytes no compressor or chunker finds a pattern in.
func noise(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// wantIndexOf checks that the library's index of sha is data cut into chunks.
func wantIndexOf(t *testing.T, lib *library, sha string, data []byte) {
	t.Helper()
	ctx := context.Background()
	idx, err := lib.ChunkIndex(ctx, sha)
	if err != nil {
		t.Fatal(err)
	}
	want, err := chunks.Of(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	got, err := chunks.FromProto(idx.GetChunks())
	if err != nil {
		t.Fatal(err)
	}
	if idx.GetSha256() != sha || idx.GetSizeBytes() != int64(len(data)) || !chunks.SameChunking(idx.GetChunking()) || !slices.Equal(got, want) {
		t.Fatalf("the index of %s: %d chunks of %s (%d bytes, %v); the data cuts into %d", sha, len(got), idx.GetSha256(), idx.GetSizeBytes(), idx.GetChunking(), len(want))
	}
	c, err := lib.Stat(ctx, sha)
	if err != nil {
		t.Fatal(err)
	}
	if c.GetChunkIndex().GetChunkCount() != int64(len(want)) {
		t.Fatalf("the record names an index of %d chunks, want %d", c.GetChunkIndex().GetChunkCount(), len(want))
	}
}

func TestABlobIsCutIntoChunksWhileItIsWritten(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib := b.newLibrary(t, content.Config{})
		data := noise(3*chunks.MinBlobBytes+12345, 1)
		sha := lib.put(t, data)
		c, err := lib.Stat(ctx, sha)
		if err != nil {
			t.Fatal(err)
		}
		ref := c.GetChunkIndex()
		if ref == nil {
			t.Fatal("the record names no chunk index")
		}
		idx, err := lib.Stat(ctx, ref.GetSha256())
		if err != nil || idx.GetMediaType() != content.MediaTypeChunkIndex {
			t.Fatalf("the index's blob: %v, %v", idx, err)
		}
		wantIndexOf(t, lib, sha, data)
		lib.wantContents(t, blobEntry(sha))
	})
}

func TestABlobTooSmallForChunksHasNoIndex(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		lib := b.newLibrary(t, content.Config{})
		sha := lib.put(t, noise(chunks.MinBlobBytes-1, 2))
		if c, _ := lib.Stat(context.Background(), sha); c.GetChunkIndex() != nil {
			t.Errorf("a blob of %d bytes has an index", chunks.MinBlobBytes-1)
		}
		_, err := lib.ChunkIndex(context.Background(), sha)
		if !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("ChunkIndex: %v, want FailedPrecondition (read it whole)", err)
		}
		lib.wantContents(t, blobEntry(sha))
	})
}

func TestABlobStoredWithoutAnIndexGetsOneAtTheFirstRequest(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		// Whole, as a server before chunk indexes stored every blob.
		lib := b.newLibrary(t, content.Config{WholeBlobs: true})
		data := noise(2*chunks.MinBlobBytes, 3)
		sha := lib.put(t, data)
		// As a server before chunk indexes left it: no index, no reference.
		c, err := lib.Stat(ctx, sha)
		if err != nil {
			t.Fatal(err)
		}
		if err := lib.Delete(ctx, c.GetChunkIndex().GetSha256()); err != nil {
			t.Fatal(err)
		}
		c.ChunkIndex = nil
		if _, err := lib.cfg.Store.Txn(ctx, "strip", func(tx *store.Tx) error { return tx.Put(lib.cfg.Store.ContentKey(sha), c) }); err != nil {
			t.Fatal(err)
		}
		lib.wantContents(t, blobEntry(sha))

		wantIndexOf(t, lib, sha, data)
		lib.wantContents(t, blobEntry(sha))
	})
}

func TestAnIndexWhoseBlobIsLostIsMadeAgain(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		// A blob stored as chunks has no data but them: see
		// TestABlobStoredAsChunksWhoseIndexIsLostIsAcceptedAgain.
		lib := b.newLibrary(t, content.Config{WholeBlobs: true})
		data := noise(2*chunks.MinBlobBytes, 4)
		sha := lib.put(t, data)
		c, _ := lib.Stat(ctx, sha)
		lib.removeBehind(t, c.GetChunkIndex().GetSha256())
		wantIndexOf(t, lib, sha, data)
	})
}

func TestABlobsChunkIndexIsKeptAsLongAsItsRecord(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		f := newCollectFixture(t, b)
		f.clock.Set(t0)
		c, _, err := f.lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(noise(2*chunks.MinBlobBytes, 5)))
		if err != nil {
			t.Fatal(err)
		}
		sha, index := c.GetSha256(), c.GetChunkIndex().GetSha256()
		f.put(t, f.store.ImageKey("win11"), &osvcv1.Image{Name: "images/win11", Versions: []*osvcv1.ImageVersion{{Sha256: sha}}})
		if removed := f.collect(t, t0.Add(100*24*time.Hour)); len(removed) != 0 {
			t.Fatalf("removed %v while an image names the blob, want its index kept too", removed)
		}
		if _, err := f.store.Client().Delete(ctx, f.store.ImageKey("win11")); err != nil {
			t.Fatal(err)
		}
		if removed := f.collect(t, t0.Add(101*24*time.Hour)); !slices.Equal(removed, []string{sha}) {
			t.Fatalf("once nothing names the blob removed %v, want the blob alone", removed)
		}
		if removed := f.collect(t, t0.Add(102*24*time.Hour)); !slices.Equal(removed, []string{index}) {
			t.Fatalf("the pass after removed %v, want the blob's index", removed)
		}
	})
}
