package packagetree_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/packagetree"
)

// writeTree writes files (path → content) under dir.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, data := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var mediaFiles = map[string]string{
	"boot/bcd":               "bcd",
	"efi/microsoft/boot/bcd": "bcd",
	"setup.exe":              "MZ setup",
	"sources/ei.cfg":         "",
	"sources/install.wim":    "MSWIM image",
	"sources/setup.exe":      "MZ inner setup",
}

// readTree reads every file under dir, path → content, and fails on
// anything but files and folders.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			t.Errorf("%s is a %v", p, d.Type())
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		got[filepath.ToSlash(rel)] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func equalTrees(t *testing.T, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d files, want %d: %v", len(got), len(want), keys(got))
	}
	for p, data := range want {
		if g, ok := got[p]; !ok || g != data {
			t.Errorf("%s: %q (present %v), want %q", p, g, ok, data)
		}
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestFromDirDescribesTheFolder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeTree(t, dir, mediaFiles)
	if err := os.Mkdir(filepath.Join(dir, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := packagetree.FromDir(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, media()) {
		t.Errorf("manifest %v, want %v", got, media())
	}
	for _, f := range got.GetFiles() {
		if _, err := os.Stat(packagetree.LocalPath(dir, f)); err != nil {
			t.Error(err)
		}
	}
}

// fromDirCase is a folder of the sample media changed by make, which
// FromDir refuses saying want.
type fromDirCase struct {
	name string
	make func(dir string) error
	want string
}

func testFromDirRefuses(t *testing.T, cases []fromDirCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeTree(t, dir, mediaFiles)
			if err := tc.make(dir); err != nil {
				t.Fatal(err)
			}
			_, err := packagetree.FromDir(context.Background(), dir)
			if !errors.Is(err, packagetree.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("FromDir = %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
}

func TestFromDirRefusesWhatIsNoFileOrFolder(t *testing.T) {
	t.Parallel()
	testFromDirRefuses(t, []fromDirCase{
		{"a symbolic link", func(dir string) error { return os.Symlink("/etc/passwd", filepath.Join(dir, "sources", "link")) }, "symbolic link"},
		{"a symbolic link to a folder", func(dir string) error { return os.Symlink("/etc", filepath.Join(dir, "etc")) }, "symbolic link"},
		{"a name with a backslash", func(dir string) error { return os.WriteFile(filepath.Join(dir, `a\..\b`), nil, 0o644) }, "backslash"},
		{"two names one on Windows", func(dir string) error { return os.WriteFile(filepath.Join(dir, "SETUP.exe"), nil, 0o644) }, "one file on Windows"},
		{"no install.wim", func(dir string) error { return os.Remove(filepath.Join(dir, "sources", "install.wim")) }, "no sources/install.wim"},
		{"more files than the limit, before hashing them all", func(dir string) error {
			for i := range packagetree.MaxFiles {
				if err := os.WriteFile(filepath.Join(dir, "f"+itoa(i)), nil, 0o644); err != nil {
					return err
				}
			}
			return nil
		}, "the folder has more than"},
	})
}

// tarOf writes a tar of entries in order; a nil body writes the header alone.
type entry struct {
	hdr  tar.Header
	body string
}

func reg(name, body string) entry {
	return entry{tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(body)), Mode: 0o644}, body}
}

func tarOf(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("header %q: %v", h.Name, err)
		}
		if h.Size > int64(len(e.body)) {
			// A header announcing more than it has: the tar is cut
			// there, as a hostile one may be.
			return buf.Bytes()
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func mediaEntries() []entry {
	var out []entry
	out = append(out, entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755}})
	for _, p := range keys(mediaFiles) {
		out = append(out, reg("./"+p, mediaFiles[p]))
	}
	return out
}

func TestExtractTarWritesTheTree(t *testing.T) {
	t.Parallel()
	plain := tarOf(t, mediaEntries()...)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain)
	zw.Close()
	for name, data := range map[string][]byte{"plain": plain, "gzip-compressed": gz.Bytes()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "staging")
			if err := packagetree.ExtractTar(context.Background(), bytes.NewReader(data), dir); err != nil {
				t.Fatal(err)
			}
			equalTrees(t, readTree(t, dir), mediaFiles)
			got, err := packagetree.FromDir(context.Background(), dir)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, media()) {
				t.Errorf("manifest %v", got)
			}
		})
	}
}

