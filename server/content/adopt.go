package content

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
	"strings"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/transfer"
)

// incomingDir is the folder under Dir where a client on the server's
// machine leaves a file for Adopt. Only the server's user (or root) may
// write it; its name cannot collide with the blob folders.
const incomingDir = "incoming"

// LibraryLocation tells a client on the server's machine where the library
// is (see Location).
type LibraryLocation struct {
	// IncomingPath is the folder Adopt takes files from.
	IncomingPath  string
	LibraryID     string
	LibraryIDPath string
}

// LocateLibrary tells where a client sharing the library's volume may leave
// a file for Adopt.
func (l *Library) LocateLibrary() *LibraryLocation {
	return &LibraryLocation{
		IncomingPath:  filepath.Join(l.dir, incomingDir),
		LibraryID:     l.id,
		LibraryIDPath: filepath.Join(l.dir, LibraryIDFile),
	}
}

// ValidIncomingName reports whether name may name a file of the incoming
// folder: 32 lower-case hex digits, so never a path.
func ValidIncomingName(name string) bool {
	return len(name) == 32 && strings.Trim(name, "0123456789abcdef") == ""
}

// Adopt stores the file the incoming folder holds under name as Write would
// store its data, and removes that file whatever the outcome. h.SizeBytes
// is required and must be the file's size; h.SHA256, when set, must be its
// digest. The library copies the file into a temp file of its own (the
// kernel copies; a clone where the file system can) and hashes that copy,
// so the blob is never the client's inode, and data changed by the client
// during the copy is never stored under another digest. Only a regular
// file is taken: a symbolic link, or a file replaced between the check and
// the open, is refused.
func (l *Library) Adopt(ctx context.Context, name string, h WriteHeader) (c *osvcv1.Content, existed bool, err error) {
	if !ValidIncomingName(name) {
		return nil, false, errdefs.InvalidArgument("name", fmt.Sprintf("%q is not a name of the incoming folder: want 32 lower-case hex digits", name))
	}
	path := filepath.Join(l.dir, incomingDir, name)
	defer os.Remove(path)
	if h.SizeBytes <= 0 {
		return nil, false, errdefs.InvalidArgument("size_bytes", "the file's size is required")
	}
	src, err := openRegular(path)
	if err != nil {
		return nil, false, err
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("content library: %w", err)
	}
	if info.Size() != h.SizeBytes {
		return nil, false, errdefs.InvalidArgument("size_bytes", fmt.Sprintf("the incoming file %s has %d bytes, not %d", name, info.Size(), h.SizeBytes))
	}
	return l.put(ctx, h, func(tmp *os.File) (int64, string, error) {
		// One byte more than announced is enough to tell the file grew.
		n, err := copyFile(ctx, tmp, src, h.SizeBytes+1)
		if err != nil {
			return 0, "", fmt.Errorf("content library: copy the incoming file %s: %w", name, err)
		}
		startWriteback(tmp, 0, n)
		sum, err := hashFile(ctx, tmp, n)
		if err != nil {
			return 0, "", fmt.Errorf("content library: hash the copy of %s: %w", name, err)
		}
		return n, sum, nil
	})
}

// openRegular opens path for reading when it is a regular file itself, not
// a symbolic link to one; the file opened is the one checked.
func openRegular(path string) (*os.File, error) {
	before, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errdefs.InvalidArgument("name", fmt.Sprintf("the incoming folder holds no %s: link the file there first", filepath.Base(path)))
	}
	if err != nil {
		return nil, fmt.Errorf("content library: %w", err)
	}
	if !before.Mode().IsRegular() {
		return nil, errdefs.InvalidArgument("name", fmt.Sprintf("the incoming %s is not a regular file (%s)", filepath.Base(path), before.Mode().Type()))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("content library: %w", err)
	}
	after, err := f.Stat()
	if err != nil || !os.SameFile(before, after) {
		f.Close()
		return nil, errdefs.InvalidArgument("name", fmt.Sprintf("the incoming %s changed while it was opened", filepath.Base(path)))
	}
	return f, nil
}

// copyFile copies at most limit bytes of src to dst; *os.File's ReadFrom
// sees through the LimitedReader and lets the kernel copy
// (copy_file_range). Ends with ctx between steps.
func copyFile(ctx context.Context, dst, src *os.File, limit int64) (int64, error) {
	const step = 64 << 20
	var n int64
	for n < limit {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, err := io.CopyN(dst, src, min(step, limit-n))
		n += m
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// hashFile hashes the first n bytes of f.
func hashFile(ctx context.Context, f *os.File, n int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, transfer.ContextReader(ctx, io.NewSectionReader(f, 0, n))); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
