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
	"strings"
	"sync"
	"testing"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

func newLibrary(t *testing.T) (*content.Library, string) {
	t.Helper()
	dir := t.TempDir()
	lib, err := content.New(content.Config{Dir: dir, Store: storetest.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	return lib, dir
}

func sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// files lists the regular files under dir, relative to it, but the
// library's identifier.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && path != filepath.Join(dir, content.LibraryIDFile) {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriteStoresABlobAndItsRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib, dir := newLibrary(t)
	data := []byte("an update file")
	sha := sum(data)

	c, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sha, SizeBytes: int64(len(data)), MediaType: "application/vnd.ms-cab-compressed"}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if existed || c.GetSha256() != sha || c.GetSizeBytes() != int64(len(data)) || c.GetName() != "contents/"+sha ||
		c.GetMediaType() != "application/vnd.ms-cab-compressed" || c.GetCreateTime() == nil {
		t.Fatalf("Write = %v, existed %v", c, existed)
	}
	if want := filepath.Join(dir, sha[:2], sha); lib.Path(sha) != want {
		t.Fatalf("Path = %q, want %q", lib.Path(sha), want)
	}
	got, err := os.ReadFile(lib.Path(sha))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob on disk = %q, %v", got, err)
	}
	st, err := lib.Stat(ctx, sha)
	if err != nil || st.GetSizeBytes() != int64(len(data)) {
		t.Fatalf("Stat = %v, %v", st, err)
	}
	f, err := lib.Open(sha)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, _ := io.ReadAll(f); !bytes.Equal(got, data) {
		t.Fatalf("Open reads %q", got)
	}
}

func TestWriteOfAHeldBlob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	data := []byte("same bytes twice")
	sha := sum(data)

	t.Run("named by the header does not read the data", func(t *testing.T) {
		t.Parallel()
		lib, _ := newLibrary(t)
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
	t.Run("found by hashing is reported as existing and leaves no temp file", func(t *testing.T) {
		t.Parallel()
		lib, dir := newLibrary(t)
		for i, wantExisted := range []bool{false, true} {
			_, existed, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(data))
			if err != nil || existed != wantExisted {
				t.Fatalf("Write %d: existed %v, %v; want existed %v", i, existed, err, wantExisted)
			}
		}
		if got := files(t, dir); len(got) != 1 {
			t.Fatalf("files = %v, want the one blob", got)
		}
	})
	t.Run("by concurrent writers is stored once", func(t *testing.T) {
		t.Parallel()
		lib, dir := newLibrary(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		fresh := 0
		for range 4 {
			wg.Go(func() {
				_, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sha}, bytes.NewReader(data))
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
		if got := files(t, dir); len(got) != 1 {
			t.Fatalf("files = %v, want the one blob", got)
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
	data := []byte("the real data")
	other := sum([]byte("something else"))
	tests := []struct {
		name   string
		header content.WriteHeader
		field  string
	}{
		{name: "a wrong sha256", header: content.WriteHeader{SHA256: other}, field: "sha256"},
		{name: "a size too large", header: content.WriteHeader{SizeBytes: int64(len(data)) + 1}, field: "size_bytes"},
		{name: "a size too small", header: content.WriteHeader{SizeBytes: int64(len(data)) - 1}, field: "size_bytes"},
		{name: "a negative size", header: content.WriteHeader{SizeBytes: -1}, field: "size_bytes"},
		{name: "an upper-case sha256", header: content.WriteHeader{SHA256: strings.ToUpper(sum(data))}, field: "sha256"},
		{name: "a path as sha256", header: content.WriteHeader{SHA256: "../../etc/passwd"}, field: "sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lib, dir := newLibrary(t)
			_, _, err := lib.Write(ctx, tt.header, bytes.NewReader(data))
			var fv *errdefs.FieldViolation
			if !errors.As(err, &fv) || fv.Field != tt.field {
				t.Fatalf("Write: got %v, want a violation of %s", err, tt.field)
			}
			if got := files(t, dir); len(got) != 0 {
				t.Fatalf("files left behind: %v", got)
			}
			if _, err := lib.Stat(ctx, sum(data)); !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("Stat after refused write: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestWriteStopsWhenTheReaderFails(t *testing.T) {
	t.Parallel()
	lib, dir := newLibrary(t)
	broken := errors.New("connection lost")
	r := io.MultiReader(strings.NewReader("partial"), &failingReader{err: broken})
	if _, _, err := lib.Write(context.Background(), content.WriteHeader{}, r); !errors.Is(err, broken) {
		t.Fatalf("Write: got %v, want the reader's error", err)
	}
	if got := files(t, dir); len(got) != 0 {
		t.Fatalf("files left behind: %v", got)
	}
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

func TestBadSHA256IsInvalidArgumentEverywhere(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib, _ := newLibrary(t)
	for _, bad := range []string{"", "abc", "../" + strings.Repeat("a", 61), strings.Repeat("g", 64), strings.Repeat("A", 64)} {
		if _, err := lib.Stat(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if _, err := lib.Open(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if err := lib.Delete(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidArgument", bad, err)
		}
		if p := lib.Path(bad); p != "" {
			t.Errorf("Path(%q) = %q, want empty", bad, p)
		}
	}
}

func TestDeleteRemovesTheBlobAndItsRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib, dir := newLibrary(t)
	data := []byte("to be deleted")
	sha := sum(data)
	if _, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := lib.Delete(ctx, sha); err != nil {
		t.Fatal(err)
	}
	if _, err := lib.Stat(ctx, sha); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stat after Delete = %v, want ErrNotFound", err)
	}
	if _, err := lib.Open(sha); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Open after Delete = %v, want ErrNotFound", err)
	}
	if got := files(t, dir); len(got) != 0 {
		t.Errorf("files left: %v", got)
	}
	if err := lib.Delete(ctx, sha); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
}

func TestAWriteRepairsABlobMissingOnDisk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lib, _ := newLibrary(t)
	data := []byte("lost on disk")
	sha := sum(data)
	if _, _, err := lib.Write(ctx, content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(lib.Path(sha)); err != nil {
		t.Fatal(err)
	}
	_, existed, err := lib.Write(ctx, content.WriteHeader{SHA256: sha}, bytes.NewReader(data))
	if err != nil || existed {
		t.Fatalf("Write = existed %v, %v; want the blob written again", existed, err)
	}
	if got, err := os.ReadFile(lib.Path(sha)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob on disk = %q, %v", got, err)
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
