package content

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/store"
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
// reassembles the chunks in order, checking each against its sha256, with
// a few chunks fetched ahead of the reader (see defaultReadAhead).
//
// Chunks have no records. The collector keeps those the index of a
// recorded blob lists and removes the others once their modification time
// is a grace period old. A write reusing a stored chunk touches it (its
// modification time becomes now) before the blob's record exists, and
// writers and the collector lock a chunk while they touch, store or remove
// it, so a chunk the collector judged unreferenced before a write named it
// is young when the collector looks at it again under the lock, or gone
// when the write does, which then stores it again.
//
// A chunk lost from the chunk store (a failing disk, an operator, a bucket
// policy) is repaired by the next write of a blob holding it: a write of a
// blob the library records as stored as chunks looks at each of its chunks
// (one Stat each) and stores again, from the data written, those missing
// or of the wrong size, under the same locks (see repairChunks). A chunk
// damaged at its size looks sound to a Stat; the read that finds it
// damaged removes it instead (see dropDamagedChunk), so that the next
// write stores it again.

// chunkLookups bounds the Stats one write makes at once to look at the
// chunks of a blob it holds: enough to hide an object store's round trip
// behind the others, few enough not to crowd its connections.
const chunkLookups = 16

// dropTimeout bounds the removal of a damaged chunk a read found: it
// outlives the read, whose client may be gone already.
const dropTimeout = time.Minute

// storeChunks stores the chunks of list at the indexes which, read from f
// (the staged blob), in the chunk store: a chunk it holds whole is
// touched, one it lacks stored.
func (l *Library) storeChunks(ctx context.Context, f *os.File, list []chunks.Chunk, which []int) error {
	locks, done, err := l.chunkLocks(ctx)
	if err != nil {
		return err
	}
	defer done()
	offsets, _ := chunks.Locate(list)
	for _, i := range which {
		if err := l.storeChunk(ctx, locks, list[i], io.NewSectionReader(f, offsets[i], list[i].Size)); err != nil {
			return fmt.Errorf("content library: store chunk %d of %d: %w", i+1, len(list), err)
		}
	}
	return nil
}

