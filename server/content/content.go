// Package content is the content library: blobs (images, update files) addressed
// by sha256, recorded in etcd, their data kept in a directory of the server
// or, for several servers, in an S3-compatible bucket (see Blobs).
package content

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/singleflight"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/admission"
	"github.com/osvc/osvc/server/store"
)

// DefaultMediaType is recorded when a writer names none.
const DefaultMediaType = "application/octet-stream"

// tmpDir is the folder under Dir for uploads in progress: on the same file
// system as the blobs, so the final rename is atomic. Its name cannot collide
// with the two-hex-digit blob folders. With an object store, it holds the
// temporary copies of blobs that readers need as files (see LocalFile).
const tmpDir = "tmp"

// LibraryIDFile is the file under Dir holding the library's identifier (see
// Locate). Its name cannot collide with the blob folders either.
const LibraryIDFile = "library-id"

// writebackEvery is how much of an upload is written before the library asks
// the kernel to start writing it to disk (see startWriteback), so the sync
// before the blob is recorded waits for the last stretch only.
const writebackEvery = 8 << 20

// staleTempAge is how old an upload's temp file must be before New removes it
// as the leftover of a crash.
const staleTempAge = 24 * time.Hour

// Defaults of Config.
const (
	// DefaultMaxBlobBytes is 64 GiB: an install.wim of every edition is
	// 5 to 10 GiB, a cumulative update 1 GiB at most.
	DefaultMaxBlobBytes = 64 << 30
	// DefaultMaxConcurrentWrites lets eight uploads receive at once. Each
	// holds a gRPC flow-control window (8 MiB) and a message buffer, and
	// writes to the library's disk: eight keep a few agents' results and
	// an administrator's uploads moving without letting a crowd of clients
	// take the server's memory or disk bandwidth.
	DefaultMaxConcurrentWrites = 8
)

// lockTTL is how long a blob's lock outlives a server that died holding
// it, when the library's blobs are shared (see Blobs.Shared).
const lockTTL = 10 // seconds, as etcd leases count

// Config configures a Library.
type Config struct {
	// Dir holds the blobs as <Dir>/<first two hex digits>/<sha256>; created
	// when missing. With Blobs, it holds only temporary copies of blobs
	// that readers need as files.
	Dir string
	// Blobs, when set, keeps the blobs' data there (an object store, see
	// package s3store) instead of in Dir.
	Blobs Blobs
	// Chunks is where the blobs stored as chunks keep their chunks (see
	// storeChunks): with Blobs on an object store, the same bucket under a
	// prefix of its own; nil there keeps every new blob whole. With the
	// blobs in Dir, the chunks are in Dir/chunks.
	Chunks Blobs
	// WholeBlobs keeps every new blob whole, as one file or object, as
	// clients on the library's volume can then link (Locate, Adopt); the
	// blobs stored as chunks before stay so, and readable.
	WholeBlobs bool
	Store      *store.Store
	Logger     hclog.Logger
	// MaxBlobBytes is the largest blob Write accepts: a header announcing
	// more is refused before any data is read, and data passing it as soon
	// as it does. Default DefaultMaxBlobBytes.
	MaxBlobBytes int64
	// MaxConcurrentWrites bounds the writes receiving data at once; more
	// wait for their turn while their context lives. Default
	// DefaultMaxConcurrentWrites.
	MaxConcurrentWrites int
	// Now is the clock of records' create and update times; time.Now when nil.
	Now func() time.Time
}

