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
	"sort"

	"go.etcd.io/etcd/client/v3/concurrency"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/errdefs"
)

// chunksDir is the folder under Dir holding the chunks of the blobs stored
// as chunks, when the blobs are files of this server: a store of its own,
// <Dir>/chunks/<first two hex digits>/<sha256>. Its name cannot collide
// with the blob folders.
const chunksDir = "chunks"

// A blob of chunks.MinBlobBytes or more is stored as its chunks (the ones
// its chunk index lists), each chunk once in the chunk store however many
// blobs hold it: the versions of an image share what they have in common,
// and a month's update costs the library what it changed. The blob's
// record says so (Content.stored_as_chunks) and names the index; reading
// reassembles the chunks in order, checking each against its sha256.
//
// Chunks have no records. The collector keeps those the index of a
// recorded blob lists and removes the others once their modification time
// is a grace period old. A write reusing a stored chunk touches it (its
// modification time becomes now) before the blob's record exists, and
// writers and the collector lock a chunk while they touch, store or remove
// it, so a chunk the collector judged unreferenced before a write named it
// is young when the collector looks at it again under the lock, or gone
// when the write does, which then stores it again.

// storeChunks stores the chunks of list, read from f (the staged blob), in
// the chunk store: a chunk it holds is touched, one it lacks stored.
func (l *Library) storeChunks(ctx context.Context, f *os.File, list []chunks.Chunk) error {
	locks, done, err := l.chunkLocks(ctx)
	if err != nil {
		return err
	}
	defer done()
	offsets, _ := chunks.Locate(list)
	seen := make(map[[chunks.DigestSize]byte]bool, len(list))
	for i, c := range list {
		if seen[c.Digest] {
			continue
		}
		seen[c.Digest] = true
		if err := l.storeChunk(ctx, locks, c, io.NewSectionReader(f, offsets[i], c.Size)); err != nil {
			return fmt.Errorf("content library: store chunk %d of %d: %w", i+1, len(list), err)
		}
	}
	return nil
}

// storeChunk touches the chunk c when the chunk store holds it whole, and
// otherwise stores it from r, under its lock.
func (l *Library) storeChunk(ctx context.Context, locks *chunkLocks, c chunks.Chunk, r io.Reader) error {
	sha := hex.EncodeToString(c.Digest[:])
	unlock, err := locks.lock(ctx, sha)
	if err != nil {
		return err
	}
	defer unlock()
	info, err := l.chunks.Stat(ctx, sha)
	switch {
	case err == nil && info.SizeBytes == c.Size:
		return l.chunks.Touch(ctx, sha)
	case err == nil:
		l.logger.Warn("a stored chunk has the wrong size; storing it again", "chunk", sha, "size", info.SizeBytes, "want", c.Size)
	case !errors.Is(err, errdefs.ErrNotFound):
		return err
	}
	staged, err := l.chunks.Stage(ctx, r, sha)
	if err != nil {
		return err
	}
	defer staged.Discard()
	return staged.Publish(ctx, sha)
}

// chunkLocks locks chunks for one write or one collection pass: in this
// server and, when the chunks are shared, through etcd on one session
// (one lease) for all of them.
type chunkLocks struct {
	l       *Library
	session *concurrency.Session
}

// chunkLocks starts locking chunks; done ends the session.
func (l *Library) chunkLocks(ctx context.Context) (*chunkLocks, func(), error) {
	c := &chunkLocks{l: l}
	if !l.chunks.Shared() {
		return c, func() {}, nil
	}
	session, err := concurrency.NewSession(l.store.Client(), concurrency.WithTTL(lockTTL), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, nil, fmt.Errorf("content library: lock chunks: %w", err)
	}
	c.session = session
	return c, func() {
		if err := session.Close(); err != nil {
			l.logger.Warn("releasing chunk locks failed; they end with their lease", "error", err, "ttl_seconds", lockTTL)
		}
	}, nil
}

// lock locks one chunk and returns its unlock, which does not fail.
func (c *chunkLocks) lock(ctx context.Context, sha string) (func(), error) {
	unlockHere := c.l.chunkMu.lock(sha)
	if c.session == nil {
		return unlockHere, nil
	}
	m := concurrency.NewMutex(c.session, c.l.store.ChunkLockPrefix(sha))
	if err := m.Lock(ctx); err != nil {
		unlockHere()
		return nil, fmt.Errorf("content library: lock chunk %s: %w", sha, err)
	}
	return func() {
		if err := m.Unlock(context.WithoutCancel(ctx)); err != nil {
			c.l.logger.Warn("releasing a chunk's lock failed; it ends with its lease", "chunk", sha, "error", err, "ttl_seconds", lockTTL)
		}
		unlockHere()
	}, nil
}