// TestExtractTarRefusesHostileEntries: each tar is the sample media with
// one hostile entry; none writes a thing outside the staging folder.
func TestExtractTarRefusesHostileEntries(t *testing.T) {
	t.Parallel()
	hdr := func(typ byte, name, link string) entry {
		return entry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: link, Mode: 0o644}}
	}
	huge := reg("sources/huge.bin", "")
	huge.hdr.Size = packagetree.MaxFileBytes + 1
	for _, tc := range []struct {
		name string
		bad  []entry
		want string
	}{
		{"a symbolic link", []entry{hdr(tar.TypeSymlink, "sources/passwd", "/etc/passwd")}, "symbolic link"},
		{"a symbolic link then a file through it", []entry{hdr(tar.TypeSymlink, "out", ".."), reg("out/escaped", "x")}, "symbolic link"},
		{"a hard link", []entry{hdr(tar.TypeLink, "sources/passwd", "/etc/passwd")}, "hard link"},
		{"a character device", []entry{hdr(tar.TypeChar, "dev/null", "")}, "device"},
		{"a block device", []entry{hdr(tar.TypeBlock, "dev/sda", "")}, "device"},
		{"a named pipe", []entry{hdr(tar.TypeFifo, "pipe", "")}, "pipe"},
		{"an unknown entry type", []entry{hdr('Z', "odd", "")}, "neither a file nor a folder"},
		{"a path climbing out", []entry{reg("../escaped", "x")}, `".."`},
		{"a path climbing out from inside", []entry{reg("sources/../../escaped", "x")}, `".."`},
		{"an absolute path", []entry{reg("/tmp/escaped", "x")}, "absolute"},
		{"backslashes climbing out", []entry{reg(`..\..\escaped`, "x")}, "backslash"},
		{"a path over the length limit", []entry{reg(strings.Repeat("d/", packagetree.MaxPathBytes/2)+"f", "x")}, "bytes long"},
		{"a file twice", []entry{reg("setup.exe", "again")}, "twice"},
		{"a file twice in another case", []entry{reg("SETUP.EXE", "again")}, "twice"},
		{"a file then a folder of its name", []entry{reg("setup.exe/x", "x")}, "is a file of the tar"},
		{"a folder then a file of its name", []entry{reg("Sources", "x")}, "twice"},
		{"a file over the size limit", []entry{huge}, "past the limits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			parent := t.TempDir()
			dir := filepath.Join(parent, "staging")
			data := tarOf(t, append(mediaEntries(), tc.bad...)...)
			err := packagetree.ExtractTar(context.Background(), bytes.NewReader(data), dir)
			if !errors.Is(err, packagetree.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ExtractTar = %v, want ErrInvalid saying %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "tar entry") {
				t.Errorf("%v does not name the entry", err)
			}
			if names, _ := os.ReadDir(parent); len(names) != 1 {
				t.Errorf("the extraction wrote beside its folder: %v", names)
			}
			if _, err := os.Lstat("/tmp/escaped"); err == nil {
				t.Error("the extraction wrote /tmp/escaped")
			}
		})
	}
}

func TestExtractTarRefusesTooManyFilesAndANonEmptyFolder(t *testing.T) {
	t.Parallel()
	t.Run("more files than the limit", func(t *testing.T) {
		t.Parallel()
		entries := mediaEntries()
		for i := range packagetree.MaxFiles {
			entries = append(entries, reg("x/"+strings.Repeat("a", 8)+itoa(i), ""))
		}
		err := packagetree.ExtractTar(context.Background(), bytes.NewReader(tarOf(t, entries...)), filepath.Join(t.TempDir(), "s"))
		if !errors.Is(err, packagetree.ErrInvalid) || !strings.Contains(err.Error(), "more than") {
			t.Fatalf("ExtractTar = %v", err)
		}
	})
	t.Run("a folder that holds something", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		writeTree(t, dir, map[string]string{"x": "x"})
		err := packagetree.ExtractTar(context.Background(), bytes.NewReader(tarOf(t, mediaEntries()...)), dir)
		if err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Fatalf("ExtractTar = %v", err)
		}
	})
	t.Run("a tar of folders alone", func(t *testing.T) {
		t.Parallel()
		data := tarOf(t, entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "sources/", Mode: 0o755}})
		err := packagetree.ExtractTar(context.Background(), bytes.NewReader(data), filepath.Join(t.TempDir(), "s"))
		if !errors.Is(err, packagetree.ErrInvalid) || !strings.Contains(err.Error(), "holds no file") {
			t.Fatalf("ExtractTar = %v", err)
		}
	})
	t.Run("bytes that are no tar", func(t *testing.T) {
		t.Parallel()
		err := packagetree.ExtractTar(context.Background(), strings.NewReader(strings.Repeat("not a tar ", 100)), filepath.Join(t.TempDir(), "s"))
		if !errors.Is(err, packagetree.ErrInvalid) {
			t.Fatalf("ExtractTar = %v", err)
		}
	})
}

func itoa(i int) string {
	const digits = "0123456789"
	s := ""
	for {
		s = string(digits[i%10]) + s
		if i /= 10; i == 0 {
			return s
		}
	}
}

