package catalog_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	s3test.Close()
	os.Exit(code)
}

// fixture is a catalog on a fresh store prefix with its own content library.
type fixture struct {
	cat   *catalog.Catalog
	lib   *content.Library
	store *store.Store
}

var fixedNow = time.Date(2026, 11, 14, 9, 0, 0, 0, time.UTC)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureOn(t, nil, t.TempDir())
}

// newFixtureOn is newFixture with the library's blobs in blobs (nil: in
// dir), dir holding its temporary files.
func newFixtureOn(t *testing.T, blobs content.Blobs, dir string) *fixture {
	t.Helper()
	st := storetest.New(t)
	lib, err := content.New(content.Config{Dir: dir, Blobs: blobs, Store: st})
	if err != nil {
		t.Fatalf("content.New: %v", err)
	}
	cat, err := catalog.New(catalog.Config{Store: st, Library: lib, Now: func() time.Time { return fixedNow }})
	if err != nil {
		t.Fatalf("catalog.New: %v", err)
	}
	return &fixture{cat: cat, lib: lib, store: st}
}

// createSites creates the sites images are imported into, as an
// administrator does first.
func createSites(t *testing.T, st *store.Store, codes ...string) {
	t.Helper()
	r, err := sites.New(sites.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	for _, code := range codes {
		if _, err := r.Create(context.Background(), &osvcv1.Site{Code: code}); err != nil {
			t.Fatalf("create site %s: %v", code, err)
		}
	}
}

// put stores data in the content library and returns its sha256.
func (f *fixture) put(t *testing.T, data []byte) *osvcv1.Content {
	t.Helper()
	c, _, err := f.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("write content: %v", err)
	}
	return c
}

// wimIndex describes one index for captureWIM.
type wimIndex struct {
	name  string
	arch  int // WINDOWS/ARCH: 0 x86, 9 x64, 12 arm64
	build int
}

// captureWIM makes a real WIM with wimlib-imagex, one image per index, and
// returns its bytes.
func captureWIM(t *testing.T, indexes ...wimIndex) []byte {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "Windows", "System32"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "Windows", "System32", "kernel32.dll"), []byte("not really a dll"), 0o644); err != nil {
		t.Fatal(err)
	}
	wim := filepath.Join(dir, "install.wim")
	for i, idx := range indexes {
		verb := "capture"
		if i > 0 {
			verb = "append"
		}
		cmd := exec.Command("wimlib-imagex", verb, src, wim, idx.name,
			"--image-property", fmt.Sprintf("WINDOWS/ARCH=%d", idx.arch),
			"--image-property", fmt.Sprintf("WINDOWS/VERSION/BUILD=%d", idx.build))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("wimlib-imagex %s: %v\n%s", verb, err, out)
		}
	}
	data, err := os.ReadFile(wim)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func fieldOf(err error) string {
	var v *errdefs.FieldViolation
	if errors.As(err, &v) {
		return v.Field
	}
	return ""
}

func TestImportImageReadsTheIndexesOfTheWIM(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	wim := f.put(t, captureWIM(t,
		wimIndex{name: "Windows 11 Pro", arch: 9, build: 22631},
		wimIndex{name: "Windows 11 Pro ARM", arch: 12, build: 22621}))

	createSites(t, f.store, "PS1")
	img, err := f.cat.ImportImage(ctx, catalog.ImportImage{ID: "win11", DisplayName: "Windows 11 23H2", Site: "PS1", ContentSHA256: wim.Sha256})
	if err != nil {
		t.Fatalf("ImportImage: %v", err)
	}
	if img.Name != "images/win11" || img.Kind != osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE || img.Site != "PS1" ||
		img.DisplayName != "Windows 11 23H2" || img.ServicingStatus != osvcv1.ServicingStatus_SERVICING_STATUS_NONE {
		t.Errorf("image = %v", img)
	}
	if img.CurrentVersion != 1 || len(img.Versions) != 1 || img.Versions[0].Sha256 != wim.Sha256 ||
		img.Versions[0].SizeBytes != wim.SizeBytes || img.Versions[0].Version != 1 {
		t.Errorf("versions = %v, current %d; want version 1 of %s", img.Versions, img.CurrentVersion, wim.Sha256)
	}
	if len(img.Indexes) != 2 {
		t.Fatalf("indexes = %v, want 2", img.Indexes)
	}
	if got := img.Indexes[0]; got.Index != 1 || got.Name != "Windows 11 Pro" || got.Architecture != osvcv1.Architecture_ARCHITECTURE_X64 || got.Build != 22631 {
		t.Errorf("index 1 = %v", got)
	}
	if got := img.Indexes[1]; got.Index != 2 || got.Architecture != osvcv1.Architecture_ARCHITECTURE_ARM64 || got.Build != 22621 {
		t.Errorf("index 2 = %v", got)
	}
	if !img.CreateTime.AsTime().Equal(fixedNow) {
		t.Errorf("create_time = %v, want the catalog clock's %v", img.CreateTime.AsTime(), fixedNow)
	}

	got, err := f.cat.GetImage(ctx, "images/win11")
	if err != nil {
		t.Fatalf("GetImage: %v", err)
	}
	if !proto.Equal(got, img) {
		t.Errorf("GetImage = %v, want what ImportImage returned: %v", got, img)
	}
}