// openChunks opens the blob c records as stored as chunks.
func (l *Library) openChunks(ctx context.Context, c *osvcv1.Content) (Blob, error) {
	if l.chunks == nil {
		return nil, fmt.Errorf("%w: content %s is stored as chunks, but this server has no chunk store: give it the object store's settings its replicas share",
			errdefs.ErrFailedPrecondition, c.GetSha256())
	}
	list, err := l.chunkList(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("content %s: %w", c.GetSha256(), err)
	}
	offsets, size := chunks.Locate(list)
	return &chunkedBlob{ctx: ctx, store: l.chunks, sha: c.GetSha256(), list: list, offsets: offsets, size: size}, nil
}

// chunkList reads and checks the chunk index c's record names.
func (l *Library) chunkList(ctx context.Context, c *osvcv1.Content) ([]chunks.Chunk, error) {
	_, list, err := l.loadIndex(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("its chunk index: %w", err)
	}
	return list, nil
}

// chunkedBlob is a blob stored as chunks, read from the chunk store.
type chunkedBlob struct {
	ctx     context.Context
	store   Blobs
	sha     string
	list    []chunks.Chunk
	offsets []int64
	size    int64
}

func (b *chunkedBlob) Size() int64  { return b.size }
func (b *chunkedBlob) Close() error { return nil }

// at is the index of the chunk holding the byte at off < size.
func (b *chunkedBlob) at(off int64) int {
	return sort.Search(len(b.offsets), func(i int) bool { return b.offsets[i] > off }) - 1
}

// open opens chunk i, checking the store holds it at its size.
func (b *chunkedBlob) open(i int) (Blob, string, error) {
	c := b.list[i]
	sha := hex.EncodeToString(c.Digest[:])
	blob, err := b.store.Open(b.ctx, sha)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, sha, fmt.Errorf("content %s: its chunk %d, %s, is missing from the chunk store: %w", b.sha, i+1, sha, errdefs.ErrDataLoss)
	}
	if err != nil {
		return nil, sha, err
	}
	if blob.Size() != c.Size {
		blob.Close()
		return nil, sha, fmt.Errorf("content %s: its chunk %d, %s, has %d bytes in the chunk store, not %d: %w", b.sha, i+1, sha, blob.Size(), c.Size, errdefs.ErrDataLoss)
	}
	return blob, sha, nil
}

// ReadAt reads from the chunks that hold [off, off+len(p)), unchecked: it
// is for small reads (a header), the whole blob being checked by whoever
// reads it all.
func (b *chunkedBlob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("content %s: read at %d", b.sha, off)
	}
	n := 0
	for n < len(p) {
		if off >= b.size {
			return n, io.EOF
		}
		i := b.at(off)
		blob, _, err := b.open(i)
		if err != nil {
			return n, err
		}
		want := min(int64(len(p)-n), b.offsets[i]+b.list[i].Size-off)
		m, err := blob.ReadAt(p[n:n+int(want)], off-b.offsets[i])
		blob.Close()
		n += m
		off += int64(m)
		if err != nil && !(errors.Is(err, io.EOF) && int64(m) == want) {
			return n, err
		}
	}
	return n, nil
}

// Stream reads n bytes from off chunk after chunk, each read whole and
// checked against its sha256 before any of it is returned.
func (b *chunkedBlob) Stream(off, n int64) (io.Reader, error) {
	if off < 0 || n < 0 || off+n > b.size {
		return nil, fmt.Errorf("content %s: stream %d bytes at %d of %d", b.sha, n, off, b.size)
	}
	return &chunkStream{b: b, off: off, end: off + n}, nil
}

// chunkStream is a Stream of a chunkedBlob.
type chunkStream struct {
	b        *chunkedBlob
	off, end int64
	// buf holds the chunk being read; pending is what is left to return of it.
	buf     []byte
	pending []byte
}

func (s *chunkStream) Read(p []byte) (int, error) {
	if len(s.pending) == 0 {
		if s.off >= s.end {
			return 0, io.EOF
		}
		if err := s.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	return n, nil
}

// next reads and checks the chunk holding off and makes what of it the
// stream returns pending.
func (s *chunkStream) next() error {
	b := s.b
	i := b.at(s.off)
	c := b.list[i]
	blob, sha, err := b.open(i)
	if err != nil {
		return err
	}
	defer blob.Close()
	if cap(s.buf) < int(c.Size) {
		s.buf = make([]byte, c.Size, max(c.Size, chunks.MaxSize))
	}
	s.buf = s.buf[:c.Size]
	r, err := blob.Stream(0, c.Size)
	if err != nil {
		return err
	}
	if _, err := io.ReadFull(r, s.buf); err != nil {
		return fmt.Errorf("content %s: read its chunk %s: %w", b.sha, sha, err)
	}
	if sum := sha256.Sum256(s.buf); !bytes.Equal(sum[:], c.Digest[:]) {
		return fmt.Errorf("content %s: its chunk %d in the chunk store, %s, hashes to %x: %w", b.sha, i+1, sha, sum, errdefs.ErrDataLoss)
	}
	from := s.off - b.offsets[i]
	to := min(c.Size, s.end-b.offsets[i])
	s.pending = s.buf[from:to]
	s.off = b.offsets[i] + to
	return nil
}
