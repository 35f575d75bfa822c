package content_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store/s3test"
)

// versions returns a blob of 24 MiB and its next version: a MiB rewritten
// in the middle and 4 KiB inserted further on, as a month's update
// changes an image.
func versions() (v1, v2 []byte) {
	v1 = noise(24<<20, 7)
	v2 = slices.Clone(v1)
	copy(v2[8<<20:], noise(1<<20, 8))
	v2 = slices.Insert(v2, 16<<20, noise(4<<10, 9)...)
	return v1, v2
}

// chunksOf lists the chunks the library's index of sha names.
func chunksOf(t *testing.T, lib *library, sha string) []string {
	t.Helper()
	idx, err := lib.ChunkIndex(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range idx.GetChunks() {
		out = append(out, hex.EncodeToString(c.GetDigest()))
	}
	return out
}

// storedChunks lists the chunks the backend holds, and their bytes.
func storedChunks(t *testing.T, lib *library) (map[string]bool, int64) {
	t.Helper()
	held := map[string]bool{}
	var n int64
	for _, e := range lib.raw(t) {
		if sha, ok := chunkFile(e); ok {
			held[sha] = true
			info, err := lib.chunkInfo(t, sha)
			if err != nil {
				t.Fatal(err)
			}
			n += info
		}
	}
	return held, n
}

// chunkPath is where a directory library keeps a chunk.
func (l *library) chunkPath(sha string) string {
	return filepath.Join(l.cfg.Dir, "chunks", sha[:2], sha)
}

// chunkInfo is a stored chunk's size.
func (l *library) chunkInfo(t *testing.T, sha string) (int64, error) {
	t.Helper()
	if l.bucket != "" {
		info, err := s3test.Shared(t).Client().StatObject(context.Background(), l.bucket, "chunks/blobs/"+sha, minio.StatObjectOptions{})
		return info.Size, err
	}
	info, err := os.Stat(l.chunkPath(sha))
	if err != nil {
		return 0, err
	}
	return info.Size(), nil
}

// replaceChunk puts data in place of a stored chunk, or removes it when
// data is nil, without the library knowing, as a failing disk would.
func (l *library) replaceChunk(t *testing.T, sha string, data []byte) {
	t.Helper()
	ctx := context.Background()
	var err error
	switch {
	case l.bucket != "" && data == nil:
		err = s3test.Shared(t).Client().RemoveObject(ctx, l.bucket, "chunks/blobs/"+sha, minio.RemoveObjectOptions{})
	case l.bucket != "":
		_, err = s3test.Shared(t).Client().PutObject(ctx, l.bucket, "chunks/blobs/"+sha, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
	case data == nil:
		err = os.Remove(l.chunkPath(sha))
	default:
		err = os.WriteFile(l.chunkPath(sha), data, 0o444)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// read reads the whole blob through Open.
func (l *library) read(sha string) ([]byte, error) {
	return l.readWithin(context.Background(), sha)
}

// readWithin reads the whole blob through Open, within ctx.
func (l *library) readWithin(ctx context.Context, sha string) ([]byte, error) {
	b, err := l.Open(ctx, sha)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	r, err := b.Stream(0, b.Size())
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

func TestTheVersionsOfABlobShareTheirChunks(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib := b.newLibrary(t, content.Config{})
		d1, d2 := versions()
		v1, v2 := lib.put(t, d1), lib.put(t, d2)
		for sha, data := range map[string][]byte{v1: d1, v2: d2} {
			c, err := lib.Stat(ctx, sha)
			if err != nil {
				t.Fatal(err)
			}
			if !c.GetStoredAsChunks() || c.GetChunkIndex() == nil {
				t.Fatalf("%s: stored_as_chunks %v, index %v: want it stored as the chunks of its index", sha, c.GetStoredAsChunks(), c.GetChunkIndex())
			}
			if !bytes.Equal(lib.readAll(t, sha), data) {
				t.Fatalf("%s reads other bytes than were written", sha)
			}
			// Parts of it, across chunks, as a range request reads them.
			blob, err := lib.Open(ctx, sha)
			if err != nil {
				t.Fatal(err)
			}
			part := make([]byte, 3<<20)
			if _, err := blob.ReadAt(part, 5<<20+17); err != nil || !bytes.Equal(part, data[5<<20+17:8<<20+17]) {
				t.Fatalf("ReadAt across chunks: %v, or other bytes", err)
			}
			r, err := blob.Stream(10<<20+3, 6<<20)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, data[10<<20+3:16<<20+3]) {
				t.Fatalf("Stream from the middle: %v, or other bytes", err)
			}
			blob.Close()
		}
		union := map[string]bool{}
		for _, sha := range append(chunksOf(t, lib, v1), chunksOf(t, lib, v2)...) {
			union[sha] = true
		}
		held, n := storedChunks(t, lib)
		if len(held) != len(union) {
			t.Errorf("the store holds %d chunks; the two versions have %d between them", len(held), len(union))
		}
		// Most of version 2 is version 1's: together they take little
		// more than one of them.
		if max := int64(len(d1)) + int64(len(d2))/4; n > max {
			t.Errorf("the chunks of the two versions take %d bytes, more than %d", n, max)
		}
		lib.wantContents(t, blobEntry(v1), blobEntry(v2))
	})
}

// withBlobOfChunks is a library on b holding a blob of 24 MiB stored as
// chunks, with the blob's data and sha256.
func (b backend) withBlobOfChunks(t *testing.T) (*library, []byte, string) {
	t.Helper()
	lib := b.newLibrary(t, content.Config{})
	data, _ := versions()
	return lib, data, lib.put(t, data)
}

// chunkAt returns the sha256 and the bytes of chunk k of the blob sha,
// whose data is data.
func (l *library) chunkAt(t *testing.T, sha string, data []byte, k int) (string, []byte) {
	t.Helper()
	idx, err := l.ChunkIndex(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	var off int64
	for _, c := range idx.GetChunks()[:k] {
		off += c.GetSizeBytes()
	}
	c := idx.GetChunks()[k]
	return hex.EncodeToString(c.GetDigest()), data[off : off+c.GetSizeBytes()]
}

// damages are what may happen to a stored chunk behind the library's back.
var damages = []struct {
	name string
	// damage returns what the store holds in place of the chunk's data:
	// nil for nothing.
	damage func(data []byte) []byte
}{
	{name: "removed", damage: func([]byte) []byte { return nil }},
	{name: "cut short", damage: func(data []byte) []byte { return slices.Clone(data[:len(data)-1]) }},
	{name: "damaged at its size", damage: func(data []byte) []byte {
		damaged := slices.Clone(data)
		damaged[len(damaged)/2] ^= 1
		return damaged
	}},
}

func TestAChunkLostOrDamagedInTheStoreFailsTheReadAndAWriteOfTheBlobStoresItAgain(t *testing.T) {
	t.Parallel()
	writes := []struct {
		name   string
		header func(sha string, data []byte) content.WriteHeader
	}{
		{name: "found by hashing", header: func(string, []byte) content.WriteHeader { return content.WriteHeader{} }},
		{name: "named by the header", header: func(sha string, data []byte) content.WriteHeader {
			return content.WriteHeader{SHA256: sha, SizeBytes: int64(len(data))}
		}},
	}
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib, data, sha := b.withBlobOfChunks(t)
		// One blob for every case, each on a chunk of its own, the blob
		// whole again after each.
		k := 0
		for _, d := range damages {
			for _, w := range writes {
				t.Run("a chunk "+d.name+", then the blob written again "+w.name, func(t *testing.T) {
					k++
					chunk, chunkData := lib.chunkAt(t, sha, data, k)
					lib.replaceChunk(t, chunk, d.damage(chunkData))
					_, err := lib.read(sha)
					if !errors.Is(err, errdefs.ErrDataLoss) || !strings.Contains(err.Error(), chunk) {
						t.Fatalf("read: %v, want DataLoss naming the chunk %s", err, chunk)
					}
					c, existed, err := lib.Write(ctx, w.header(sha, data), bytes.NewReader(data))
					if err != nil || existed || c.GetSha256() != sha {
						t.Fatalf("write again: %v, existed %v, %v; want the lost chunk stored again", c, existed, err)
					}
					if got, err := lib.read(sha); err != nil || !bytes.Equal(got, data) {
						t.Fatalf("read after the write: %v, or other bytes", err)
					}
					// Whole again, the blob is held: the data is not read.
					r := &countingReader{r: bytes.NewReader(data)}
					if _, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sha}, r); err != nil || !existed || r.n != 0 {
						t.Fatalf("write once repaired: existed %v, %v, %d bytes read; want it held, nothing read", existed, err, r.n)
					}
				})
			}
		}
		lib.wantContents(t, blobEntry(sha))
	})
}