// Library stores blobs by sha256. The blob is stored before its etcd record and
// removed after it, so a record always names a blob that is there.
type Library struct {
	dir   string
	blobs Blobs
	// files is blobs when the blobs are files of this server's directory,
	// which clients on the same volume may take (Locate, Adopt) and
	// readers may open by path; nil for an object store.
	files *dirStore
	// chunks holds the chunks of the blobs stored as chunks; nil when the
	// library has no chunk store (an object store without Config.Chunks).
	chunks Blobs
	// asChunks stores new blobs of chunks.MinBlobBytes or more as chunks.
	asChunks bool
	// local stages writes in a file of Dir's when they may be stored as
	// chunks, which are then read back from it: files when the blobs are
	// files of this server.
	local *dirStore
	// chunkMu serializes, per chunk, a write touching or storing it with
	// the collector removing it, in this server; see chunkLocks for several.
	chunkMu  keyedMutex
	store    *store.Store
	logger   hclog.Logger
	maxBytes int64
	writes   *admission.Gate
	now      func() time.Time
	// locks serializes, per sha256, putting a blob in place and recording
	// it (Write) with removing it (the collector), in this server; see
	// lockBlob for several.
	locks keyedMutex
	// indexing makes the chunk index of a blob stored without one once
	// for every caller asking for it at the same time.
	indexing singleflight.Group
	// readAhead is how many chunks a stream of a blob stored as chunks
	// holds at once (see defaultReadAhead).
	readAhead int
	// id identifies the library's folder (see Locate).
	id string
}

// New validates cfg, creates Dir when missing and returns a Library.
func New(cfg Config) (*Library, error) {
	if cfg.Dir == "" {
		return nil, errors.New("content: Config.Dir is required (the content library directory)")
	}
	if cfg.Store == nil {
		return nil, errors.New("content: Config.Store is required")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if cfg.MaxBlobBytes < 0 {
		return nil, fmt.Errorf("content: Config.MaxBlobBytes is %d; use a positive size", cfg.MaxBlobBytes)
	}
	writes, err := admission.New(admission.Config{
		Limit:   cmp.Or(cfg.MaxConcurrentWrites, DefaultMaxConcurrentWrites),
		What:    "uploads",
		Setting: "osvc-server --max-concurrent-uploads",
	})
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("content library directory %s: %w", cfg.Dir, err)
	}
	l := &Library{
		dir: dir, blobs: cfg.Blobs, store: cfg.Store, logger: logger.Named("content"),
		maxBytes: cmp.Or(cfg.MaxBlobBytes, DefaultMaxBlobBytes), writes: writes,
		now: cfg.Now, readAhead: defaultReadAhead,
	}
	if l.now == nil {
		l.now = time.Now
	}
	ctx, cancel := context.WithTimeout(context.Background(), staleSweepTimeout)
	defer cancel()
	if l.blobs == nil {
		if l.files, err = newDirStore(dir, l.logger); err != nil {
			return nil, err
		}
		l.blobs, l.local = l.files, l.files
		if l.id, err = loadID(dir); err != nil {
			return nil, err
		}
		if l.chunks, err = newDirStore(filepath.Join(dir, chunksDir), l.logger); err != nil {
			return nil, err
		}
	} else {
		if err := os.MkdirAll(filepath.Join(dir, tmpDir), 0o700); err != nil {
			return nil, fmt.Errorf("content library directory %s: %w", dir, err)
		}
		removeStaleFiles(l.logger, staleTempAge, filepath.Join(dir, tmpDir))
		l.local = &dirStore{dir: dir, logger: l.logger}
		l.chunks = cfg.Chunks
	}
	l.asChunks = l.chunks != nil && !cfg.WholeBlobs
	l.blobs.RemoveStale(ctx, staleTempAge)
	if l.chunks != nil {
		l.chunks.RemoveStale(ctx, staleTempAge)
	}
	return l, nil
}

// staleSweepTimeout bounds New's removal of stale uploads: an object store
// that does not answer fails the first write instead of the start.
const staleSweepTimeout = time.Minute

