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

// leave links a file holding data into the library's incoming folder, as an
// agent beside the server does, and returns its name and its path outside.
func leave(t *testing.T, lib *content.Library, data []byte) (name, outside string) {
	t.Helper()
	outside = filepath.Join(t.TempDir(), "result.wim")
	if err := os.WriteFile(outside, data, 0o644); err != nil {
		t.Fatal(err)
	}
	name = sum(data)[:32]
	if err := os.Link(outside, filepath.Join(lib.LocateLibrary().IncomingPath, name)); err != nil {
		t.Fatal(err)
	}
	return name, outside
}

func TestAdoptStoresACopyOfItsOwnAndRemovesTheLink(t *testing.T) {
	t.Parallel()
	lib, dir := newLibrary(t)
	data := bytes.Repeat([]byte("serviced image "), 100_000)
	name, outside := leave(t, lib, data)
	c, existed, err := lib.Adopt(context.Background(), name, content.WriteHeader{SizeBytes: int64(len(data)), MediaType: "application/x-ms-wim"})
	if err != nil {
		t.Fatal(err)
	}
	if existed || c.GetSha256() != sum(data) || c.GetSizeBytes() != int64(len(data)) || c.GetMediaType() != "application/x-ms-wim" {
		t.Fatalf("Adopt = %v (existed %v), want a new blob of the data", c, existed)
	}
	if got := files(t, dir); !slices.Equal(got, []string{filepath.Join(sum(data)[:2], sum(data))}) {
		t.Errorf("library files = %q, want the blob alone (the incoming link removed)", got)
	}
	// The client may still write its own file: the blob is not that inode.
	if err := os.WriteFile(outside, []byte("changed afterwards"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(lib.Path(c.GetSha256()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("writing the client's file changed the library's blob")
	}
	// Adopting it again finds the blob held.
	name, _ = leave(t, lib, data)
	if _, existed, err := lib.Adopt(context.Background(), name, content.WriteHeader{SizeBytes: int64(len(data)), SHA256: sum(data)}); err != nil || !existed {
		t.Fatalf("second Adopt: existed %v, %v; want the held blob", existed, err)
	}
}

func TestAdoptTakesOnlyARegularFileOfTheIncomingFolder(t *testing.T) {
	t.Parallel()
	lib, dir := newLibrary(t)
	secret := []byte("a file of the server's the client must not read")
	secretPath := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretPath, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	incoming := lib.LocateLibrary().IncomingPath
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

func TestAdoptRefusesAFileThatIsNotWhatTheClientSaysAndKeepsNothing(t *testing.T) {
	t.Parallel()
	lib, dir := newLibrary(t)
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
		name, _ := leave(t, lib, data)
		if c, _, err := lib.Adopt(context.Background(), name, tt.h); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: Adopt = %v, %v; want InvalidArgument", tt.name, c, err)
		}
		if got := files(t, dir); len(got) != 0 {
			t.Fatalf("%s: library files %q after a refusal, want none", tt.name, got)
		}
	}
}
