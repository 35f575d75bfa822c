package catalog_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/packagetree"
	"github.com/osvc/osvc/server/catalog"
)

// treeFixture is a catalog whose library holds a WIM, two more files and
// the manifest of the tree of the three.
type treeFixture struct {
	*fixture
	wim, setup, bcd *osvcv1.Content
	tree            *osvcv1.PackageTree
}

func newTreeFixture(t *testing.T) *treeFixture {
	t.Helper()
	f := &treeFixture{fixture: newFixture(t)}
	createSites(t, f.store, "PS1")
	f.wim = f.put(t, captureWIM(t, wimIndex{name: "Windows 11 Enterprise", arch: 9, build: 22631}))
	f.setup = f.put(t, []byte("MZ setup"))
	f.bcd = f.put(t, []byte("boot configuration data"))
	f.tree = &osvcv1.PackageTree{Files: []*osvcv1.PackageFile{
		{Path: "boot/bcd", Sha256: f.bcd.GetSha256(), SizeBytes: f.bcd.GetSizeBytes()},
		{Path: "setup.exe", Sha256: f.setup.GetSha256(), SizeBytes: f.setup.GetSizeBytes()},
		{Path: "sources/ei.cfg", Sha256: packagetree.EmptySHA256},
		{Path: "sources/install.wim", Sha256: f.wim.GetSha256(), SizeBytes: f.wim.GetSizeBytes()},
	}}
	return f
}

// putTree stores a manifest as it is, checked or not, and returns its sha256.
func (f *treeFixture) putTree(t *testing.T, tree *osvcv1.PackageTree) string {
	t.Helper()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	return f.put(t, data).GetSha256()
}

func (f *treeFixture) importTree(sha string, kind osvcv1.ImageKind) (*osvcv1.Image, error) {
	return f.cat.ImportImage(context.Background(), catalog.ImportImage{ID: "upgrade", Site: "PS1", Kind: kind,
		ContentSHA256: f.wim.GetSha256(), TreeSHA256: sha})
}

func TestImportImageOfAPackageTreeRecordsItsManifest(t *testing.T) {
	t.Parallel()
	f := newTreeFixture(t)
	sha := f.putTree(t, f.tree)
	img, err := f.importTree(sha, osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE)
	if err != nil {
		t.Fatal(err)
	}
	v := img.GetVersions()[0]
	if v.GetSha256() != f.wim.GetSha256() || len(img.GetIndexes()) != 1 {
		t.Errorf("version %v with %d indexes, want the tree's install.wim and its index", v, len(img.GetIndexes()))
	}
	want := &osvcv1.PackageTreeRef{Sha256: sha, FileCount: 4, SizeBytes: f.wim.GetSizeBytes() + f.setup.GetSizeBytes() + f.bcd.GetSizeBytes()}
	if !proto.Equal(v.GetTree(), want) {
		t.Errorf("tree %v, want %v", v.GetTree(), want)
	}
}

func TestImportImageRefusesBadPackageTrees(t *testing.T) {
	t.Parallel()
	f := newTreeFixture(t)
	edit := func(fn func(tree *osvcv1.PackageTree)) string {
		tree := proto.Clone(f.tree).(*osvcv1.PackageTree)
		fn(tree)
		return f.putTree(t, tree)
	}
	good := f.putTree(t, f.tree)
	missing := strings.Repeat("0", 64)
	big := f.put(t, make([]byte, packagetree.MaxManifestBytes+1)).GetSha256()
	for _, tc := range []struct {
		name  string
		sha   string
		kind  osvcv1.ImageKind
		err   error
		field string
		says  string
	}{
		{"a tree for an OS image", good, osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE, errdefs.ErrInvalidArgument, "tree_sha256", "only an OS upgrade package"},
		{"a tree for an image of no kind, an OS image", good, osvcv1.ImageKind_IMAGE_KIND_UNSPECIFIED, errdefs.ErrInvalidArgument, "tree_sha256", "only an OS upgrade package"},
		{"a malformed sha256", "../x", osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrInvalidArgument, "tree_sha256", "sha256"},
		{"a manifest not in the library", missing, osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrFailedPrecondition, "", "manifest"},
		{"a blob that is no manifest", f.setup.GetSha256(), osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrInvalidArgument, "tree_sha256", "not a package tree"},
		{"a manifest over its size limit", big, osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrInvalidArgument, "tree_sha256", "more than a package tree manifest"},
		{"a manifest with a path climbing out", edit(func(tree *osvcv1.PackageTree) {
			tree.Files[0].Path = "../../boot/bcd"
		}), osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrInvalidArgument, "tree_sha256", `".."`},
		{"a manifest without install.wim", edit(func(tree *osvcv1.PackageTree) {
			tree.Files = tree.Files[:3]
		}), osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrInvalidArgument, "tree_sha256", "no sources/install.wim"},
		{"a manifest whose install.wim is another WIM", edit(func(tree *osvcv1.PackageTree) {
			tree.Files[3].Sha256, tree.Files[3].SizeBytes = f.setup.GetSha256(), f.setup.GetSizeBytes()
		}), osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrInvalidArgument, "tree_sha256", "not the WIM content_sha256 names"},
		{"a manifest naming a file not in the library", edit(func(tree *osvcv1.PackageTree) {
			tree.Files[1].Sha256 = missing
		}), osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrFailedPrecondition, "", "setup.exe"},
		{"a manifest lying about a file's size", edit(func(tree *osvcv1.PackageTree) {
			tree.Files[1].SizeBytes++
		}), osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE, errdefs.ErrInvalidArgument, "tree_sha256", "setup.exe with 9 bytes"},
	} {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			_, err := f.importTree(tc.sha, tc.kind)
			if !errors.Is(err, tc.err) || fieldOf(err) != tc.field || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("ImportImage = %v (field %q), want %v on field %q saying %q", err, fieldOf(err), tc.err, tc.field, tc.says)
			}
		})
	}
	imgs, _, err := f.cat.ListImages(context.Background(), "", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 0 {
		t.Errorf("refused imports left images behind: %v", imgs)
	}
}

// An OS upgrade package imported as its WIM alone is an image like any other.
func TestImportImageOfAnUpgradePackageWithoutATree(t *testing.T) {
	t.Parallel()
	f := newTreeFixture(t)
	img, err := f.importTree("", osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE)
	if err != nil {
		t.Fatal(err)
	}
	if v := img.GetVersions()[0]; v.GetTree() != nil || v.GetSha256() != f.wim.GetSha256() {
		t.Errorf("version %v, want the WIM without a tree", v)
	}
}