// loadID reads the library's identifier from Dir/LibraryIDFile, making it
// (32 random hex digits) when the library is new. It is made in the temp
// folder and linked into place, so replicas sharing Dir agree on one.
func loadID(dir string) (string, error) {
	path := filepath.Join(dir, LibraryIDFile)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			id := strings.TrimSpace(string(data))
			if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
				return "", fmt.Errorf("content library: %s holds %q, not an identifier: remove the file, osvc-server makes a new one", path, data)
			}
			return id, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("content library: %w", err)
		}
		tmp, err := os.CreateTemp(filepath.Join(dir, tmpDir), "library-id-*")
		if err != nil {
			return "", fmt.Errorf("content library: %w", err)
		}
		id := make([]byte, 16)
		rand.Read(id)
		_, err = tmp.WriteString(hex.EncodeToString(id) + "\n")
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			// Link, unlike rename, never replaces another replica's.
			if err = os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
				err = nil
			}
		}
		os.Remove(tmp.Name())
		if err != nil {
			return "", fmt.Errorf("content library: make %s: %w", path, err)
		}
	}
}

// ValidSHA256 reports whether s is a sha256 as the library names blobs: 64
// lower-case hex digits, the rule of package transfer that clients use too.
func ValidSHA256(s string) bool { return transfer.ValidSHA256(s) }

func checkSHA256(s string) error {
	if !ValidSHA256(s) {
		return errdefs.InvalidArgument("sha256", fmt.Sprintf("%q is not a sha256: want 64 lower-case hex digits", s))
	}
	return nil
}

// Name is the resource name of a blob: contents/{sha256}.
func Name(sha string) string { return "contents/" + sha }

// WriteHeader describes a blob being written.
type WriteHeader struct {
	// SHA256 is the expected digest, optional.
	SHA256 string
	// SizeBytes is the expected size; zero means unknown.
	SizeBytes int64
	// MediaType is recorded with the blob; DefaultMediaType when empty.
	MediaType string
	// Trailer, when set, is called once the data has ended and returns the
	// sha256 the writer declared after the data ("" when it declared none):
	// a writer that hashes while it sends knows it only then. The data must
	// hash to it, as to SHA256.
	Trailer func() string
}

// Write stores a blob: data is staged where no reader sees it (a temp file
// of Dir, a temporary upload to the object store), its sha256 and size are
// checked against the header, then it is put in place and recorded in etcd,
// with its chunk index (see ChunkIndex), cut while the data was received.
// A blob the library holds is not written again (existed=true); when h.SHA256
// names one, r is not read at all, and h.SizeBytes, when set, must be its
// size. A blob stored as chunks is held only when the chunk store holds
// each of them at its size: the chunks it lost are stored again from the
// data (existed=false), the record kept (see repairChunks). A blob larger than Config.MaxBlobBytes is refused with
// errdefs.ErrResourceExhausted: at once when the header announces it, else
// as soon as the data passes it. At most Config.MaxConcurrentWrites writes
// receive data at once; the others wait for their turn. A refusal leaves
// nothing behind.
func (l *Library) Write(ctx context.Context, h WriteHeader, r io.Reader) (c *osvcv1.Content, existed bool, err error) {
	if c, err := l.begin(ctx, &h); err != nil || c != nil {
		return c, c != nil, err
	}
	release, err := l.writes.Enter(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("content library: %w", err)
	}
	defer release()
	limit := l.maxBytes
	if h.SizeBytes > 0 {
		limit = h.SizeBytes
	}
	// One byte more than the limit is enough to tell the data is too long.
	// A stalled upload ends with ctx rather than hold what it staged for ever.
	ix := chunks.NewIndexer()
	m := &meter{r: io.LimitReader(transfer.ContextReader(ctx, r), limit+1), hash: sha256.New(), index: ix, limit: limit, announced: h.SizeBytes}
	// What may be stored as chunks is staged in a file, to be read back.
	stage := l.blobs.Stage
	if l.asChunks && (h.SizeBytes == 0 || h.SizeBytes >= chunks.MinBlobBytes) {
		stage = l.local.Stage
	}
	staged, err := stage(ctx, m, h.SHA256)
	list, ierr := ix.Close()
	if err != nil {
		return nil, false, err
	}
	defer staged.Discard()
	if ierr != nil {
		// The blob is sound; its index is made when a client asks for it.
		l.logger.Warn("cutting an upload into chunks failed", "error", ierr)
		list = nil
	}
	return l.finish(ctx, staged, m.n, hex.EncodeToString(m.hash.Sum(nil)), h, list)
}

