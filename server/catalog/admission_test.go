package catalog_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
)

func TestImportsPastTheLimitWaitForTheirTurn(t *testing.T) {
	t.Parallel()
	st := newFixture(t).store
	lib, err := content.New(content.Config{Dir: t.TempDir(), Store: st})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.New(catalog.Config{Store: st, Library: lib, MaxConcurrentImports: 2})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{cat: cat, lib: lib, store: st}
	wim := f.put(t, captureWIM(t, wimIndex{name: "Windows 11 Pro", arch: 9, build: 22631}))
	update := f.file(t, "windows11.0-kb5031455-x64.exe", []byte("MZ not a package"))

	createSites(t, st, "PS1")
	// Two imports in progress fill the catalog's slots.
	var releases []func()
	for range 2 {
		release, err := cat.EnterImport(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, release)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	imports := []struct {
		name string
		call func(context.Context) error
	}{
		{"ImportImage", func(ctx context.Context) error {
			_, err := cat.ImportImage(ctx, catalog.ImportImage{ID: "win11", Site: "PS1", ContentSHA256: wim.Sha256})
			return err
		}},
		{"ImportUpdates", func(ctx context.Context) error {
			_, err := cat.ImportUpdates(ctx, []*osvcv1.UpdateFile{update})
			return err
		}},
	}
	for _, imp := range imports {
		err := imp.call(ended)
		if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "--max-concurrent-imports") {
			t.Errorf("%s while the slots are taken, its context ended = %v; want ErrResourceExhausted naming --max-concurrent-imports", imp.name, err)
		}
	}
	if n := countImages(t, cat); n != 0 {
		t.Errorf("%d images after refused imports, want none", n)
	}

	// Calls that wait go in as slots free up.
	done := make(chan error, len(imports))
	for _, imp := range imports {
		go func() { done <- imp.call(context.Background()) }()
	}
	for _, release := range releases {
		release()
	}
	deadline := time.After(time.Minute)
	for range imports {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("an import that waited for its turn: %v", err)
			}
		case <-deadline:
			t.Fatal("imports still waiting a minute after the slots were released")
		}
	}
	if n := countImages(t, cat); n != 1 {
		t.Errorf("%d images, want the one imported after waiting", n)
	}
}

func TestNewRefusesANegativeImportLimit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, err := catalog.New(catalog.Config{Store: f.store, Library: f.lib, MaxConcurrentImports: -1})
	if err == nil || !strings.Contains(err.Error(), "--max-concurrent-imports") {
		t.Errorf("New = %v, want an error naming --max-concurrent-imports", err)
	}
}

func countImages(t *testing.T, cat *catalog.Catalog) int {
	t.Helper()
	imgs, _, err := cat.ListImages(context.Background(), "", 100, "")
	if err != nil {
		t.Fatal(err)
	}
	return len(imgs)
}

func TestImportsClaimTheContentTheyReference(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newFixture(t).store
	var mu sync.Mutex
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	lib, err := content.New(content.Config{Dir: t.TempDir(), Store: st, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.New(catalog.Config{Store: st, Library: lib})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{cat: cat, lib: lib, store: st}
	wim := f.put(t, captureWIM(t, wimIndex{name: "Windows 11 Pro", arch: 9, build: 22631}))
	update := f.file(t, "windows11.0-kb5031455-x64.exe", []byte("MZ not a package"))

	createSites(t, st, "PS1")
	mu.Lock()
	now = now.Add(72 * time.Hour)
	mu.Unlock()
	if _, err := cat.ImportImage(ctx, catalog.ImportImage{ID: "win11", Site: "PS1", ContentSHA256: wim.Sha256}); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.ImportUpdates(ctx, []*osvcv1.UpdateFile{update}); err != nil {
		t.Fatal(err)
	}
	for _, sha := range []string{wim.Sha256, update.Sha256} {
		rec, err := lib.Stat(ctx, sha)
		if err != nil {
			t.Fatal(err)
		}
		if !rec.GetUpdateTime().AsTime().Equal(clock()) {
			t.Errorf("content %s update time %v after an import, want the import's %v: the collector's grace period restarts when an import names a blob",
				sha, rec.GetUpdateTime().AsTime(), clock())
		}
	}
}