func TestAdoptingTheDataOfABlobThatLostAChunkStoresItAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib, data, sha := backends[0].withBlobOfChunks(t)
	chunk, _ := lib.chunkAt(t, sha, data, 1)
	lib.replaceChunk(t, chunk, nil)
	name := leave(t, lib.Library, data)
	c, existed, err := lib.Adopt(ctx, name, content.WriteHeader{SHA256: sha, SizeBytes: int64(len(data))})
	if err != nil || existed || c.GetSha256() != sha {
		t.Fatalf("Adopt: %v, existed %v, %v; want the lost chunk stored again", c, existed, err)
	}
	if got, err := lib.read(sha); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after Adopt: %v, or other bytes", err)
	}
	lib.wantContents(t, blobEntry(sha))
}

// TestALibraryKeepingBlobsWholeRepairsABlobStoredAsChunks writes the blob
// again through a library keeping new blobs whole: on a directory, the
// data is a file of the library's, cut for the lost chunk; on an object
// store, staged there, it becomes the blob whole.
func TestALibraryKeepingBlobsWholeRepairsABlobStoredAsChunks(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib, data, sha := b.withBlobOfChunks(t)
		whole := b.newLibraryOn(t, content.Config{Store: lib.cfg.Store, WholeBlobs: true}, lib)
		chunk, _ := lib.chunkAt(t, sha, data, 1)
		lib.replaceChunk(t, chunk, nil)
		if _, existed, err := whole.Write(ctx, content.WriteHeader{}, bytes.NewReader(data)); err != nil || existed {
			t.Fatalf("write again: existed %v, %v; want the blob repaired", existed, err)
		}
		for _, l := range []*library{lib, whole} {
			if got, err := l.read(sha); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read after the write: %v, or other bytes", err)
			}
		}
	})
}