// meter hashes, cuts into chunks and counts what a write receives, and
// fails the write as soon as the data passes what it may hold: the size its
// header announced, else the library's maximum.
type meter struct {
	r         io.Reader
	hash      hash.Hash
	index     io.Writer
	n         int64
	limit     int64
	announced int64
}

func (m *meter) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.hash.Write(p[:n])
	m.index.Write(p[:n])
	m.n += int64(n)
	switch {
	case m.n <= m.limit:
		return n, err
	case m.announced > 0:
		return n, errdefs.InvalidArgument("size_bytes", fmt.Sprintf("the header announced %d bytes but the data has more", m.announced))
	default:
		return n, fmt.Errorf("%w: the upload passed %d bytes, the most the content library accepts (osvc-server --max-upload-bytes)",
			errdefs.ErrResourceExhausted, m.limit)
	}
}

// begin checks h before any data is read, sets its defaults, and returns
// the blob when h names one the library holds.
func (l *Library) begin(ctx context.Context, h *WriteHeader) (*osvcv1.Content, error) {
	if h.SizeBytes < 0 {
		return nil, errdefs.InvalidArgument("size_bytes", fmt.Sprintf("%d is negative", h.SizeBytes))
	}
	if h.SizeBytes > l.maxBytes {
		return nil, fmt.Errorf("%w: the upload announces %d bytes, more than the %d bytes the content library accepts (osvc-server --max-upload-bytes)",
			errdefs.ErrResourceExhausted, h.SizeBytes, l.maxBytes)
	}
	if h.MediaType == "" {
		h.MediaType = DefaultMediaType
	}
	if h.SHA256 == "" {
		return nil, nil
	}
	if err := checkSHA256(h.SHA256); err != nil {
		return nil, err
	}
	c, err := l.claim(ctx, h.SHA256)
	if err != nil || c == nil {
		return nil, err
	}
	if h.SizeBytes > 0 && h.SizeBytes != c.GetSizeBytes() {
		return nil, errdefs.InvalidArgument("size_bytes", fmt.Sprintf(
			"the content library holds %s with %d bytes, not %d as the header says; send the file's real size", h.SHA256, c.GetSizeBytes(), h.SizeBytes))
	}
	// A blob that lost chunks is repaired from the data (see finish),
	// which must then be read.
	if _, lost, err := l.lostChunks(ctx, c); err != nil || len(lost) > 0 {
		return nil, err
	}
	return c, nil
}

// finish checks the n staged bytes, hashing to sum, against h, then, unless
// the library holds the blob sum already, publishes them as that blob and
// records it, with list, its chunks, stored as its chunk index; a blob it
// holds stored as chunks gets from them the chunks it lost. Nothing is
// published before every check has passed.
func (l *Library) finish(ctx context.Context, staged Staged, n int64, sum string, h WriteHeader, list []chunks.Chunk) (c *osvcv1.Content, existed bool, err error) {
	if h.SizeBytes > 0 && n != h.SizeBytes {
		return nil, false, errdefs.InvalidArgument("size_bytes",
			fmt.Sprintf("the header announced %d bytes but the data has %d", h.SizeBytes, n))
	}
	if h.SHA256 != "" && sum != h.SHA256 {
		return nil, false, errdefs.InvalidArgument("sha256",
			fmt.Sprintf("the data hashes to %s, not %s as the header says; the upload was damaged or the header is wrong", sum, h.SHA256))
	}
	if h.Trailer != nil {
		if declared := h.Trailer(); declared != "" && sum != declared {
			return nil, false, errdefs.InvalidArgument("trailer.sha256",
				fmt.Sprintf("the data hashes to %s (%d bytes), not %s as the writer hashed it while sending: the upload was damaged on the way; send it again", sum, n, declared))
		}
	}
	// The collector removes a blob under the same lock: it never removes the
	// blob this write puts in place, nor drops the record made for it.
	unlock, err := l.lockBlob(ctx, sum)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	// The data named itself only now, or another writer stored it
	// meanwhile: it may be a blob the library holds, which may have lost
	// chunks the data has.
	if c, err := l.claim(ctx, sum); err != nil || c != nil {
		if err != nil {
			return nil, false, err
		}
		c, repaired, err := l.repairChunks(ctx, c, staged)
		if err != nil {
			return nil, false, err
		}
		return c, !repaired, nil
	}
	index, asChunks, err := l.publish(ctx, staged, n, sum, list)
	if err != nil {
		return nil, false, err
	}

	now := timestamppb.New(l.now())
	c = &osvcv1.Content{
		Name:           Name(sum),
		Sha256:         sum,
		SizeBytes:      n,
		MediaType:      h.MediaType,
		CreateTime:     now,
		UpdateTime:     now,
		ChunkIndex:     index,
		StoredAsChunks: asChunks,
	}
	if _, err := l.store.Create(ctx, l.store.ContentKey(sum), c); err != nil {
		return nil, false, fmt.Errorf("content library: record %s: %w", sum, err)
	}
	l.logger.Info("blob stored", "sha256", sum, "size", n, "media_type", h.MediaType, "as_chunks", asChunks)
	return c, false, nil
}

