package packagetree

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
)

// FromDir reads the folder tree under dir into a checked manifest, hashing
// every file. The tree holds files and folders only: a symbolic link or any
// other kind of file is refused, naming it (a link's target could be
// anywhere, and Windows' media have none). Empty folders are not kept.
// The manifest is checked once the folder is read (Check); only the count
// of files is checked while reading, so that hashing stops at the limit.
func FromDir(ctx context.Context, dir string) (*osvcv1.PackageTree, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("package tree %s: %w", dir, err)
	}
	t := &osvcv1.PackageTree{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		switch typ := d.Type(); {
		case d.IsDir():
			return nil
		case typ&fs.ModeSymlink != 0:
			return invalidf("%s is a symbolic link; a package tree holds files and folders only: put the file it points to in its place (cp -L)", rel)
		case !typ.IsRegular():
			return invalidf("%s is not a regular file (%s); a package tree holds files and folders only: remove it", rel, typ.Type())
		}
		if len(t.Files) == MaxFiles {
			return invalidf("the folder has more than %d files, the most a package tree has", MaxFiles)
		}
		sum, size, err := hashFile(ctx, path)
		if err != nil {
			return err
		}
		t.Files = append(t.Files, &osvcv1.PackageFile{Path: rel, Sha256: sum, SizeBytes: size})
		return nil
	})
	if errors.Is(err, ErrInvalid) {
		return nil, err // it names the file, relative to dir
	}
	if err != nil {
		return nil, fmt.Errorf("package tree %s: %w", dir, err)
	}
	Sort(t)
	if err := Check(t); err != nil {
		return nil, err
	}
	return t, nil
}

// LocalPath is where the file of the manifest read by FromDir(dir) is.
func LocalPath(dir string, f *osvcv1.PackageFile) string {
	return filepath.Join(dir, filepath.FromSlash(f.GetPath()))
}

// hashFile returns the sha256 and size of a regular file, read until ctx ends.
func hashFile(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return hashReader(ctx, f)
}

func hashReader(ctx context.Context, r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, transfer.ContextReader(ctx, r))
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// emptyDir makes dir when it does not exist and fails when it holds anything.
func emptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return fmt.Errorf("%s is not empty: give a new or empty folder", dir)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}
