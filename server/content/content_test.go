package content_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	s3test.Close()
	os.Exit(code)
}

func sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// pattern returns n bytes that differ from part to part, so a misplaced
// part shows.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>20) ^ seed
	}
	return b
}

// sizes are the data sizes the tests write: within one part of the object
// store (sent in one request once checked), and over several (a multipart
// upload).
var sizes = []struct {
	name string
	n    int
}{
	{name: "small", n: 1000},
	{name: "multipart", n: multipartBytes},
}

// removeBehind removes a blob's data without the library knowing, as a
// failing disk or an operator would.
func (l *library) removeBehind(t *testing.T, sha string) {
	t.Helper()
	var err error
	if l.bucket != "" {
		err = s3test.Shared(t).Client().RemoveObject(context.Background(), l.bucket, "blobs/"+sha, minio.RemoveObjectOptions{})
	} else {
		err = os.Remove(l.Path(sha))
	}
	if err != nil {
		t.Fatal(err)
	}
}

// put writes data and returns its sha256.
func (l *library) put(t *testing.T, data []byte) string {
	t.Helper()
	c, _, err := l.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return c.GetSha256()
}

// readAll reads the whole blob through Open.
func (l *library) readAll(t *testing.T, sha string) []byte {
	t.Helper()
	b, err := l.Open(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r, err := b.Stream(0, b.Size())
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// wantContents checks that the store holds want and nothing else but the
// chunk indexes of the blobs want names.
func (l *library) wantContents(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range slices.Clone(want) {
		sha, ok := strings.CutPrefix(w, "blob ")
		if !ok {
			continue
		}
		if c, err := l.Stat(context.Background(), sha); err == nil && c.GetChunkIndex() != nil {
			want = append(want, blobEntry(c.GetChunkIndex().GetSha256()))
		}
	}
	slices.Sort(want)
	if got := l.contents(t); !slices.Equal(got, want) {
		t.Fatalf("the store holds %q, want %q", got, want)
	}
}

func TestWriteStoresABlobAndItsRecord(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		for _, size := range sizes {
			for _, named := range []bool{true, false} {
				t.Run(size.name+" named by its header "+map[bool]string{true: "yes", false: "no"}[named], func(t *testing.T) {
					t.Parallel()
					ctx := context.Background()
					lib := b.newLibrary(t, content.Config{})
					data := pattern(size.n, 1)
					sha := sum(data)
					h := content.WriteHeader{SizeBytes: int64(len(data)), MediaType: "application/vnd.ms-cab-compressed"}
					if named {
						h.SHA256 = sha
					}
					c, existed, err := lib.Write(ctx, h, bytes.NewReader(data))
					if err != nil {
						t.Fatal(err)
					}
					if existed || c.GetSha256() != sha || c.GetSizeBytes() != int64(len(data)) || c.GetName() != "contents/"+sha ||
						c.GetMediaType() != "application/vnd.ms-cab-compressed" || c.GetCreateTime() == nil {
						t.Fatalf("Write = %v, existed %v", c, existed)
					}
					lib.wantContents(t, blobEntry(sha))
					if got := lib.readAll(t, sha); !bytes.Equal(got, data) {
						t.Fatalf("the blob reads %d other bytes", len(got))
					}
					st, err := lib.Stat(ctx, sha)
					if err != nil || st.GetSizeBytes() != int64(len(data)) {
						t.Fatalf("Stat = %v, %v", st, err)
					}
				})
			}
		}
	})
}