// distinct lists the indexes of list's chunks, each chunk once: a blob
// may hold the same chunk several times (runs of zeros), the store once.
func distinct(list []chunks.Chunk) []int {
	seen := make(map[[chunks.DigestSize]byte]bool, len(list))
	out := make([]int, 0, len(list))
	for i, c := range list {
		if !seen[c.Digest] {
			seen[c.Digest] = true
			out = append(out, i)
		}
	}
	return out
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

// lostChunks returns the chunks of the blob c records, when it is stored
// as chunks in this server's chunk store, and the indexes in that list of
// those the chunk store lacks or holds at another size than the index
// says, each chunk looked at once: what a write of the blob stores again.
func (l *Library) lostChunks(ctx context.Context, c *osvcv1.Content) ([]chunks.Chunk, []int, error) {
	// Without a chunk store, the library can neither read nor repair the
	// blob; its reads say why.
	if !c.GetStoredAsChunks() || l.chunks == nil {
		return nil, nil, nil
	}
	list, err := l.chunkList(ctx, c)
	if err != nil {
		return nil, nil, fmt.Errorf("content %s: %w", c.GetSha256(), err)
	}
	which := distinct(list)
	lost := make([]bool, len(which))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(chunkLookups)
	for j, i := range which {
		g.Go(func() error {
			info, err := l.chunks.Stat(gctx, hex.EncodeToString(list[i].Digest[:]))
			if errors.Is(err, errdefs.ErrNotFound) {
				lost[j] = true
				return nil
			}
			lost[j] = err == nil && info.SizeBytes != list[i].Size
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, fmt.Errorf("content %s: look at its chunks: %w", c.GetSha256(), err)
	}
	var out []int
	for j, i := range which {
		if lost[j] {
			out = append(out, i)
		}
	}
	return list, out, nil
}

// repairChunks stores again, from staged (the blob's data, which the
// caller checked), the chunks the blob c records as stored as chunks has
// lost (see lostChunks), and reports whether it stored any: the record is
// kept, and a read gives the blob's bytes again. The caller holds the
// blob's lock. Data staged in an object store (a library that keeps new
// blobs whole there) is not at hand to cut: the blob is stored whole from
// it instead (see storeWhole).
func (l *Library) repairChunks(ctx context.Context, c *osvcv1.Content, staged Staged) (*osvcv1.Content, bool, error) {
	list, lost, err := l.lostChunks(ctx, c)
	if err != nil || len(lost) == 0 {
		return c, false, err
	}
	sha := c.GetSha256()
	file, local := staged.(*fileStaged)
	if !local {
		l.logger.Warn("a blob stored as chunks lost some of them; storing it whole from the data written", "sha256", sha, "lost_chunks", len(lost))
		c, err := l.storeWhole(ctx, c, staged)
		return c, err == nil, err
	}
	l.logger.Warn("a blob stored as chunks lost some of them; storing them again from the data written", "sha256", sha, "lost_chunks", len(lost))
	if err := l.storeChunks(ctx, file.f, list, lost); err != nil {
		return nil, false, fmt.Errorf("content %s: store its lost chunks again: %w", sha, err)
	}
	return c, true, nil
}

// storeWhole publishes staged as the blob c records as stored as chunks
// and records it whole; the chunks only it held go at the collector's
// next passes, its index stays with its record.
func (l *Library) storeWhole(ctx context.Context, c *osvcv1.Content, staged Staged) (*osvcv1.Content, error) {
	sha := c.GetSha256()
	if err := staged.Publish(ctx, sha); err != nil {
		return nil, fmt.Errorf("content %s: store it whole: %w", sha, err)
	}
	key := l.store.ContentKey(sha)
	var out *osvcv1.Content
	_, err := l.store.Txn(ctx, "record content "+sha+" whole", func(tx *store.Tx) error {
		rec, err := store.Load[*osvcv1.Content](tx, key)
		if err != nil {
			return err
		}
		rec.StoredAsChunks = false
		rec.UpdateTime = timestamppb.New(l.now())
		out = rec
		return tx.Put(key, rec)
	})
	if err != nil {
		return nil, fmt.Errorf("content %s: record it whole: %w", sha, err)
	}
	return out, nil
}

// dropDamagedChunk removes the chunk c from the chunk store when, read
// again whole under its lock, it still does not hash to its digest. A read
// found it damaged; a write takes a chunk there at its size as sound (a
// Stat cannot tell, and hashing every chunk of every blob written again
// would cost a read of it), so only its removal lets the next write of a
// blob holding it store it again, and every read of it fails meanwhile
// anyway. It is read again because a write may have stored it again since
// the read, and only a chunk read whole and found damaged goes: a failed
// read (a dropped connection) removes nothing. Failures are logged: the
// read fails as DATA_LOSS whatever happens here.
func (l *Library) dropDamagedChunk(ctx context.Context, c chunks.Chunk) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
	defer cancel()
	sha := hex.EncodeToString(c.Digest[:])
	err := func() error {
		locks, done, err := l.chunkLocks(ctx)
		if err != nil {
			return err
		}
		defer done()
		unlock, err := locks.lock(ctx, sha)
		if err != nil {
			return err
		}
		defer unlock()
		blob, err := l.chunks.Open(ctx, sha)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		_, sum, err := readChunk(blob, c, nil)
		blob.Close()
		if err != nil || sum == c.Digest {
			return err
		}
		if err := l.chunks.Delete(ctx, sha); err != nil {
			return err
		}
		l.logger.Warn("a damaged chunk was removed from the chunk store; the next write of a blob holding it stores it again", "chunk", sha, "hashes_to", hex.EncodeToString(sum[:]))
		return nil
	}()
	if err != nil {
		l.logger.Warn("removing a damaged chunk failed; a write of a blob holding it does not repair it until a read removes it", "chunk", sha, "error", err)
	}
}

// readChunk reads the chunk c whole from blob, its open copy in the chunk
// store, into buf, grown when too small, and returns the data and its
// sha256.
func readChunk(blob Blob, c chunks.Chunk, buf []byte) ([]byte, [chunks.DigestSize]byte, error) {
	if int64(cap(buf)) < c.Size {
		buf = make([]byte, c.Size)
	}
	buf = buf[:c.Size]
	r, err := blob.Stream(0, c.Size)
	if err != nil {
		return buf, [chunks.DigestSize]byte{}, err
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		return buf, [chunks.DigestSize]byte{}, err
	}
	return buf, sha256.Sum256(buf), nil
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
	ctx, stop := context.WithCancel(ctx)
	return &chunkedBlob{ctx: ctx, stop: stop, lib: l, readAhead: l.readAhead, sha: c.GetSha256(), list: list, offsets: offsets, size: size}, nil
}

// chunkList reads and checks the chunk index c's record names.
func (l *Library) chunkList(ctx context.Context, c *osvcv1.Content) ([]chunks.Chunk, error) {
	_, list, err := l.loadIndex(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("its chunk index: %w", err)
	}
	return list, nil
}

// defaultReadAhead is how many chunks a stream of a blob stored as chunks
// holds at once: the one it is returning and those fetched ahead of the
// reader, each by a request of its own. From a bucket far away, the
// requests' round trips overlap instead of adding up; a stream holds at
// most defaultReadAhead × chunks.MaxSize bytes (16 MiB).
const defaultReadAhead = 4

// chunkedBlob is a blob stored as chunks, read from the chunk store.
type chunkedBlob struct {
	// ctx is the Open's context, ended by stop when the blob is closed.
	ctx       context.Context
	stop      context.CancelFunc
	lib       *Library
	readAhead int
	sha       string
	list      []chunks.Chunk
	offsets   []int64
	size      int64
	// fetches are the streams' fetches in progress; Close waits for them.
	fetches sync.WaitGroup
}

func (b *chunkedBlob) Size() int64 { return b.size }

// Close ends the fetches of the blob's streams and waits for them, so that
// no request outlives a reader that stopped early.
func (b *chunkedBlob) Close() error {
	b.stop()
	b.fetches.Wait()
	return nil
}

// at is the index of the chunk holding the byte at off < size.
func (b *chunkedBlob) at(off int64) int {
	return sort.Search(len(b.offsets), func(i int) bool { return b.offsets[i] > off }) - 1
}

// open opens chunk i, checking the store holds it at its size.
func (b *chunkedBlob) open(i int) (Blob, string, error) {
	c := b.list[i]
	sha := hex.EncodeToString(c.Digest[:])
	blob, err := b.lib.chunks.Open(b.ctx, sha)
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

// fetch reads chunk i whole into buf, grown when too small, and checks it
// against its sha256. A chunk that does not hash to it is removed (see
// dropDamagedChunk) before the read fails.
func (b *chunkedBlob) fetch(i int, buf []byte) ([]byte, error) {
	c := b.list[i]
	blob, sha, err := b.open(i)
	if err != nil {
		return buf, err
	}
	defer blob.Close()
	buf, sum, err := readChunk(blob, c, buf)
	if err != nil {
		return buf, fmt.Errorf("content %s: read its chunk %s: %w", b.sha, sha, err)
	}
	if sum != c.Digest {
		b.lib.dropDamagedChunk(b.ctx, c)
		return buf, fmt.Errorf("content %s: its chunk %d in the chunk store, %s, hashes to %x: %w", b.sha, i+1, sha, sum, errdefs.ErrDataLoss)
	}
	return buf, nil
}

// Stream reads n bytes from off chunk after chunk, each read whole and
// checked against its sha256 before any of it is returned, the next ones
// fetched meanwhile (see defaultReadAhead).
func (b *chunkedBlob) Stream(off, n int64) (io.Reader, error) {
	r, err := StreamRanges(b, []Range{{Offset: off, Length: n}})
	if err != nil {
		return nil, fmt.Errorf("content %s: %w", b.sha, err)
	}
	return r, nil
}

// streamRanges reads ranges, which StreamRanges checked, none empty, as
// Stream reads one: the chunks of the next ranges are fetched while the
// reader is still on the ones before, so a delta download asking for
// many separate chunks keeps as many requests going as a stream of a
// whole blob.
func (b *chunkedBlob) streamRanges(ranges []Range) *chunkStream {
	s := &chunkStream{b: b, spans: ranges}
	if len(ranges) > 0 {
		s.off = ranges[0].Offset
	}
	s.fill()
	return s
}

// chunkStream is a stream of ranges of a chunkedBlob.
type chunkStream struct {
	b *chunkedBlob
	// spans are the ranges the stream returns, in order, none empty;
	// reading is the one it returns, off its next byte.
	spans   []Range
	reading int
	off     int64
	// fetching is the span whose chunks are being fetched, next the first
	// chunk not fetched yet: chunks are fetched in the order the spans
	// need them, a chunk two spans share once.
	fetching int
	next     int
	// ahead are the chunks fetched or being fetched, in order, the first
	// being the one the stream returns; spare are buffers they left.
	ahead []*chunkFetch
	spare [][]byte
	// pending is what is left to return of ahead[0].
	pending []byte
	err     error
}

// chunkFetch is the fetch of one chunk by a goroutine of its own: data
// and err are set once done is closed.
type chunkFetch struct {
	i    int
	done chan struct{}
	data []byte
	err  error
}

// fill starts fetching chunks until the stream holds readAhead of them or
// has fetched all its spans need.
func (s *chunkStream) fill() {
	for len(s.ahead) < s.b.readAhead {
		i, ok := s.nextChunk()
		if !ok {
			return
		}
		f := &chunkFetch{i: i, done: make(chan struct{})}
		var buf []byte
		if n := len(s.spare); n > 0 {
			buf, s.spare = s.spare[n-1], s.spare[:n-1]
		}
		s.b.fetches.Go(func() {
			defer close(f.done)
			f.data, f.err = s.b.fetch(f.i, buf)
		})
		s.ahead = append(s.ahead, f)
	}
}

// nextChunk returns the next chunk the spans need after those fetched,
// false when none is left.
func (s *chunkStream) nextChunk() (int, bool) {
	for ; s.fetching < len(s.spans); s.fetching++ {
		sp := s.spans[s.fetching]
		// A span starting in the chunk the span before ended in shares
		// it: fetched already, it is not fetched again.
		i := max(s.next, s.b.at(sp.Offset))
		if i <= s.b.at(sp.Offset+sp.Length-1) {
			s.next = i + 1
			return i, true
		}
	}
	return 0, false
}

func (s *chunkStream) Read(p []byte) (int, error) {
	for len(s.pending) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.reading == len(s.spans) {
			return 0, io.EOF
		}
		s.err = s.advance()
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	return n, nil
}

// advance drops the chunk the stream has returned, starts fetching the
// next ones, waits for the chunk holding off and makes what of it the
// stream returns pending, up to the end of its span, moving to the next
// span at that end. The fetches end on their own, so a reader that stops
// early leaves none waiting; Close cuts them short.
func (s *chunkStream) advance() error {
	b := s.b
	if len(s.ahead) > 0 && s.ahead[0].i < b.at(s.off) {
		s.spare = append(s.spare, s.ahead[0].data)
		s.ahead = s.ahead[1:]
	}
	s.fill()
	f := s.ahead[0]
	<-f.done
	if f.err != nil {
		return f.err
	}
	i, sp := f.i, s.spans[s.reading]
	from := s.off - b.offsets[i]
	to := min(b.list[i].Size, sp.Offset+sp.Length-b.offsets[i])
	s.pending = f.data[from:to]
	s.off = b.offsets[i] + to
	if s.off == sp.Offset+sp.Length {
		if s.reading++; s.reading < len(s.spans) {
			s.off = s.spans[s.reading].Offset
		}
	}
	return nil
}
