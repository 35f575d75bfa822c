package packagetree_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/packagetree"
)

func sum(data string) string {
	s := sha256.Sum256([]byte(data))
	return hex.EncodeToString(s[:])
}

func file(path, data string) *osvcv1.PackageFile {
	return &osvcv1.PackageFile{Path: path, Sha256: sum(data), SizeBytes: int64(len(data))}
}

// media is a small tree shaped like Windows' installation media.
func media() *osvcv1.PackageTree {
	return &osvcv1.PackageTree{Files: []*osvcv1.PackageFile{
		file("boot/bcd", "bcd"),
		file("efi/microsoft/boot/bcd", "bcd"),
		file("setup.exe", "MZ setup"),
		file("sources/ei.cfg", ""),
		file("sources/install.wim", "MSWIM image"),
		file("sources/setup.exe", "MZ inner setup"),
	}}
}

func TestAWellFormedTreeIsAccepted(t *testing.T) {
	t.Parallel()
	tree := media()
	if err := packagetree.Check(tree); err != nil {
		t.Fatal(err)
	}
	if got := packagetree.Install(tree).GetSha256(); got != sum("MSWIM image") {
		t.Errorf("install image %s, want the tree's sources/install.wim", got)
	}
	var blobs []string
	for _, f := range packagetree.Blobs(tree) {
		blobs = append(blobs, f.GetPath())
	}
	if fmt.Sprint(blobs) != "[boot/bcd setup.exe sources/install.wim sources/setup.exe]" {
		t.Errorf("blobs of %v, want one per content but the empty file's", blobs)
	}
	ref := packagetree.Ref("ab", tree)
	if ref.GetFileCount() != 6 || ref.GetSizeBytes() != int64(3+3+8+0+11+14) {
		t.Errorf("ref %v", ref)
	}

	t.Run("install.wim is found whatever its case, as on Windows", func(t *testing.T) {
		t.Parallel()
		tree := media()
		tree.Files[4].Path = "Sources/Install.WIM"
		packagetree.Sort(tree)
		if err := packagetree.Check(tree); err != nil {
			t.Fatal(err)
		}
		if packagetree.Install(tree).GetPath() != "Sources/Install.WIM" {
			t.Error("not found")
		}
	})
}

func TestMarshalIsOneSequenceOfBytesPerTree(t *testing.T) {
	t.Parallel()
	a, err := packagetree.Marshal(media())
	if err != nil {
		t.Fatal(err)
	}
	b, err := packagetree.Marshal(media())
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) {
		t.Fatal("two serializations of one tree differ")
	}
	got, err := packagetree.Parse(a)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, media()) {
		t.Errorf("parsed %v", got)
	}
}

func TestWithInstallImageReplacesOnlyTheImage(t *testing.T) {
	t.Parallel()
	old := media()
	got, err := packagetree.WithInstallImage(old, sum("serviced"), 8)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range got.GetFiles() {
		want := old.GetFiles()[i]
		if f.GetPath() == packagetree.InstallImage {
			want = file(packagetree.InstallImage, "serviced")
		}
		if !proto.Equal(f, want) {
			t.Errorf("file %d is %v, want %v", i, f, want)
		}
	}
	if packagetree.Install(old).GetSha256() != sum("MSWIM image") {
		t.Error("the old tree changed")
	}
}