func TestADirectoryLibraryKeepsEachBlobInAFileNamedByItsSHA256(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	lib, err := content.New(content.Config{Dir: dir, Store: storetest.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("an update file")
	sha := sum(data)
	if _, _, err := lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, sha[:2], sha); lib.Path(sha) != want {
		t.Fatalf("Path = %q, want %q", lib.Path(sha), want)
	}
	if got, err := os.ReadFile(lib.Path(sha)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob on disk = %q, %v", got, err)
	}
}

func TestReadingPartsOfABlob(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib := b.newLibrary(t, content.Config{})
		data := pattern(multipartBytes, 2)
		sha := lib.put(t, data)
		blob, err := lib.Open(ctx, sha)
		if err != nil {
			t.Fatal(err)
		}
		defer blob.Close()
		if blob.Size() != int64(len(data)) {
			t.Fatalf("Size = %d, want %d", blob.Size(), len(data))
		}
		for _, r := range []struct{ off, n int64 }{
			{0, 1}, {testPartSize - 3, 10}, {testPartSize, testPartSize}, {1234, multipartBytes - 1234}, {multipartBytes - 5, 5}, {multipartBytes, 0},
		} {
			s, err := blob.Stream(r.off, r.n)
			if err != nil {
				t.Fatalf("Stream(%d, %d): %v", r.off, r.n, err)
			}
			got, err := io.ReadAll(s)
			if err != nil || !bytes.Equal(got, data[r.off:r.off+r.n]) {
				t.Errorf("Stream(%d, %d) read %d other bytes, %v", r.off, r.n, len(got), err)
			}
			buf := make([]byte, r.n)
			if n, err := blob.ReadAt(buf, r.off); int64(n) != r.n || (err != nil && !errors.Is(err, io.EOF)) || !bytes.Equal(buf, data[r.off:r.off+r.n]) {
				t.Errorf("ReadAt(%d bytes at %d) = %d, %v", r.n, r.off, n, err)
			}
		}
		buf := make([]byte, 10)
		if n, err := blob.ReadAt(buf, multipartBytes-4); n != 4 || !errors.Is(err, io.EOF) || !bytes.Equal(buf[:4], data[multipartBytes-4:]) {
			t.Errorf("ReadAt across the end = %d, %v; want the 4 last bytes and io.EOF", n, err)
		}
	})
}