// On an object store the WIM's header is read by ranged requests, and an
// update package from a temporary copy, removed once read.
func TestImportFromALibraryOnAnObjectStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, _ := s3test.NewStore(t, s3store.Config{})
	dir := t.TempDir()
	f := newFixtureOn(t, st, dir)
	createSites(t, f.store, "PS1")
	wim := f.put(t, captureWIM(t, wimIndex{name: "Windows 11 Pro", arch: 9, build: 22631}))
	img, err := f.cat.ImportImage(ctx, catalog.ImportImage{ID: "win11", Site: "PS1", ContentSHA256: wim.Sha256})
	if err != nil {
		t.Fatalf("ImportImage: %v", err)
	}
	if len(img.Indexes) != 1 || img.Indexes[0].Build != 22631 {
		t.Errorf("indexes = %v", img.Indexes)
	}
	m := manifest("Package_for_RollupFix", "amd64", "22621.2428.1.0", "KB5031354", securityUpdate, []uint32{22621, 22631})
	u := f.importOne(t, f.file(t, "windows11.0-kb5031354-x64.cab", buildCAB(t, m)))
	if u.PackageIdentity != m.Identity.String() {
		t.Errorf("package_identity = %q, want %q", u.PackageIdentity, m.Identity.String())
	}
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("%s is left in the server's folder", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestImportImageRefusesBadRequests(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	wim := f.put(t, captureWIM(t, wimIndex{name: "Windows", arch: 9, build: 22631}))
	notWIM := f.put(t, []byte("MZ this is an executable, not a WIM"))
	missing := "0000000000000000000000000000000000000000000000000000000000000000"

	tests := []struct {
		name      string
		req       catalog.ImportImage
		wantErr   error
		wantField string
	}{
		{"an upper-case id", catalog.ImportImage{ID: "Win11", Site: "PS1", ContentSHA256: wim.Sha256}, errdefs.ErrInvalidArgument, "image_id"},
		{"an empty id", catalog.ImportImage{Site: "PS1", ContentSHA256: wim.Sha256}, errdefs.ErrInvalidArgument, "image_id"},
		{"an id starting with a digit", catalog.ImportImage{ID: "11win", Site: "PS1", ContentSHA256: wim.Sha256}, errdefs.ErrInvalidArgument, "image_id"},
		{"an id with a slash", catalog.ImportImage{ID: "win/../x", Site: "PS1", ContentSHA256: wim.Sha256}, errdefs.ErrInvalidArgument, "image_id"},
		{"an id of 64 characters", catalog.ImportImage{ID: "a123456789012345678901234567890123456789012345678901234567890123", Site: "PS1", ContentSHA256: wim.Sha256}, errdefs.ErrInvalidArgument, "image_id"},
		{"a lower-case site", catalog.ImportImage{ID: "win", Site: "ps1", ContentSHA256: wim.Sha256}, errdefs.ErrInvalidArgument, "site"},
		{"a site of four characters", catalog.ImportImage{ID: "win", Site: "PS12", ContentSHA256: wim.Sha256}, errdefs.ErrInvalidArgument, "site"},
		{"no site", catalog.ImportImage{ID: "win", ContentSHA256: wim.Sha256}, errdefs.ErrInvalidArgument, "site"},
		{"an unknown kind", catalog.ImportImage{ID: "win", Site: "PS1", ContentSHA256: wim.Sha256, Kind: 42}, errdefs.ErrInvalidArgument, "kind"},
		{"a malformed sha256", catalog.ImportImage{ID: "win", Site: "PS1", ContentSHA256: "../../etc/passwd"}, errdefs.ErrInvalidArgument, "content_sha256"},
		{"content not in the library", catalog.ImportImage{ID: "win", Site: "PS1", ContentSHA256: missing}, errdefs.ErrFailedPrecondition, ""},
		{"content that is not a WIM", catalog.ImportImage{ID: "win", Site: "PS1", ContentSHA256: notWIM.Sha256}, errdefs.ErrInvalidArgument, "content_sha256"},
		{"a site that does not exist", catalog.ImportImage{ID: "win", Site: "PS9", ContentSHA256: wim.Sha256}, errdefs.ErrFailedPrecondition, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			_, err := f.cat.ImportImage(ctx, tt.req)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ImportImage: got %v, want %v", err, tt.wantErr)
			}
			if got := fieldOf(err); got != tt.wantField {
				t.Errorf("field = %q, want %q (error %v)", got, tt.wantField, err)
			}
		})
	}
	imgs, _, err := f.cat.ListImages(ctx, "", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 0 {
		t.Errorf("refused imports left images behind: %v", imgs)
	}
}

