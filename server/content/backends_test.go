package content_test

import (
	"context"
	"encoding/hex"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// testPartSize is the object store's part size in the tests: S3's
// smallest, so that a few MiB make a multipart upload.
const testPartSize = 5 << 20

// multipartBytes is data of three parts, the last one short.
const multipartBytes = 2*testPartSize + 12345

// backend is where a library under test keeps its blobs.
type backend struct {
	name string
	// shared: several servers may use the blobs (see Blobs.Shared).
	shared bool
	// open sets cfg up for the backend: the blobs of share when given (a
	// second server's library on the same blobs), else new ones.
	open func(t *testing.T, cfg *content.Config, share *library) *library
}

var backends = []backend{
	{name: "a directory", open: func(t *testing.T, cfg *content.Config, share *library) *library {
		cfg.Dir = t.TempDir()
		if share != nil {
			cfg.Dir = share.cfg.Dir // replicas of a directory share it
		}
		dir := cfg.Dir
		return &library{contents: func(t *testing.T) []string { return dirContents(t, dir) }}
	}},
	{name: "an object store", shared: true, open: func(t *testing.T, cfg *content.Config, share *library) *library {
		l := &library{}
		if share == nil {
			cfg.Blobs, l.bucket = s3test.NewStore(t, s3store.Config{PartSize: testPartSize, MaxBlobBytes: cfg.MaxBlobBytes})
		} else if l.bucket = share.bucket; cfg.Blobs == nil {
			cfg.Blobs = bucketStore(t, l.bucket, "", cfg.MaxBlobBytes)
		}
		if cfg.Chunks == nil {
			cfg.Chunks = bucketStore(t, l.bucket, s3store.ChunksPrefix, cfg.MaxBlobBytes)
		}
		// The server's own folder holds only temporary copies.
		cfg.Dir = t.TempDir()
		scratch := cfg.Dir
		l.contents = func(t *testing.T) []string {
			return append(bucketContents(t, l.bucket), dirContents(t, scratch)...)
		}
		return l
	}},
}

// bucketStore is a store of bucket under prefix.
func bucketStore(t testing.TB, bucket, prefix string, maxBytes int64) *s3store.Store {
	t.Helper()
	return bucketStoreAt(t, s3test.Shared(t).Endpoint(), bucket, prefix, maxBytes)
}

// bucketStoreAt is a store of bucket under prefix, reached at endpoint:
// the shared server's, or a proxy of it.
func bucketStoreAt(t testing.TB, endpoint, bucket, prefix string, maxBytes int64) *s3store.Store {
	t.Helper()
	c, err := s3test.Shared(t).StoreConfig(t.TempDir(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	c.Endpoint, c.PartSize, c.MaxBlobBytes, c.Prefix = endpoint, testPartSize, maxBytes, prefix
	st, err := s3store.New(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// library is a library on one backend.
type library struct {
	*content.Library
	cfg content.Config
	// contents lists everything the backend holds: the blobs as
	// blobEntry, anything else (an upload in progress, a temporary copy)
	// by its name.
	contents func(t *testing.T) []string
	// raw lists what the backend holds, chunks as files or objects.
	raw func(t *testing.T) []string
	// bucket is the object store's.
	bucket string
}

// newLibrary makes a library on backend b with cfg's settings, on a fresh
// store prefix unless cfg names a store.
func (b backend) newLibrary(t *testing.T, cfg content.Config) *library {
	t.Helper()
	return b.newLibraryOn(t, cfg, nil)
}

func (b backend) newLibraryOn(t *testing.T, cfg content.Config, share *library) *library {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = storetest.New(t)
	}
	l := b.open(t, &cfg, share)
	lib, err := content.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l.Library, l.cfg = lib, cfg
	l.raw = l.contents
	l.contents = func(t *testing.T) []string { return l.assemble(t, l.raw(t)) }
	return l
}

// assemble lists a blob stored as chunks as blobEntry when the backend
// holds all its chunks, in place of them; a chunk no such blob lists as
// chunkEntry.
func (l *library) assemble(t *testing.T, entries []string) []string {
	t.Helper()
	ctx := context.Background()
	held := map[string]bool{}
	var out []string
	for _, e := range entries {
		if sha, ok := chunkFile(e); ok {
			held[sha] = true
			continue
		}
		out = append(out, e)
	}
	resp, err := l.cfg.Store.Client().Get(ctx, l.cfg.Store.ContentsPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, kv := range resp.Kvs {
		rec, err := store.Unmarshal[*osvcv1.Content](kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		if !rec.GetStoredAsChunks() {
			continue
		}
		idx, err := l.ChunkIndex(ctx, rec.GetSha256())
		if err != nil {
			t.Fatalf("the chunk index of %s: %v", rec.GetSha256(), err)
		}
		whole := true
		for _, c := range idx.GetChunks() {
			sha := hex.EncodeToString(c.GetDigest())
			listed[sha] = true
			whole = whole && held[sha]
		}
		if whole {
			out = append(out, blobEntry(rec.GetSha256()))
		}
	}
	for sha := range held {
		if !listed[sha] {
			out = append(out, chunkEntry(sha))
		}
	}
	slices.Sort(out)
	return out
}

// chunkEntry is how contents lists a chunk no blob stored as chunks lists.
func chunkEntry(sha string) string { return "chunk " + sha }

// chunkFile tells whether a directory's or a bucket's entry is a chunk.
func chunkFile(entry string) (string, bool) {
	rest, ok := strings.CutPrefix(filepath.ToSlash(entry), "chunks/")
	if !ok {
		return "", false
	}
	sha := path.Base(rest)
	return sha, content.ValidSHA256(sha) && (rest == sha[:2]+"/"+sha || rest == "blobs/"+sha)
}

// replica is another server's library on the same blobs and records: a
// directory is one server's, its replica is itself.
func (l *library) replica(t *testing.T, b backend) *library {
	t.Helper()
	if !b.shared {
		return l
	}
	return l.otherServer(t, b)
}

// otherServer is another server's library on the same blobs and records.
func (l *library) otherServer(t *testing.T, b backend) *library {
	t.Helper()
	return b.newLibraryOn(t, content.Config{Store: l.cfg.Store, MaxBlobBytes: l.cfg.MaxBlobBytes, Now: l.cfg.Now}, l)
}

// eachBackend runs test on every backend, in parallel.
func eachBackend(t *testing.T, test func(t *testing.T, b backend)) {
	t.Helper()
	for _, b := range backends {
		t.Run("on "+b.name, func(t *testing.T) {
			t.Parallel()
			test(t, b)
		})
	}
}

// blobEntry is how contents lists a blob.
func blobEntry(sha string) string { return "blob " + sha }

// dirContents lists the files under dir but the library's identifier: a
// blob's file as blobEntry, others by their path relative to dir.
func dirContents(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || path == filepath.Join(dir, content.LibraryIDFile) {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if sha := filepath.Base(rel); content.ValidSHA256(sha) && rel == filepath.Join(sha[:2], sha) {
			rel = blobEntry(sha)
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// bucketContents lists the objects of bucket, a blob's as blobEntry, and
// its uploads in progress as "upload <key>".
func bucketContents(t *testing.T, bucket string) []string {
	t.Helper()
	keys, err := s3test.Shared(t).Keys(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if sha, ok := strings.CutPrefix(k, "blobs/"); ok {
			keys[i] = blobEntry(sha)
		}
	}
	slices.Sort(keys)
	return keys
}