// fetcher serves blobs from a map and counts its fetches.
type fetcher struct {
	blobs   map[string]string
	fetches map[string]int
}

func newFetcher(files map[string]string) *fetcher {
	f := &fetcher{blobs: map[string]string{}, fetches: map[string]int{}}
	for _, data := range files {
		f.blobs[sum(data)] = data
	}
	return f
}

func (f *fetcher) fetch(_ context.Context, sha, dst string) error {
	f.fetches[sha]++
	data, ok := f.blobs[sha]
	if !ok {
		return errors.New("no such blob")
	}
	return os.WriteFile(dst, []byte(data), 0o644)
}

func TestMaterializeLaysOutTheTree(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "tree")
	f := newFetcher(mediaFiles)
	if err := packagetree.Materialize(context.Background(), media(), dir, f.fetch); err != nil {
		t.Fatal(err)
	}
	equalTrees(t, readTree(t, dir), mediaFiles)
	if n := f.fetches[sum("bcd")]; n != 1 {
		t.Errorf("the blob of two files was fetched %d times, want once", n)
	}
	if n := f.fetches[packagetree.EmptySHA256]; n != 0 {
		t.Errorf("the empty file was fetched %d times", n)
	}
}

func TestMaterializeRefuses(t *testing.T) {
	t.Parallel()
	t.Run("a fetch that writes other bytes", func(t *testing.T) {
		t.Parallel()
		f := newFetcher(mediaFiles)
		f.blobs[sum("MSWIM image")] = "MSWIM tampered"
		err := packagetree.Materialize(context.Background(), media(), filepath.Join(t.TempDir(), "tree"), f.fetch)
		if err == nil || !strings.Contains(err.Error(), "sources/install.wim") || !strings.Contains(err.Error(), "manifest wants") {
			t.Fatalf("Materialize = %v", err)
		}
	})
	t.Run("a manifest with a path climbing out, before writing anything", func(t *testing.T) {
		t.Parallel()
		tree := media()
		tree.Files = append([]*osvcv1.PackageFile{file("../escaped", "x")}, tree.Files...)
		parent := t.TempDir()
		err := packagetree.Materialize(context.Background(), tree, filepath.Join(parent, "tree"), newFetcher(mediaFiles).fetch)
		if !errors.Is(err, packagetree.ErrInvalid) {
			t.Fatalf("Materialize = %v", err)
		}
		if names, _ := os.ReadDir(parent); len(names) != 0 {
			t.Errorf("wrote %v", names)
		}
	})
	t.Run("a folder that holds something", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		writeTree(t, dir, map[string]string{"x": "x"})
		err := packagetree.Materialize(context.Background(), media(), dir, newFetcher(mediaFiles).fetch)
		if err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Fatalf("Materialize = %v", err)
		}
	})
}

// FuzzExtractTar: whatever the tar, ExtractTar writes only under its
// folder, only files and folders, and a tree it accepts reads back.
func FuzzExtractTar(f *testing.F) {
	var seed bytes.Buffer
	tw := tar.NewWriter(&seed)
	for _, p := range keys(mediaFiles) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Size: int64(len(mediaFiles[p])), Mode: 0o644})
		io.WriteString(tw, mediaFiles[p])
	}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: ".."})
	tw.Close()
	f.Add(seed.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "s")
		err := packagetree.ExtractTar(context.Background(), bytes.NewReader(data), dir)
		if names, _ := os.ReadDir(parent); len(names) != 1 {
			t.Fatalf("wrote beside its folder: %v", names)
		}
		readTree(t, dir)
		if err == nil {
			if _, err := packagetree.FromDir(context.Background(), dir); err != nil && !strings.Contains(err.Error(), "install.wim") {
				t.Fatalf("an accepted tar does not read back: %v", err)
			}
		}
	})
}

// A distribution point's cache lends its files by hard link: the tree is
// laid out and the cache keeps its files.
func TestMaterializeTakesHardLinksFromACache(t *testing.T) {
	t.Parallel()
	cache := t.TempDir()
	for _, data := range mediaFiles {
		if err := os.WriteFile(filepath.Join(cache, sum(data)), []byte(data), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	link := func(_ context.Context, sha, dst string) error { return os.Link(filepath.Join(cache, sha), dst) }
	dir := filepath.Join(cache, "tree")
	if err := packagetree.Materialize(context.Background(), media(), dir, link); err != nil {
		t.Fatal(err)
	}
	equalTrees(t, readTree(t, dir), mediaFiles)
	if _, err := os.Stat(filepath.Join(cache, sum("MSWIM image"))); err != nil {
		t.Errorf("the cache lost its file: %v", err)
	}
}