func TestWriteOfAHeldBlob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	data := []byte("same bytes twice")
	sha := sum(data)

	eachBackend(t, func(t *testing.T, b backend) {
		t.Run("named by the header does not read the data", func(t *testing.T) {
			t.Parallel()
			lib := b.newLibrary(t, content.Config{})
			if _, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			r := &countingReader{r: bytes.NewReader(data)}
			c, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sha}, r)
			if err != nil || !existed || c.GetSha256() != sha {
				t.Fatalf("second Write = %v, existed %v, %v", c, existed, err)
			}
			if r.n != 0 {
				t.Fatalf("second Write read %d bytes, want 0", r.n)
			}
		})
		t.Run("found by hashing is reported as existing and leaves nothing staged", func(t *testing.T) {
			t.Parallel()
			lib := b.newLibrary(t, content.Config{})
			big := pattern(multipartBytes, 3)
			for _, d := range [][]byte{data, big} {
				for i, wantExisted := range []bool{false, true} {
					_, existed, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(d))
					if err != nil || existed != wantExisted {
						t.Fatalf("Write %d: existed %v, %v; want existed %v", i, existed, err, wantExisted)
					}
				}
			}
			lib.wantContents(t, blobEntry(sha), blobEntry(sum(big)))
		})
		for _, size := range sizes {
			t.Run("of "+size.name+" size by concurrent writers is stored once", func(t *testing.T) {
				t.Parallel()
				lib := b.newLibrary(t, content.Config{})
				// Of two servers where several share the blobs.
				libs := []*library{lib, lib.replica(t, b)}
				d := pattern(size.n, 4)
				var wg sync.WaitGroup
				var mu sync.Mutex
				fresh := 0
				for i := range 4 {
					wg.Go(func() {
						h := content.WriteHeader{}
						if i%2 == 0 {
							h.SHA256 = sum(d)
						}
						_, existed, err := libs[i/2].Write(ctx, h, bytes.NewReader(d))
						if err != nil {
							t.Error(err)
							return
						}
						if !existed {
							mu.Lock()
							fresh++
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				if fresh != 1 {
					t.Errorf("%d writers stored the blob, want 1", fresh)
				}
				lib.wantContents(t, blobEntry(sum(d)))
				if got := libs[1].readAll(t, sum(d)); !bytes.Equal(got, d) {
					t.Errorf("the blob reads %d other bytes", len(got))
				}
			})
		}
	})
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestWriteRefusesAMismatchAndLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	other := sum([]byte("something else"))
	eachBackend(t, func(t *testing.T, b backend) {
		for _, size := range sizes {
			data := pattern(size.n, 5)
			n := int64(len(data))
			tests := []struct {
				name   string
				header content.WriteHeader
				field  string
			}{
				{name: "a wrong sha256", header: content.WriteHeader{SHA256: other}, field: "sha256"},
				{name: "a wrong sha256 with the right size", header: content.WriteHeader{SHA256: other, SizeBytes: n}, field: "sha256"},
				{name: "a wrong trailer", header: content.WriteHeader{Trailer: func() string { return other }}, field: "trailer.sha256"},
				{name: "a size too large", header: content.WriteHeader{SizeBytes: n + 1}, field: "size_bytes"},
				{name: "a size too small", header: content.WriteHeader{SizeBytes: n - 1}, field: "size_bytes"},
				{name: "a negative size", header: content.WriteHeader{SizeBytes: -1}, field: "size_bytes"},
				{name: "an upper-case sha256", header: content.WriteHeader{SHA256: strings.ToUpper(sum(data))}, field: "sha256"},
				{name: "a path as sha256", header: content.WriteHeader{SHA256: "../../etc/passwd"}, field: "sha256"},
			}
			for _, tt := range tests {
				t.Run(size.name+" data with "+tt.name, func(t *testing.T) {
					t.Parallel()
					lib := b.newLibrary(t, content.Config{})
					_, _, err := lib.Write(ctx, tt.header, bytes.NewReader(data))
					var fv *errdefs.FieldViolation
					if !errors.As(err, &fv) || fv.Field != tt.field {
						t.Fatalf("Write: got %v, want a violation of %s", err, tt.field)
					}
					lib.wantContents(t)
					if _, err := lib.Stat(ctx, sum(data)); !errors.Is(err, errdefs.ErrNotFound) {
						t.Fatalf("Stat after refused write: %v, want ErrNotFound", err)
					}
				})
			}
		}
	})
}

func TestWriteStopsWhenTheReaderFails(t *testing.T) {
	t.Parallel()
	broken := errors.New("connection lost")
	eachBackend(t, func(t *testing.T, b backend) {
		for _, size := range sizes {
			t.Run("after "+size.name+" data", func(t *testing.T) {
				t.Parallel()
				lib := b.newLibrary(t, content.Config{})
				r := io.MultiReader(bytes.NewReader(pattern(size.n, 6)), &failingReader{err: broken})
				if _, _, err := lib.Write(context.Background(), content.WriteHeader{}, r); !errors.Is(err, broken) {
					t.Fatalf("Write: got %v, want the reader's error", err)
				}
				lib.wantContents(t)
			})
		}
	})
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

// guardedBlobs fails the test when the library hands its store a sha256
// that is not one: the library checks every sha256 it is given before
// anything reaches the store.
type guardedBlobs struct {
	content.Blobs
	t *testing.T
}

func (g guardedBlobs) check(sha string) {
	if !content.ValidSHA256(sha) {
		g.t.Errorf("the store was given %q", sha)
	}
}

func (g guardedBlobs) Open(ctx context.Context, sha string) (content.Blob, error) {
	g.check(sha)
	return g.Blobs.Open(ctx, sha)
}

func (g guardedBlobs) Stat(ctx context.Context, sha string) (content.BlobInfo, error) {
	g.check(sha)
	return g.Blobs.Stat(ctx, sha)
}

func (g guardedBlobs) Delete(ctx context.Context, sha string) error {
	g.check(sha)
	return g.Blobs.Delete(ctx, sha)
}

func TestBadSHA256IsInvalidArgumentEverywhere(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	eachBackend(t, func(t *testing.T, b backend) {
		lib := b.newLibrary(t, content.Config{})
		if lib.bucket != "" {
			lib = b.newLibraryOn(t, content.Config{Blobs: guardedBlobs{Blobs: lib.cfg.Blobs, t: t}}, lib)
		}
		for _, bad := range []string{"", "abc", "../" + strings.Repeat("a", 61), strings.Repeat("g", 64), strings.Repeat("A", 64)} {
			if _, err := lib.Stat(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Stat(%q) = %v, want ErrInvalidArgument", bad, err)
			}
			if _, err := lib.Claim(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Claim(%q) = %v, want ErrInvalidArgument", bad, err)
			}
			if _, err := lib.Open(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Open(%q) = %v, want ErrInvalidArgument", bad, err)
			}
			if _, _, err := lib.LocalFile(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("LocalFile(%q) = %v, want ErrInvalidArgument", bad, err)
			}
			if err := lib.Delete(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Delete(%q) = %v, want ErrInvalidArgument", bad, err)
			}
			if p := lib.Path(bad); p != "" {
				t.Errorf("Path(%q) = %q, want empty", bad, p)
			}
		}
	})
}

func TestDeleteRemovesTheBlobAndItsRecord(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib := b.newLibrary(t, content.Config{})
		data := []byte("to be deleted")
		sha := lib.put(t, data)
		if err := lib.Delete(ctx, sha); err != nil {
			t.Fatal(err)
		}
		if _, err := lib.Stat(ctx, sha); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Stat after Delete = %v, want ErrNotFound", err)
		}
		if _, err := lib.Open(ctx, sha); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Open after Delete = %v, want ErrNotFound", err)
		}
		lib.wantContents(t)
		if err := lib.Delete(ctx, sha); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("second Delete = %v, want ErrNotFound", err)
		}
	})
}

