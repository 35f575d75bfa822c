package content

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/transfer"
)

// dirStore keeps blobs as files of a directory of this server,
// <dir>/<first two hex digits>/<sha256>, and uploads in progress in
// <dir>/tmp, on the same file system, so that publishing is one atomic
// rename. Being files, its blobs can also be handed to a client on the
// same volume (Locate, Adopt) and to readers that need a path.
type dirStore struct {
	dir    string
	logger hclog.Logger
}

// newDirStore makes dir's temp and incoming folders when missing.
func newDirStore(dir string, logger hclog.Logger) (*dirStore, error) {
	if err := os.MkdirAll(filepath.Join(dir, tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("content library directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, incomingDir), 0o700); err != nil {
		return nil, fmt.Errorf("content library directory %s: %w", dir, err)
	}
	return &dirStore{dir: dir, logger: logger}, nil
}

// path is the blob's file; "" for a malformed sha256, so bad input never
// becomes a path.
func (d *dirStore) path(sha string) string {
	if !ValidSHA256(sha) {
		return ""
	}
	return filepath.Join(d.dir, sha[:2], sha)
}

func (d *dirStore) Shared() bool   { return false }
func (d *dirStore) String() string { return "directory " + d.dir }

// Stage writes r to a temp file and makes it durable.
func (d *dirStore) Stage(ctx context.Context, r io.Reader, _ string) (Staged, error) {
	tmp, err := os.CreateTemp(filepath.Join(d.dir, tmpDir), "upload-*")
	if err != nil {
		return nil, fmt.Errorf("content library: temp file: %w", err)
	}
	s := &fileStaged{f: tmp, d: d, remove: true}
	if err := receive(tmp, r); err != nil {
		s.Discard()
		return nil, fmt.Errorf("content library: receive data: %w", err)
	}
	return s, nil
}

// stageFile stages f, a file of the library's volume (see Adopt), as it
// is: published, f itself becomes the blob; discarded, f is left where it
// is.
func (d *dirStore) stageFile(f *os.File) Staged {
	return &fileStaged{f: f, d: d}
}

// fileStaged is a file of the library's volume about to become a blob.
type fileStaged struct {
	f *os.File
	d *dirStore
	// remove, on Discard, removes the file if it was not published.
	remove    bool
	published bool
}

// Publish syncs the file and renames it into place.
func (s *fileStaged) Publish(_ context.Context, sha string) error {
	final := s.d.path(sha)
	if final == "" {
		return errdefs.InvalidArgument("sha256", fmt.Sprintf("%q is not a sha256", sha))
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("content library: flush %s: %w", s.f.Name(), err)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return fmt.Errorf("content library: %w", err)
	}
	if err := os.Rename(s.f.Name(), final); err != nil {
		return fmt.Errorf("content library: move blob into place: %w", err)
	}
	s.published = true
	return nil
}

func (s *fileStaged) Discard() {
	s.f.Close()
	if s.remove && !s.published {
		os.Remove(s.f.Name())
	}
}

// Open opens the blob's file.
func (d *dirStore) Open(_ context.Context, sha string) (Blob, error) {
	path := d.path(sha)
	if path == "" {
		return nil, checkSHA256(sha)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("content %s: %w", sha, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("content %s: %w", sha, err)
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("content %s: %w", sha, err)
	}
	return &fileBlob{File: f, size: info.Size()}, nil
}

// fileBlob is a blob's open file.
type fileBlob struct {
	*os.File
	size int64
}

func (b *fileBlob) Size() int64 { return b.size }

func (b *fileBlob) Stream(off, n int64) (io.Reader, error) {
	return io.NewSectionReader(b.File, off, n), nil
}

func (d *dirStore) Stat(_ context.Context, sha string) (BlobInfo, error) {
	path := d.path(sha)
	if path == "" {
		return BlobInfo{}, checkSHA256(sha)
	}
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return BlobInfo{}, fmt.Errorf("content %s: %w", sha, errdefs.ErrNotFound)
	}
	if err != nil {
		return BlobInfo{}, fmt.Errorf("content %s: %w", sha, err)
	}
	return BlobInfo{SHA256: sha, SizeBytes: info.Size(), ModTime: info.ModTime()}, nil
}

func (d *dirStore) Touch(_ context.Context, sha string) error {
	path := d.path(sha)
	if path == "" {
		return checkSHA256(sha)
	}
	now := time.Now()
	err := os.Chtimes(path, now, now)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("content %s: %w", sha, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("content %s: %w", sha, err)
	}
	return nil
}

func (d *dirStore) Delete(_ context.Context, sha string) error {
	path := d.path(sha)
	if path == "" {
		return checkSHA256(sha)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove blob %s: %w", sha, err)
	}
	return nil
}

// List walks the blob folders; a file not named by its sha256 in the
// folder of its first two hex digits is no blob.
func (d *dirStore) List(ctx context.Context, fn func(BlobInfo) error) error {
	folders, err := os.ReadDir(d.dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", d.dir, err)
	}
	for _, folder := range folders {
		name := folder.Name()
		if !folder.IsDir() || len(name) != 2 {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(d.dir, name))
		if err != nil {
			return fmt.Errorf("list %s: %w", d.dir, err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			sha := e.Name()
			if !ValidSHA256(sha) || sha[:2] != name || !e.Type().IsRegular() {
				continue
			}
			info, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("list %s: %w", d.dir, err)
			}
			if err := fn(BlobInfo{SHA256: sha, SizeBytes: info.Size(), ModTime: info.ModTime()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// RemoveStale removes uploads, and files left for Adopt, that a crash
// left behind.
func (d *dirStore) RemoveStale(_ context.Context, age time.Duration) int {
	return removeStaleFiles(d.logger, age, filepath.Join(d.dir, tmpDir), filepath.Join(d.dir, incomingDir))
}

// removeStaleFiles removes the files of dirs older than age.
func removeStaleFiles(logger hclog.Logger, age time.Duration, dirs ...string) int {
	removed := 0
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			info, err := e.Info()
			if err != nil || time.Since(info.ModTime()) < age {
				continue
			}
			path := filepath.Join(dir, e.Name())
			if err := os.Remove(path); err == nil {
				logger.Info("removed a stale upload", "path", path)
				removed++
			}
		}
	}
	return removed
}

// receive copies r into f and asks the kernel to write each stretch of
// writebackEvery bytes to disk as soon as it is in f: the sync that makes
// the blob durable then waits for the last stretch only, instead of for
// the whole upload after it has arrived.
func receive(f *os.File, r io.Reader) error {
	buf := make([]byte, transfer.ChunkSize)
	var n, flushed int64
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			if _, err := f.Write(buf[:m]); err != nil {
				return err
			}
			n += int64(m)
			if n-flushed >= writebackEvery {
				startWriteback(f, flushed, n-flushed)
				flushed = n
			}
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
