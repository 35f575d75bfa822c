package packagetree

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/pkg/winpath"
)

// ExtractTar writes the files and folders of the tar file r, plain or
// compressed with gzip (.tar.gz, .tgz), into dir, a new or empty folder
// that FromDir then reads. Each entry is checked before it is written: its
// path as a manifest's (CleanPath; a leading "./" is dropped), once only,
// case ignored, and a file or a folder: a symbolic or hard link, a device,
// a pipe or any other type is refused, naming the entry and how to make
// the tar without it. At most MaxFiles files of at most MaxFileBytes,
// MaxTotalBytes in all. Everything is written through an os.Root of dir,
// so nothing lands outside it whatever the tar holds. On error dir holds
// what was written so far; the caller removes it.
func ExtractTar(ctx context.Context, r io.Reader, dir string) error {
	if err := emptyDir(dir); err != nil {
		return fmt.Errorf("extract tar: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("extract tar: %w", err)
	}
	defer root.Close()
	br := bufio.NewReader(transfer.ContextReader(ctx, r))
	var in io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return invalidf("read the tar's gzip compression: %v", err)
		}
		defer zr.Close()
		in = zr
	}
	x := &extraction{root: root, tr: tar.NewReader(in), isDir: map[string]bool{}}
	for {
		hdr, err := x.tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return invalidf("read the tar file: %v (a tar file, plain or gzip-compressed, is expected)", err)
		}
		if err := x.entry(hdr); err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
	}
	if x.files == 0 {
		return invalidf("the tar file holds no file")
	}
	return nil
}

// extraction is one ExtractTar under way.
type extraction struct {
	root  *os.Root
	tr    *tar.Reader
	isDir map[string]bool // Windows key of every path written → a folder?
	files int
	total int64
}

// entry checks and writes one entry of the tar.
func (x *extraction) entry(hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir:
	case tar.TypeXGlobalHeader:
		return nil // PAX defaults for the entries after it, read by tar.Reader
	case tar.TypeSymlink:
		return invalidf("a symbolic link (to %q); a package tree holds files and folders only: make the tar with the files links point to (tar --dereference)", hdr.Linkname)
	case tar.TypeLink:
		return invalidf("a hard link (to %q); a package tree holds files and folders only: make the tar with every file whole (tar --hard-dereference)", hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return invalidf("a device or a pipe; a package tree holds files and folders only: leave it out of the tar")
	default:
		return invalidf("of tar type %q, neither a file nor a folder; a package tree holds files and folders only: leave it out of the tar", hdr.Typeflag)
	}
	dir := hdr.Typeflag == tar.TypeDir
	p := hdr.Name
	for strings.HasPrefix(p, "./") {
		p = p[2:]
	}
	if dir {
		if p = strings.TrimSuffix(p, "/"); p == "" || p == "." {
			return nil // the tree's root
		}
	}
	if _, err := CleanPath(p); err != nil {
		return err
	}
	key := winpath.Key(p)
	for i := strings.IndexByte(key, '/'); i >= 0; i = next(key, i) {
		if isDir, seen := x.isDir[key[:i]]; seen && !isDir {
			return invalidf("its folder %s is a file of the tar", p[:i])
		}
	}
	if isDir, seen := x.isDir[key]; seen {
		if dir && isDir {
			return nil
		}
		return invalidf("the tar holds %s twice (or two paths that differ only in case, one on Windows)", p)
	}
	if dir {
		x.isDir[key] = true
		return x.root.MkdirAll(p, 0o755)
	}
	if x.files++; x.files > MaxFiles {
		return invalidf("the tar holds more than %d files, the most a package tree has", MaxFiles)
	}
	if x.total += hdr.Size; hdr.Size > MaxFileBytes || x.total > MaxTotalBytes {
		return invalidf("%d bytes: past the limits of a package tree (%d bytes a file, %d in all)", hdr.Size, int64(MaxFileBytes), int64(MaxTotalBytes))
	}
	x.isDir[key] = false
	for i := strings.IndexByte(key, '/'); i >= 0; i = next(key, i) {
		x.isDir[key[:i]] = true
	}
	if parent := path.Dir(p); parent != "." {
		if err := x.root.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	}
	f, err := x.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, x.tr, hdr.Size); err != nil {
		f.Close()
		return invalidf("read its data: %v", err)
	}
	return f.Close()
}
