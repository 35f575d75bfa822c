package content

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/store"
)

// MediaTypeChunkIndex is the media type of the blobs holding chunk indexes
// (a serialized osvcv1.ChunkIndex).
const MediaTypeChunkIndex = "application/vnd.osvc.chunk-index+protobuf"

// maxIndexBytes bounds the serialized index of count chunks: a chunk is a
// 32-byte digest and a size of at most 4 MiB, under 48 bytes with its tags.
func maxIndexBytes(count int64) int64 { return 1<<10 + 48*count }

// storeIndex keeps list, the chunks of the blob sha of size bytes, as a
// blob of its own and returns the reference sha's record keeps. A blob too
// small to be worth an index gets none (nil); so does one whose index
// cannot be stored, with a warning: it is made again at the first request
// for it (ChunkIndex), and a client meanwhile reads the blob whole.
func (l *Library) storeIndex(ctx context.Context, sha string, size int64, list []chunks.Chunk) *osvcv1.ChunkIndexRef {
	if size < chunks.MinBlobBytes || len(list) == 0 {
		return nil
	}
	ref, err := l.putIndex(ctx, sha, size, list)
	if err != nil {
		l.logger.Warn("storing a blob's chunk index failed; it is made again when a client asks for it", "sha256", sha, "error", err)
		return nil
	}
	return ref
}

// putIndex stores the index blob of sha.
func (l *Library) putIndex(ctx context.Context, sha string, size int64, list []chunks.Chunk) (*osvcv1.ChunkIndexRef, error) {
	if err := chunks.Check(list, size); err != nil {
		return nil, err
	}
	data, err := proto.Marshal(chunks.Index(sha, size, list))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	isum := hex.EncodeToString(sum[:])
	h := WriteHeader{SHA256: isum, SizeBytes: int64(len(data)), MediaType: MediaTypeChunkIndex}
	c, err := l.begin(ctx, &h)
	if err != nil {
		return nil, err
	}
	if c == nil {
		staged, err := l.blobs.Stage(ctx, bytes.NewReader(data), isum)
		if err != nil {
			return nil, err
		}
		defer staged.Discard()
		if c, _, err = l.finish(ctx, staged, int64(len(data)), isum, h, nil); err != nil {
			return nil, err
		}
	}
	return &osvcv1.ChunkIndexRef{Sha256: c.GetSha256(), ChunkCount: int64(len(list))}, nil
}

