package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/osvc/osvc/agent/cache"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/server/content"
)

// putVersions stores an image and its next version, which rewrites a few
// stretches of it, and returns both with their sha256s.
func (s *server) putVersions(t *testing.T, size int) (v1, v2 []byte, sha1, sha2 string) {
	t.Helper()
	v1 = make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(v1)
	v2 = bytes.Clone(v1)
	rng := rand.NewChaCha8([32]byte{2})
	rng.Read(v2[size/3 : size/3+100<<10])
	rng.Read(v2[size/2 : size/2+300<<10])
	var shas [2]string
	for i, data := range [][]byte{v1, v2} {
		if _, _, err := s.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		shas[i] = hex.EncodeToString(sum[:])
	}
	return v1, v2, shas[0], shas[1]
}

// lacking is how many bytes of b are in chunks a lacks.
func lacking(t *testing.T, a, b []byte) int64 {
	t.Helper()
	ca, _ := chunks.Of(context.Background(), bytes.NewReader(a))
	cb, _ := chunks.Of(context.Background(), bytes.NewReader(b))
	return chunks.Lacking(cb, ca)
}

func TestTheNextVersionOfACachedFileIsFetchedAsTheChunksItLacks(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	v1, v2, sha1, sha2 := s.putVersions(t, 24<<20)
	dir := t.TempDir()
	c := newCache(t, s, opts{dir: dir})
	use(t, c, sha1)
	if s.served.Load() != int64(len(v1)) {
		t.Fatalf("the first version: %d bytes sent, want it whole (%d)", s.served.Load(), len(v1))
	}
	s.served.Store(0)

	path, release, err := c.Acquire(context.Background(), sha2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("the second version in the cache differs from the blob (%v)", err)
	}
	if want := lacking(t, v1, v2); s.served.Load() != want || want > int64(len(v2))/4 {
		t.Errorf("the second version: %d bytes sent, want %d (the chunks the first lacks)", s.served.Load(), want)
	}
	// Both files' chunk indexes are kept, and counted in the cache's size.
	var indexBytes int64
	for _, sha := range []string{sha1, sha2} {
		info, err := os.Stat(c.Path(sha) + cache.IndexSuffix)
		if err != nil {
			t.Fatalf("the chunk index of %s: %v", sha, err)
		}
		indexBytes += info.Size()
	}
	if used, files := c.Usage(); used != int64(len(v1)+len(v2))+indexBytes || files != 2 {
		t.Errorf("Usage = %d bytes in %d files, want %d in 2", used, files, int64(len(v1)+len(v2))+indexBytes)
	}
}

func TestAChunkOfACachedFileThatNoLongerMatchesIsFetchedFromTheServer(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	_, _, sha1, sha2 := s.putVersions(t, 24<<20)
	dir := t.TempDir()
	c := newCache(t, s, opts{dir: dir})
	use(t, c, sha1)
	// Cut (its index kept), then damaged on disk behind the cache's back.
	use(t, c, sha2)
	if err := os.Remove(c.Path(sha2)); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(c.Path(sha1), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("damage"), 1<<20)
	f.Close()

	path, release, err := c.Acquire(context.Background(), sha2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if got := fileSHA(t, path); got != sha2 {
		t.Fatalf("the second version hashes to %s, want %s", got, sha2)
	}
}