func TestALibraryWithoutAChunkStoreTakesABlobStoredAsChunksAsHeld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib, data, _ := backends[1].withBlobOfChunks(t)
	noChunks, err := content.New(content.Config{Dir: t.TempDir(), Blobs: bucketStore(t, lib.bucket, "", 0), Store: lib.cfg.Store})
	if err != nil {
		t.Fatal(err)
	}
	if _, existed, err := noChunks.Write(ctx, content.WriteHeader{}, bytes.NewReader(data)); err != nil || !existed {
		t.Fatalf("write: existed %v, %v; want it held (the server reads it from no chunk store)", existed, err)
	}
}

func TestCollectRemovesTheChunksOnlyARemovedBlobHeld(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		f := newCollectFixture(t, b)
		// Chunks are files and objects dated by the real clock.
		base := time.Now()
		d1, d2 := versions()
		v1, v2 := f.write(t, string(d1), base), f.write(t, string(d2), base)
		f.put(t, f.store.ImageKey("win11"), &osvcv1.Image{Name: "images/win11", Versions: []*osvcv1.ImageVersion{{Sha256: v2}}})
		if removed := f.collect(t, base.Add(3*24*time.Hour)); !slices.Equal(removed, []string{v1}) {
			t.Fatalf("removed %v, want version 1 alone", removed)
		}
		f.collect(t, base.Add(4*24*time.Hour))
		want := map[string]bool{}
		for _, sha := range chunksOf(t, f.lib, v2) {
			want[sha] = true
		}
		held, _ := storedChunks(t, f.lib)
		for sha := range held {
			if !want[sha] {
				t.Errorf("chunk %s of version 1 alone is still stored", sha)
			}
		}
		for sha := range want {
			if !held[sha] {
				t.Errorf("chunk %s of version 2 was removed", sha)
			}
		}
		if got, err := f.lib.read(v2); err != nil || !bytes.Equal(got, d2) {
			t.Fatalf("version 2 after the passes: %v, or other bytes", err)
		}
		f.lib.wantContents(t, blobEntry(v2))
	})
}

