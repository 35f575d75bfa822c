package content_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store/storetest"
)

// testPartSize and multipartBytes size the data of tests that need
// several megabytes.
const testPartSize = 5 << 20

// multipartBytes is data of three parts, the last one short.
const multipartBytes = 2*testPartSize + 12345

// backend is where a library under test keeps its blobs.
type backend struct {
	name string
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
}

// library is a library on one backend.
type library struct {
	*content.Library
	cfg content.Config
	// contents lists everything the backend holds: the blobs as
	// blobEntry, anything else (an upload in progress, a temporary copy)
	// by its name.
	contents func(t *testing.T) []string
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
	return l
}

// replica is the library another server uses for the same blobs: a
// directory is one server's, its replica is itself.
func (l *library) replica(*testing.T, backend) *library { return l }

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