func TestAWriteRepairsABlobMissingFromTheStore(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib := b.newLibrary(t, content.Config{})
		data := []byte("lost from the store")
		sha := lib.put(t, data)
		lib.removeBehind(t, sha)
		_, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sha}, bytes.NewReader(data))
		if err != nil || existed {
			t.Fatalf("Write = existed %v, %v; want the blob written again", existed, err)
		}
		if got := lib.readAll(t, sha); !bytes.Equal(got, data) {
			t.Fatalf("the blob reads %q", got)
		}
	})
}

func TestLocalFileHoldsTheBlobUntilReleased(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		lib := b.newLibrary(t, content.Config{})
		data := pattern(multipartBytes, 7)
		sha := lib.put(t, data)
		path, release, err := lib.LocalFile(ctx, sha)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("the local file holds %d other bytes, %v", len(got), err)
		}
		release()
		lib.wantContents(t, blobEntry(sha))
		if _, _, err := lib.LocalFile(ctx, sum([]byte("absent"))); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("LocalFile of an absent blob = %v, want ErrNotFound", err)
		}
	})
}

func TestLocalFileRefusesABlobDamagedInTheStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib := backends[1].newLibrary(t, content.Config{})
	data := []byte("an update package")
	sha := lib.put(t, data)
	damaged := []byte("an update pACKAGE")
	if _, err := s3test.Shared(t).Client().PutObject(ctx, lib.bucket, "blobs/"+sha, bytes.NewReader(damaged), int64(len(damaged)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lib.LocalFile(ctx, sha); !errors.Is(err, errdefs.ErrDataLoss) {
		t.Fatalf("LocalFile of a damaged blob = %v, want ErrDataLoss", err)
	}
	lib.wantContents(t, blobEntry(sha))
}

func TestContentWrittenThroughOneServerIsReadThroughAnother(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := backends[1]
	first := b.newLibrary(t, content.Config{})
	second := first.otherServer(t, b)
	data := pattern(multipartBytes, 8)
	sha := first.put(t, data)
	if _, err := second.Claim(ctx, sha); err != nil {
		t.Fatalf("the second server's Claim: %v", err)
	}
	if got := second.readAll(t, sha); !bytes.Equal(got, data) {
		t.Fatalf("the second server reads %d other bytes", len(got))
	}
	if err := second.Delete(ctx, sha); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Open(ctx, sha); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the first server opens a blob the second deleted: %v", err)
	}
}

func TestAnObjectStoreLibraryHandsOutNoFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib := backends[1].newLibrary(t, content.Config{})
	data := []byte("an object")
	if _, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if p := lib.Path(sum(data)); p != "" {
		t.Errorf("Path = %q, want none", p)
	}
	if _, err := lib.Locate(ctx, sum(data)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Locate = %v, want ErrFailedPrecondition", err)
	}
	if _, err := lib.LocateLibrary(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("LocateLibrary = %v, want ErrFailedPrecondition", err)
	}
	if _, _, err := lib.Adopt(ctx, strings.Repeat("0", 32), content.WriteHeader{SizeBytes: 1}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Adopt = %v, want ErrFailedPrecondition", err)
	}
}

func TestNewValidatesItsConfig(t *testing.T) {
	t.Parallel()
	s := storetest.New(t)
	tests := []struct {
		name string
		cfg  content.Config
	}{
		{name: "without a directory", cfg: content.Config{Store: s}},
		{name: "without a store", cfg: content.Config{Dir: t.TempDir()}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" fails", func(t *testing.T) {
			if _, err := content.New(tt.cfg); err == nil {
				t.Fatal("New succeeded")
			}
		})
	}
}

func TestTheLibraryKeepsItsIdentifierAcrossRestarts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	st := storetest.New(t)
	data := []byte("a blob to locate")
	var ids []string
	for range 2 {
		lib, err := content.New(content.Config{Dir: dir, Store: st})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		loc, err := lib.Locate(ctx, sum(data))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, loc.LibraryID)
	}
	if ids[0] == "" || ids[0] != ids[1] {
		t.Fatalf("identifiers %q: want one, kept by the second start", ids)
	}
}

func TestNewRefusesADamagedLibraryIdentifier(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, content.LibraryIDFile)
	if err := os.WriteFile(path, []byte("not an id\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := content.New(content.Config{Dir: dir, Store: storetest.New(t)})
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "remove the file") {
		t.Fatalf("New = %v, want an error naming %s and saying to remove it", err, path)
	}
}