func TestImportImageOfATakenIDIsAConflict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	wim := f.put(t, captureWIM(t, wimIndex{name: "Windows", arch: 9, build: 22631}))
	createSites(t, f.store, "PS1")
	req := catalog.ImportImage{ID: "win11", Site: "PS1", ContentSHA256: wim.Sha256}
	if _, err := f.cat.ImportImage(ctx, req); err != nil {
		t.Fatal(err)
	}
	req.Site = "PS2"
	if _, err := f.cat.ImportImage(ctx, req); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second ImportImage: got %v, want ErrConflict", err)
	}
	img, err := f.cat.GetImage(ctx, "images/win11")
	if err != nil {
		t.Fatal(err)
	}
	if img.Site != "PS1" {
		t.Errorf("site = %s: the refused import changed the image", img.Site)
	}
}

func TestGetImageOfABadOrUnknownName(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name    string
		wantErr error
	}{
		{"images/nope", errdefs.ErrNotFound},
		{"nope", errdefs.ErrInvalidArgument},
		{"updates/nope", errdefs.ErrInvalidArgument},
		{"images/", errdefs.ErrInvalidArgument},
		{"images/a/b", errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q is %v", tt.name, tt.wantErr), func(t *testing.T) {
			if _, err := f.cat.GetImage(context.Background(), tt.name); !errors.Is(err, tt.wantErr) {
				t.Errorf("GetImage(%q): got %v, want %v", tt.name, err, tt.wantErr)
			}
		})
	}
}

func TestListImagesPagesAndFiltersBySite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	wim := f.put(t, captureWIM(t, wimIndex{name: "Windows", arch: 9, build: 22631}))
	createSites(t, f.store, "PS1", "PS2")
	imageSites := map[string]string{"a1": "PS1", "a2": "PS2", "a3": "PS1", "a4": "PS2", "a5": "PS1"}
	for id, site := range imageSites {
		if _, err := f.cat.ImportImage(ctx, catalog.ImportImage{ID: id, Site: site, ContentSHA256: wim.Sha256}); err != nil {
			t.Fatal(err)
		}
	}
	collect := func(site string, pageSize int) ([]string, int) {
		t.Helper()
		var names []string
		pages, token := 0, ""
		for {
			imgs, next, err := f.cat.ListImages(ctx, site, pageSize, token)
			if err != nil {
				t.Fatalf("ListImages(%q, %d): %v", site, pageSize, err)
			}
			pages++
			if len(imgs) > pageSize {
				t.Fatalf("page of %d images, want at most %d", len(imgs), pageSize)
			}
			for _, img := range imgs {
				names = append(names, img.Name)
			}
			if next == "" {
				return names, pages
			}
			token = next
		}
	}
	if names, pages := collect("", 2); fmt.Sprint(names) != "[images/a1 images/a2 images/a3 images/a4 images/a5]" || pages != 3 {
		t.Errorf("all images in pages of 2: %v in %d pages", names, pages)
	}
	if names, _ := collect("PS1", 2); fmt.Sprint(names) != "[images/a1 images/a3 images/a5]" {
		t.Errorf("PS1's images: %v", names)
	}
	if names, _ := collect("PS2", 1); fmt.Sprint(names) != "[images/a2 images/a4]" {
		t.Errorf("PS2's images one by one: %v", names)
	}
	if _, _, err := f.cat.ListImages(ctx, "", 2, "not-a-token!"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("a damaged page token: got %v, want ErrInvalidArgument", err)
	}
	if _, _, err := f.cat.ListImages(ctx, "xx", 2, ""); fieldOf(err) != "site" {
		t.Errorf("a bad site filter: got %v, want InvalidArgument on site", err)
	}
}

func TestNamesRoundTrip(t *testing.T) {
	t.Parallel()
	if id, err := catalog.ImageID(catalog.ImageName("win11-pro")); err != nil || id != "win11-pro" {
		t.Errorf("ImageID(ImageName) = %q, %v", id, err)
	}
	if id, err := catalog.UpdateID(catalog.UpdateName("kb5031354-x64")); err != nil || id != "kb5031354-x64" {
		t.Errorf("UpdateID(UpdateName) = %q, %v", id, err)
	}
	if _, err := catalog.UpdateID("images/kb1"); fieldOf(err) != "name" {
		t.Errorf("UpdateID of an image name: got %v, want InvalidArgument on name", err)
	}
}