// ChunkIndex returns the chunk index of the blob sha: the one stored when
// the blob was written, else (a blob stored before the library kept
// indexes, or whose index was lost) one made now from the blob's data,
// once for every caller asking meanwhile, and kept. errdefs.ErrNotFound when
// the library does not hold the blob; errdefs.ErrFailedPrecondition when it
// is too small to have an index.
func (l *Library) ChunkIndex(ctx context.Context, sha string) (*osvcv1.ChunkIndex, error) {
	c, err := l.Stat(ctx, sha)
	if err != nil {
		return nil, err
	}
	if c.GetSizeBytes() < chunks.MinBlobBytes {
		return nil, errdefs.Newf(errdefs.ErrFailedPrecondition,
			"content %s has %d bytes, too few to be cut into chunks (the least is %d): read it whole", sha, c.GetSizeBytes(), chunks.MinBlobBytes)
	}
	if c.GetChunkIndex() != nil {
		idx, _, err := l.loadIndex(ctx, c)
		if err == nil {
			return idx, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		l.logger.Warn("a blob's chunk index is unreadable; making it again", "sha256", sha, "index", c.GetChunkIndex().GetSha256(), "error", err)
	}
	// The index is made for every caller: one giving up does not waste
	// the read the others wait for.
	v, err, _ := l.indexing.Do(sha, func() (any, error) { return l.makeIndex(context.WithoutCancel(ctx), c) })
	if err != nil {
		return nil, err
	}
	return v.(*osvcv1.ChunkIndex), nil
}

// loadIndex reads and checks the index c's record names, and returns it
// with the chunks it lists.
func (l *Library) loadIndex(ctx context.Context, c *osvcv1.Content) (*osvcv1.ChunkIndex, []chunks.Chunk, error) {
	ref := c.GetChunkIndex()
	if err := checkSHA256(ref.GetSha256()); err != nil {
		return nil, nil, err
	}
	if ref.GetChunkCount() < 1 || ref.GetChunkCount() > chunks.MaxChunks {
		return nil, nil, fmt.Errorf("the record says the index has %d chunks: %w", ref.GetChunkCount(), errdefs.ErrDataLoss)
	}
	blob, err := l.blobs.Open(ctx, ref.GetSha256())
	if err != nil {
		return nil, nil, err
	}
	defer blob.Close()
	if blob.Size() > maxIndexBytes(ref.GetChunkCount()) {
		return nil, nil, fmt.Errorf("the index of %d chunks has %d bytes: %w", ref.GetChunkCount(), blob.Size(), errdefs.ErrDataLoss)
	}
	r, err := blob.Stream(0, blob.Size())
	if err != nil {
		return nil, nil, err
	}
	data, err := io.ReadAll(transfer.ContextReader(ctx, r))
	if err != nil {
		return nil, nil, err
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != ref.GetSha256() {
		return nil, nil, fmt.Errorf("the index's blob does not hash to its name %s: %w", ref.GetSha256(), errdefs.ErrDataLoss)
	}
	idx := &osvcv1.ChunkIndex{}
	if err := proto.Unmarshal(data, idx); err != nil {
		return nil, nil, fmt.Errorf("the index's blob %s: %w: %w", ref.GetSha256(), err, errdefs.ErrDataLoss)
	}
	list, err := chunks.FromIndex(idx, c.GetSha256(), c.GetSizeBytes())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", err, errdefs.ErrDataLoss)
	}
	return idx, list, nil
}

// makeIndex cuts the blob c records, checking its data against its sha256
// on the way, keeps the index and names it in the record.
func (l *Library) makeIndex(ctx context.Context, c *osvcv1.Content) (*osvcv1.ChunkIndex, error) {
	sha := c.GetSha256()
	// Reading a whole blob is as heavy as receiving one.
	release, err := l.writes.Enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("content library: %w", err)
	}
	defer release()
	blob, err := l.blobs.Open(ctx, sha)
	if err != nil {
		return nil, err
	}
	defer blob.Close()
	ix := chunks.NewIndexer()
	err = copyVerified(ctx, ix, blob, sha)
	list, ierr := ix.Close()
	if err = errors.Join(err, ierr); err != nil {
		return nil, fmt.Errorf("content %s: make its chunk index: %w", sha, err)
	}
	ref, err := l.putIndex(ctx, sha, blob.Size(), list)
	if err != nil {
		return nil, fmt.Errorf("content %s: store its chunk index: %w", sha, err)
	}
	key := l.store.ContentKey(sha)
	_, err = l.store.Txn(ctx, "name the chunk index of content "+sha, func(tx *store.Tx) error {
		rec, err := store.Load[*osvcv1.Content](tx, key)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil // removed meanwhile: the index goes at the collector's next pass
		}
		if err != nil {
			return err
		}
		rec.ChunkIndex = ref
		return tx.Put(key, rec)
	})
	if err != nil {
		return nil, fmt.Errorf("content %s: name its chunk index: %w", sha, err)
	}
	l.logger.Info("chunk index made", "sha256", sha, "chunks", len(list), "index", ref.GetSha256())
	return chunks.Index(sha, blob.Size(), list), nil
}

// hashAndIndex hashes the first n bytes of f and cuts them into chunks.
func hashAndIndex(ctx context.Context, f *os.File, n int64) (string, []chunks.Chunk, error) {
	h := sha256.New()
	ix := chunks.NewIndexer()
	_, err := io.Copy(io.MultiWriter(h, ix), transfer.ContextReader(ctx, io.NewSectionReader(f, 0, n)))
	list, ierr := ix.Close()
	if err = errors.Join(err, ierr); err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(h.Sum(nil)), list, nil
}
