package content_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
)

// newDirLibrary is a library on a directory, and the directory.
func newDirLibrary(t *testing.T) (*content.Library, string) {
	t.Helper()
	l := backends[0].newLibrary(t, content.Config{})
	return l.Library, l.cfg.Dir
}

// incomingPath is the library's incoming folder.
func incomingPath(t *testing.T, lib *content.Library) string {
	t.Helper()
	loc, err := lib.LocateLibrary()
	if err != nil {
		t.Fatal(err)
	}
	return loc.IncomingPath
}

// leave moves a file holding data into the library's incoming folder, as
// an agent beside the server does, and returns its name there.
func leave(t *testing.T, lib *content.Library, data []byte) string {
	t.Helper()
	outside := filepath.Join(t.TempDir(), "result.wim")
	if err := os.WriteFile(outside, data, 0o644); err != nil {
		t.Fatal(err)
	}
	name := sum(data)[:32]
	if err := os.Rename(outside, filepath.Join(incomingPath(t, lib), name)); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestAdoptTakesTheFileItselfAsTheBlob(t *testing.T) {
	t.Parallel()
	lib, dir := newDirLibrary(t)
	data := bytes.Repeat([]byte("serviced image "), 100_000)
	name := leave(t, lib, data)
	c, existed, err := lib.Adopt(context.Background(), name, content.WriteHeader{SizeBytes: int64(len(data)), MediaType: "application/x-ms-wim"})
	if err != nil {
		t.Fatal(err)
	}
	if existed || c.GetSha256() != sum(data) || c.GetSizeBytes() != int64(len(data)) || c.GetMediaType() != "application/x-ms-wim" {
		t.Fatalf("Adopt = %v (existed %v), want a new blob of the data", c, existed)
	}
	if got := dirContents(t, dir); !slices.Equal(got, []string{blobEntry(sum(data))}) {
		t.Errorf("library files = %q, want the blob alone (the incoming file moved into place)", got)
	}
	info, err := os.Stat(lib.Path(c.GetSha256()))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm()&0o222 != 0 {
		t.Errorf("the blob's mode is %s: a blob is never written", info.Mode())
	}
	if got, err := os.ReadFile(lib.Path(c.GetSha256())); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the blob does not hold the data (%v)", err)
	}
	// The same data again: the library holds it, the file is dropped.
	name = leave(t, lib, data)
	if _, existed, err := lib.Adopt(context.Background(), name, content.WriteHeader{SizeBytes: int64(len(data)), SHA256: sum(data)}); err != nil || !existed {
		t.Fatalf("second Adopt: existed %v, %v; want the held blob", existed, err)
	}
	if got := dirContents(t, dir); len(got) != 1 {
		t.Errorf("library files = %q after adopting a held blob, want the blob alone", got)
	}
}

func TestAdoptRefusesAFileWithOtherNames(t *testing.T) {
	t.Parallel()
	lib, _ := newDirLibrary(t)
	// A file of the server's (or one the client keeps writing), linked in.
	data := []byte("a file that stays reachable by another path")
	elsewhere := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.WriteFile(elsewhere, data, 0o600); err != nil {
		t.Fatal(err)
	}
	name := sum(data)[:32]
	if err := os.Link(elsewhere, filepath.Join(incomingPath(t, lib), name)); err != nil {
		t.Fatal(err)
	}
	if c, _, err := lib.Adopt(context.Background(), name, content.WriteHeader{SizeBytes: int64(len(data))}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Adopt of a linked file = %v, %v; want InvalidArgument", c, err)
	}
	if _, err := lib.Stat(context.Background(), sum(data)); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the linked file became a blob: %v", err)
	}
	if info, err := os.Stat(elsewhere); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("the file elsewhere was changed: %v, %v", info, err)
	}
}

func TestAdoptTakesOnlyARegularFileOfTheIncomingFolder(t *testing.T) {
	t.Parallel()
	lib, dir := newDirLibrary(t)
	secret := []byte("a file of the server's the client must not read")
	secretPath := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretPath, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	incoming := incomingPath(t, lib)
	symlink := "0123456789abcdef0123456789abcdef"
	if err := os.Symlink(secretPath, filepath.Join(incoming, symlink)); err != nil {
		t.Fatal(err)
	}
	folder := "fedcba9876543210fedcba9876543210"
	if err := os.Mkdir(filepath.Join(incoming, folder), 0o700); err != nil {
		t.Fatal(err)
	}
	size := int64(len(secret))
	for _, name := range []string{
		"../" + content.LibraryIDFile, // a path out of the folder
		"../../" + filepath.Base(filepath.Dir(secretPath)) + "/secret",
		"0123456789ABCDEF0123456789ABCDEF", // not the names clients make
		"",
		symlink, // a link to a file elsewhere
		folder,
		"00000000000000000000000000000000", // nothing there
	} {
		c, _, err := lib.Adopt(context.Background(), name, content.WriteHeader{SizeBytes: size})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Adopt(%q) = %v, %v; want InvalidArgument", name, c, err)
		}
	}
	if _, err := lib.Stat(context.Background(), sum(secret)); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the secret file became a blob: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, content.LibraryIDFile)); err != nil {
		t.Errorf("the library's identifier: %v", err)
	}
}

func TestAdoptRefusesAFileThatIsNotWhatTheClientSaysAndStoresNothing(t *testing.T) {
	t.Parallel()
	lib, dir := newDirLibrary(t)
	data := []byte("serviced image")
	tests := []struct {
		name string
		h    content.WriteHeader
	}{
		{name: "no size", h: content.WriteHeader{}},
		{name: "another size", h: content.WriteHeader{SizeBytes: int64(len(data)) - 1}},
		{name: "another sha256", h: content.WriteHeader{SizeBytes: int64(len(data)), SHA256: sum([]byte("other"))}},
	}
	for _, tt := range tests {
		name := leave(t, lib, data)
		if c, _, err := lib.Adopt(context.Background(), name, tt.h); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: Adopt = %v, %v; want InvalidArgument", tt.name, c, err)
		}
		// The file stays for the client to take back, and is no blob.
		incoming := filepath.Join("incoming", name)
		if got := dirContents(t, dir); !slices.Equal(got, []string{incoming}) {
			t.Fatalf("%s: library files %q after a refusal, want %s alone", tt.name, got, incoming)
		}
		if err := os.Remove(filepath.Join(dir, incoming)); err != nil {
			t.Fatal(err)
		}
	}
}