// publish puts the n staged bytes hashing to sum in place: as their chunks
// (list) when the library stores such a blob so, the index first, else
// whole, with the index when it can be stored. It returns the index's
// reference for the blob's record.
func (l *Library) publish(ctx context.Context, staged Staged, n int64, sum string, list []chunks.Chunk) (*osvcv1.ChunkIndexRef, bool, error) {
	file, local := staged.(*fileStaged)
	if l.asChunks && local && n >= chunks.MinBlobBytes && len(list) > 0 {
		ref, err := l.putIndex(ctx, sum, n, list)
		if err != nil {
			return nil, false, fmt.Errorf("content library: store the chunk index of %s: %w", sum, err)
		}
		if err := l.storeChunks(ctx, file.f, list, distinct(list)); err != nil {
			return nil, false, err
		}
		return ref, true, nil
	}
	if local && file.d != l.files {
		// Staged here to be stored as chunks, but stored whole after all:
		// to the object store.
		whole, err := l.blobs.Stage(ctx, io.NewSectionReader(file.f, 0, n), sum)
		if err != nil {
			return nil, false, err
		}
		defer whole.Discard()
		staged = whole
	}
	if err := staged.Publish(ctx, sum); err != nil {
		return nil, false, err
	}
	return l.storeIndex(ctx, sum, n, list), false, nil
}

// lockBlob locks sha against other writers and collectors of this server
// and, when the blobs are shared, of every server: through etcd, on a
// lease that ends when the server does. The unlock it returns does not
// fail.
func (l *Library) lockBlob(ctx context.Context, sha string) (unlock func(), err error) {
	unlockHere := l.locks.lock(sha)
	if !l.blobs.Shared() {
		return unlockHere, nil
	}
	session, err := concurrency.NewSession(l.store.Client(), concurrency.WithTTL(lockTTL), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		unlockHere()
		return nil, fmt.Errorf("content library: lock %s: %w", sha, err)
	}
	m := concurrency.NewMutex(session, l.store.ContentLockPrefix(sha))
	if err := m.Lock(ctx); err != nil {
		session.Close()
		unlockHere()
		return nil, fmt.Errorf("content library: lock %s: %w", sha, err)
	}
	return func() {
		// Closing the session revokes its lease, which releases the lock;
		// the session outlives ctx so that it can.
		if err := session.Close(); err != nil {
			l.logger.Warn("releasing a blob's lock failed; it ends with its lease", "sha256", sha, "error", err, "ttl_seconds", lockTTL)
		}
		unlockHere()
	}, nil
}