// TestCheckRefusesHostileManifests: every rule has its case, each a tree
// that only that rule refuses.
func TestCheckRefusesHostileManifests(t *testing.T) {
	t.Parallel()
	with := func(edit func(tr *osvcv1.PackageTree)) *osvcv1.PackageTree {
		tr := media()
		edit(tr)
		return tr
	}
	add := func(f *osvcv1.PackageFile) *osvcv1.PackageTree {
		return with(func(tr *osvcv1.PackageTree) { tr.Files = append(tr.Files, f); packagetree.Sort(tr) })
	}
	many := func(n int) *osvcv1.PackageTree {
		tr := media()
		for i := range n - len(tr.Files) {
			tr.Files = append(tr.Files, file(fmt.Sprintf("x/%06d", i), "x"))
		}
		packagetree.Sort(tr)
		return tr
	}
	long := strings.Repeat("a/", packagetree.MaxPathBytes/2) + "b"
	for _, tc := range []struct {
		name string
		tree *osvcv1.PackageTree
		want string
	}{
		{"no files at all", &osvcv1.PackageTree{}, "no file"},
		{"an absolute path", add(file("/etc/passwd", "x")), "absolute"},
		{"a path with a drive letter", add(file("C:/x", "x")), "drive letter"},
		{"a path climbing out with ..", add(file("sources/../../x", "x")), `".."`},
		{"a backslash", add(file(`sources\..\..\x`, "x")), "backslash"},
		{"an empty path", add(file("", "x")), "empty path"},
		{"a NUL in a name", add(file("sources/a\x00.wim", "x")), "control character"},
		{"a path over the length limit", add(file(long, "x")), "bytes long"},
		{"a name Windows reserves", add(file("sources/aux.txt", "x")), "device"},
		{"a path not in its clean form", add(file("./setup2.exe", "x")), "clean form"},
		{"a doubled slash", add(file("sources//x", "x")), "clean form"},
		{"a trailing slash", add(file("sources/x/", "x")), "clean form"},
		{"the same path twice", add(file("setup.exe", "MZ setup")), "path order"},
		{"two paths one on Windows", add(file("SETUP.EXE", "x")), "one file on Windows"},
		{"a file that is another's folder", add(file("setup.exe/x", "x")), "cannot be in a folder"},
		{"a file that is another's folder in another case", add(file("Setup.exe/x", "x")), "cannot be in a folder"},
		{"files out of order", with(func(tr *osvcv1.PackageTree) { tr.Files[0], tr.Files[1] = tr.Files[1], tr.Files[0] }), "path order"},
		{"an upper-case sha256", with(func(tr *osvcv1.PackageTree) { tr.Files[0].Sha256 = strings.ToUpper(tr.Files[0].Sha256) }), "hex digits"},
		{"a short sha256", with(func(tr *osvcv1.PackageTree) { tr.Files[0].Sha256 = "abc" }), "hex digits"},
		{"a negative size", with(func(tr *osvcv1.PackageTree) { tr.Files[0].SizeBytes = -1 }), "negative"},
		{"a file over the size limit", with(func(tr *osvcv1.PackageTree) { tr.Files[0].SizeBytes = packagetree.MaxFileBytes + 1 }), "a file of a package tree may have"},
		{"files over the total limit", with(func(tr *osvcv1.PackageTree) {
			for _, f := range tr.Files {
				if f.SizeBytes > 0 {
					f.SizeBytes = packagetree.MaxFileBytes
				}
			}
		}), "together"},
		{"an empty file with another sha256", with(func(tr *osvcv1.PackageTree) { tr.Files[0].SizeBytes = 0 }), "empty file"},
		{"bytes named by the empty sha256", with(func(tr *osvcv1.PackageTree) { tr.Files[3].SizeBytes = 5 }), "that of no bytes"},
		{"no install.wim", with(func(tr *osvcv1.PackageTree) { tr.Files = append(tr.Files[:4], tr.Files[5:]...) }), "no sources/install.wim"},
		{"more files than the limit", many(packagetree.MaxFiles + 1), "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := packagetree.Check(tc.tree)
			if !errors.Is(err, packagetree.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
	t.Run("as many files as the limit are accepted", func(t *testing.T) {
		t.Parallel()
		if err := packagetree.Check(many(packagetree.MaxFiles)); err != nil {
			t.Fatal(err)
		}
	})
}

func TestParseRefusesWhatIsNoManifest(t *testing.T) {
	t.Parallel()
	good, err := packagetree.Marshal(media())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"bytes over the manifest limit", append(good, make([]byte, packagetree.MaxManifestBytes)...), "at most"},
		{"bytes that are no protobuf", []byte("\xff\xff\xff"), "not a package tree manifest"},
		{"an empty manifest", nil, "no file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := packagetree.Parse(tc.data)
			if !errors.Is(err, packagetree.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
}

// FuzzParse: whatever the bytes, Parse either refuses them or returns a
// tree Check accepts whose serialization parses to itself.
func FuzzParse(f *testing.F) {
	good, err := packagetree.Marshal(media())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		tree, err := packagetree.Parse(data)
		if err != nil {
			return
		}
		b, err := packagetree.Marshal(tree)
		if err != nil {
			t.Fatalf("a parsed tree does not marshal: %v", err)
		}
		again, err := packagetree.Parse(b)
		if err != nil || !proto.Equal(again, tree) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