// TestAWriteReusingChunksTheCollectorIsRemovingKeepsThem has a write reuse
// the chunks of a removed blob after a pass chose to remove them, before it
// does: the write touches each one under its lock, and the pass, looking
// again under the lock, keeps it.
func TestAWriteReusingChunksTheCollectorIsRemovingKeepsThem(t *testing.T) {
	t.Parallel()
	f := newCollectFixture(t, backends[0])
	base := time.Now()
	d1, d2 := versions()
	v1 := f.write(t, string(d1), base.Add(-48*time.Hour))
	for _, sha := range chunksOf(t, f.lib, v1) {
		if err := os.Chtimes(f.lib.chunkPath(sha), base.Add(-48*time.Hour), base.Add(-48*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if removed := f.collect(t, base); !slices.Equal(removed, []string{v1}) {
		t.Fatalf("removed %v, want version 1 alone", removed)
	}
	var v2 string
	f.col.AfterChunkList(func() {
		c, _, err := f.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(d2))
		if err != nil {
			t.Error(err)
			return
		}
		v2 = c.GetSha256()
	})
	f.collect(t, base)
	if got, err := f.lib.read(v2); err != nil || !bytes.Equal(got, d2) {
		t.Fatalf("version 2, written while the pass removed version 1's chunks: %v, or other bytes", err)
	}
	held, _ := storedChunks(t, f.lib)
	if want := chunksOf(t, f.lib, v2); len(held) != len(want) {
		t.Errorf("the store holds %d chunks, want version 2's %d: the pass removes the others", len(held), len(want))
	}
}

func TestABlobStoredAsChunksHasNoFileToLocateButALocalCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib := backends[0].newLibrary(t, content.Config{})
	data, _ := versions()
	sha := lib.put(t, data)
	if _, err := lib.Locate(ctx, sha); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Locate: %v, want FailedPrecondition (read it over the network)", err)
	}
	path, release, err := lib.LocalFile(ctx, sha)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("LocalFile %s: %v, or other bytes", path, err)
	}
	release()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the copy is still there after its release: %v", err)
	}
}

func TestABlobStoredAsChunksWhoseIndexIsLostIsAcceptedAgain(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib := b.newLibrary(t, content.Config{})
		data, _ := versions()
		sha := lib.put(t, data)
		c, err := lib.Stat(ctx, sha)
		if err != nil {
			t.Fatal(err)
		}
		if _, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sha}, bytes.NewReader(data)); err != nil || !existed {
			t.Fatalf("write again: existed %v, %v; want it held", existed, err)
		}
		lib.removeBehind(t, c.GetChunkIndex().GetSha256())
		_, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sha}, bytes.NewReader(data))
		if err != nil || existed {
			t.Fatalf("write again: existed %v, %v; want it stored again", existed, err)
		}
		if !bytes.Equal(lib.readAll(t, sha), data) {
			t.Fatal("reads other bytes than were written")
		}
	})
}

func TestAWholeBlobsLibraryStoresNoChunks(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		lib := b.newLibrary(t, content.Config{WholeBlobs: true})
		data, _ := versions()
		sha := lib.put(t, data)
		if c, _ := lib.Stat(context.Background(), sha); c.GetStoredAsChunks() {
			t.Error("stored as chunks though the library keeps blobs whole")
		}
		if held, _ := storedChunks(t, lib); len(held) != 0 {
			t.Errorf("the store holds %d chunks", len(held))
		}
		if len(data) < chunks.MinBlobBytes {
			t.Fatal("the test's blob is too small to be cut")
		}
	})
}
