package content

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
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
// a file for Adopt; errdefs.ErrFailedPrecondition when the blobs are on an
// object store, where a file of this server cannot become a blob without
// being copied.
func (l *Library) LocateLibrary() (*LibraryLocation, error) {
	if l.files == nil {
		return nil, l.errNotFiles("a file cannot be adopted")
	}
	return &LibraryLocation{
		IncomingPath:  filepath.Join(l.dir, incomingDir),
		LibraryID:     l.id,
		LibraryIDPath: filepath.Join(l.dir, LibraryIDFile),
	}, nil
}

// ValidIncomingName reports whether name may name a file of the incoming
// folder: 32 lower-case hex digits, so never a path.
func ValidIncomingName(name string) bool {
	return len(name) == 32 && strings.Trim(name, "0123456789abcdef") == ""
}

// Adopt takes the file the incoming folder holds under name as the blob
// of its data: it hashes the file, syncs it and renames it into place, as
// Write stores received data; the data is not copied, unless the library
// stores a blob of its size as chunks: then the file is cut into them and
// removed. h.SizeBytes is
// required and must be the file's size; h.SHA256, when set, must be its
// digest. Only a file nothing else names is taken: a regular file (not a
// symbolic link, not a folder, the one checked being the one opened) with
// one link, the client having moved it in rather than linked it, so no
// path of the client's reaches the blob afterwards. A blob the library
// holds already is kept and the file removed. On a refusal the file is
// left where it is, for the client to take back. Only a library whose
// blobs are files of this server adopts (errdefs.ErrFailedPrecondition).
func (l *Library) Adopt(ctx context.Context, name string, h WriteHeader) (c *osvcv1.Content, existed bool, err error) {
	if l.files == nil {
		return nil, false, l.errNotFiles("a file cannot be adopted")
	}
	if !ValidIncomingName(name) {
		return nil, false, errdefs.InvalidArgument("name", fmt.Sprintf("%q is not a name of the incoming folder: want 32 lower-case hex digits", name))
	}
	if h.SizeBytes <= 0 {
		return nil, false, errdefs.InvalidArgument("size_bytes", "the file's size is required")
	}
	path := filepath.Join(l.dir, incomingDir, name)
	f, err := openRegular(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("content library: %w", err)
	}
	if n, ok := linkCount(info); !ok || n != 1 {
		return nil, false, errdefs.InvalidArgument("name", fmt.Sprintf(
			"the incoming %s has %d names: move the file into the incoming folder, do not link it", name, n))
	}
	if info.Size() != h.SizeBytes {
		return nil, false, errdefs.InvalidArgument("size_bytes", fmt.Sprintf("the incoming file %s has %d bytes, not %d", name, info.Size(), h.SizeBytes))
	}
	if c, err := l.begin(ctx, &h); err != nil || c != nil {
		if c != nil {
			os.Remove(path)
		}
		return c, c != nil, err
	}
	release, err := l.writes.Enter(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("content library: %w", err)
	}
	defer release()
	// A blob is never written: the mode says so to anyone but root.
	if err := f.Chmod(0o444); err != nil {
		return nil, false, fmt.Errorf("content library: %w", err)
	}
	sum, list, err := hashAndIndex(ctx, f, info.Size())
	if err != nil {
		return nil, false, fmt.Errorf("content library: hash the incoming file %s: %w", name, err)
	}
	staged := l.files.stageFile(f)
	defer staged.Discard()
	c, existed, err = l.finish(ctx, staged, info.Size(), sum, h, list)
	if existed || c.GetStoredAsChunks() {
		// The library holds the data elsewhere: the file is not the blob.
		os.Remove(path)
	}
	return c, existed, err
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