// Claim is Stat for a caller about to reference the blob (an import, a
// run's result): it sets the record's update time to now, so the collector
// leaves the blob alone for a grace period, and it checks the blob's data is
// there. errdefs.ErrNotFound when the library does not hold it.
func (l *Library) Claim(ctx context.Context, sha string) (*osvcv1.Content, error) {
	if err := checkSHA256(sha); err != nil {
		return nil, err
	}
	c, err := l.claim(ctx, sha)
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, fmt.Errorf("content %s: %w", sha, errdefs.ErrNotFound)
	}
	return c, nil
}

// claim returns the record of a blob the library holds with its update time
// set to now, or nil. The update compares the record's revision, so it either
// lands before the collector judges the blob (which then keeps it) or finds
// the record gone. A record whose data is missing counts as not held and is
// dropped, so the next write repairs it.
func (l *Library) claim(ctx context.Context, sha string) (*osvcv1.Content, error) {
	key := l.store.ContentKey(sha)
	var out *osvcv1.Content
	_, err := l.store.Txn(ctx, "claim content "+sha, func(tx *store.Tx) error {
		out = nil
		c, err := store.Load[*osvcv1.Content](tx, key)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		_, err = l.blobs.Stat(ctx, dataOf(c))
		if errors.Is(err, errdefs.ErrNotFound) {
			l.logger.Warn("blob recorded but missing from the store; accepting it again", "sha256", sha, "store", l.blobs)
			tx.Delete(key)
			return nil
		}
		if err != nil {
			return err
		}
		c.UpdateTime = timestamppb.New(l.now())
		out = c
		return tx.Put(key, c)
	})
	if err != nil {
		return nil, fmt.Errorf("content %s: %w", sha, err)
	}
	return out, nil
}

// dataOf is the blob of the store that holds c's data: c's own, or for a
// blob stored as chunks its chunk index, which lists them.
func dataOf(c *osvcv1.Content) string {
	if c.GetStoredAsChunks() {
		return c.GetChunkIndex().GetSha256()
	}
	return c.GetSha256()
}

// Stat returns the record of a blob; errdefs.ErrNotFound when the library does not hold it.
func (l *Library) Stat(ctx context.Context, sha string) (*osvcv1.Content, error) {
	if err := checkSHA256(sha); err != nil {
		return nil, err
	}
	c, _, err := store.Get[*osvcv1.Content](ctx, l.store, l.store.ContentKey(sha))
	if err != nil {
		return nil, fmt.Errorf("content %s: %w", sha, err)
	}
	return c, nil
}

// Blobs is where the library keeps its blobs' data.
func (l *Library) Blobs() Blobs { return l.blobs }

// Open opens a blob for reading; errdefs.ErrNotFound when it is not there.
// A blob stored as chunks reads them in order, each checked against its
// sha256 (errdefs.ErrDataLoss when one is missing or damaged).
func (l *Library) Open(ctx context.Context, sha string) (Blob, error) {
	if err := checkSHA256(sha); err != nil {
		return nil, err
	}
	c, err := l.Stat(ctx, sha)
	if err == nil && c.GetStoredAsChunks() {
		return l.openChunks(ctx, c)
	}
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return nil, err
	}
	return l.blobs.Open(ctx, sha)
}

// Path returns where the blob lives, for readers that need a file, when the
// blobs are files of this server. It returns "" for a malformed sha256, so
// bad input never becomes a path, and "" when the blobs are on an object
// store (see LocalFile). A blob stored as chunks has no file there.
func (l *Library) Path(sha string) string {
	if l.files == nil {
		return ""
	}
	return l.files.path(sha)
}

