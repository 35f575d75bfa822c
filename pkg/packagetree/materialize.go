package packagetree

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/pkg/winpath"
)

// Fetch writes the blob sha256 into the file dst, which does not exist yet,
// in a folder Materialize made: a download from the content library
// (transfer.Download), a copy from a cache, or a hard link to a cached file
// on the same volume (it is then moved into the tree, sharing the cache's
// data: keep both read-only). Materialize checks what it wrote, so a Fetch
// need not.
type Fetch func(ctx context.Context, sha256, dst string) error

// Materialize lays the tree t out under dir, a new or empty folder: every
// file at its path, with the bytes its manifest names. The manifest is
// checked first (Check), so its paths stay under dir. Each distinct blob is
// fetched once, into a staging folder inside dir, checked against its size
// and sha256, then moved to its path (further files with the same content
// are copied from the first); empty files are made without fetching. Files
// are placed through an os.Root of dir: nothing is written outside it. On
// error dir holds the files placed so far; the caller removes it.
func Materialize(ctx context.Context, t *osvcv1.PackageTree, dir string, fetch Fetch) error {
	if err := Check(t); err != nil {
		return err
	}
	if err := emptyDir(dir); err != nil {
		return fmt.Errorf("lay out package tree: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("lay out package tree: %w", err)
	}
	defer root.Close()
	staging := stagingName(t)
	if err := root.Mkdir(staging, 0o700); err != nil {
		return fmt.Errorf("lay out package tree: %w", err)
	}
	defer root.RemoveAll(staging)

	placed := map[string]string{} // sha256 → path of a file placed with it
	for i, f := range t.GetFiles() {
		if err := ctx.Err(); err != nil {
			return err
		}
		tmp := path.Join(staging, strconv.Itoa(i))
		if err := place(ctx, root, dir, tmp, f, placed, fetch); err != nil {
			return fmt.Errorf("lay out %s: %w", f.GetPath(), err)
		}
		placed[f.GetSha256()] = f.GetPath()
	}
	return nil
}

// place writes one file of the tree to tmp (a fetch, a copy of a file
// placed already, or nothing for an empty file), checks it and moves it to
// its path.
func place(ctx context.Context, root *os.Root, dir, tmp string, f *osvcv1.PackageFile, placed map[string]string, fetch Fetch) error {
	switch from, ok := placed[f.GetSha256()]; {
	case f.GetSizeBytes() == 0:
		if err := root.WriteFile(tmp, nil, 0o644); err != nil {
			return err
		}
	case ok:
		if err := copyWithin(ctx, root, from, tmp); err != nil {
			return err
		}
	default:
		if err := fetch(ctx, f.GetSha256(), filepath.Join(dir, filepath.FromSlash(tmp))); err != nil {
			return fmt.Errorf("fetch %s: %w", f.GetSha256(), err)
		}
	}
	if err := verify(ctx, root, tmp, f); err != nil {
		return err
	}
	if parent := path.Dir(f.GetPath()); parent != "." {
		if err := root.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	}
	return root.Rename(tmp, f.GetPath())
}

// verify checks that the file at name is f's content.
func verify(ctx context.Context, root *os.Root, name string, f *osvcv1.PackageFile) error {
	in, err := root.Open(name)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("the fetch left no regular file")
	}
	sum, n, err := hashReader(ctx, in)
	if err != nil {
		return err
	}
	if sum != f.GetSha256() || n != f.GetSizeBytes() {
		return fmt.Errorf("fetched %d bytes with sha256 %s; the manifest wants %d bytes with sha256 %s", n, sum, f.GetSizeBytes(), f.GetSha256())
	}
	return nil
}

// copyWithin copies the file from to the new file to, both under root.
func copyWithin(ctx context.Context, root *os.Root, from, to string) error {
	in, err := root.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := root.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, transfer.ContextReader(ctx, in)); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// stagingName is a folder name for Materialize's staging that no path of t
// starts with, on Windows either.
func stagingName(t *osvcv1.PackageTree) string {
	top := map[string]bool{}
	for _, f := range t.GetFiles() {
		first, _, _ := strings.Cut(f.GetPath(), "/")
		top[winpath.Key(first)] = true
	}
	name := ".osvc-partial"
	for n := 2; top[winpath.Key(name)]; n++ {
		name = ".osvc-partial-" + strconv.Itoa(n)
	}
	return name
}