// LocalFile returns a file holding the blob, for readers that need one (the
// update packages' reader), and its release, which the caller calls once
// done with the file. When the blob is a file of this server, it is the
// blob's own file, which the reader must not write; on an object store or
// stored as chunks, a temporary copy under Dir, checked against the sha256
// as it is made, that release removes. errdefs.ErrNotFound when the
// library does not hold it.
func (l *Library) LocalFile(ctx context.Context, sha string) (path string, release func(), err error) {
	if err := checkSHA256(sha); err != nil {
		return "", nil, err
	}
	if l.files != nil {
		_, err := l.files.Stat(ctx, sha)
		if err == nil {
			return l.files.path(sha), func() {}, nil
		}
		if !errors.Is(err, errdefs.ErrNotFound) {
			return "", nil, err
		}
	}
	blob, err := l.Open(ctx, sha)
	if err != nil {
		return "", nil, err
	}
	defer blob.Close()
	tmp, err := os.CreateTemp(filepath.Join(l.dir, tmpDir), "copy-*")
	if err != nil {
		return "", nil, fmt.Errorf("content library: temporary copy of %s: %w", sha, err)
	}
	release = func() { os.Remove(tmp.Name()) }
	err = copyVerified(ctx, tmp, blob, sha)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		release()
		return "", nil, fmt.Errorf("content library: temporary copy of %s: %w", sha, err)
	}
	return tmp.Name(), release, nil
}

// copyVerified copies the whole blob to w and checks it hashes to sha.
func copyVerified(ctx context.Context, w io.Writer, blob Blob, sha string) error {
	r, err := blob.Stream(0, blob.Size())
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), transfer.ContextReader(ctx, r))
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha || n != blob.Size() {
		return fmt.Errorf("the store holds %d bytes hashing to %s under %s: %w", n, got, sha, errdefs.ErrDataLoss)
	}
	return nil
}

// Delete removes a blob's record, then its data; errdefs.ErrNotFound when not held.
func (l *Library) Delete(ctx context.Context, sha string) error {
	if err := checkSHA256(sha); err != nil {
		return err
	}
	unlock, err := l.lockBlob(ctx, sha)
	if err != nil {
		return err
	}
	defer unlock()
	resp, err := l.store.Client().Delete(ctx, l.store.ContentKey(sha))
	if err != nil {
		return fmt.Errorf("delete content %s: %w", sha, err)
	}
	if err := l.blobs.Delete(ctx, sha); err != nil {
		return fmt.Errorf("delete content %s: %w", sha, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("content %s: %w", sha, errdefs.ErrNotFound)
	}
	l.logger.Info("blob deleted", "sha256", sha)
	return nil
}

// errNotFiles refuses what needs the blobs as files of this server.
func (l *Library) errNotFiles(what string) error {
	return fmt.Errorf("%w: the content library keeps its blobs in %s, not in files of this server, so %s; use ContentService.Read and Write",
		errdefs.ErrFailedPrecondition, l.blobs, what)
}

// Location is where the library keeps a blob's file, for a client on the
// server's machine (see Locate).
type Location struct {
	// Path is the blob's file; its base name is the sha256.
	Path      string
	SizeBytes int64
	// LibraryID is the content of the file at LibraryIDPath: a client that
	// reads it there sees this library, not another folder of the same name.
	LibraryID     string
	LibraryIDPath string
}

// Locate tells where the blob's file is, so that a client sharing the
// library's volume can link or copy it rather than read it over the
// network; errdefs.ErrNotFound when the library does not hold it, and
// errdefs.ErrFailedPrecondition when its blobs are on an object store.
func (l *Library) Locate(ctx context.Context, sha string) (*Location, error) {
	c, err := l.Stat(ctx, sha)
	if err != nil {
		return nil, err
	}
	if l.files == nil {
		return nil, l.errNotFiles("no blob has a file to locate")
	}
	if c.GetStoredAsChunks() {
		return nil, fmt.Errorf("%w: content %s is stored as chunks, not as a file: read it with ContentService.Read (osvc-server --content-chunks=false keeps new blobs whole)",
			errdefs.ErrFailedPrecondition, sha)
	}
	info, err := l.files.Stat(ctx, sha)
	if err != nil {
		return nil, err
	}
	return &Location{Path: l.files.path(sha), SizeBytes: info.SizeBytes, LibraryID: l.id, LibraryIDPath: filepath.Join(l.dir, LibraryIDFile)}, nil
}

// keyedMutex is a mutex per key, kept only while someone holds or waits for it.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

// lock locks key and returns its unlock.
func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
