package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// errNotLocal means the library's file cannot be taken from this machine:
// the blob is downloaded instead.
var errNotLocal = errors.New("the content library's folder is not visible from here")

// copyStep is how much of a local copy is made between checks of ctx.
const copyStep = 64 << 20

// fetchLocal takes the blob from the library's file when the library tells
// where it is and this machine sees that very library there: the file at
// the LibraryIdPath it names holds its LibraryId. errNotLocal, before
// anything is written, when not; any other error once dst's partial file
// was started (it is removed). The file is hashed all the same: a library
// file damaged on disk is refused, as a download of it would be.
func (c *Client) fetchLocal(ctx context.Context, sum, dst string, use Use, progress ProgressFunc) (Source, error) {
	loc, err := c.content.Locate(ctx, &osvcv1.LocateRequest{Sha256: sum})
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("fetch %s: %w", sum, context.Cause(ctx))
		}
		return 0, fmt.Errorf("%w: locate %s: %w", errNotLocal, sum, err)
	}
	path := loc.GetPath()
	// Only a blob's file is ever taken, never another file a server names.
	if !filepath.IsAbs(path) || filepath.Base(path) != sum {
		return 0, fmt.Errorf("%w: the server locates %s at %q", errNotLocal, sum, path)
	}
	id, err := os.ReadFile(loc.GetLibraryIdPath())
	if err != nil || loc.GetLibraryId() == "" || strings.TrimSpace(string(id)) != loc.GetLibraryId() {
		return 0, fmt.Errorf("%w: %s does not identify the server's library (%v)", errNotLocal, loc.GetLibraryIdPath(), err)
	}
	src, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errNotLocal, err)
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil || !info.Mode().IsRegular() || info.Size() != loc.GetSizeBytes() {
		return 0, fmt.Errorf("%w: %s is not the blob's file of %d bytes (%v)", errNotLocal, path, loc.GetSizeBytes(), err)
	}

	partial := dst + PartialSuffix
	if err := os.Remove(partial); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("fetch %s: %w", sum, err)
	}
	how, got, err := takeLocal(ctx, src, info.Size(), partial, use, progress)
	if err == nil && got != sum {
		err = fmt.Errorf("the content library's file %s hashes to %s: it is damaged on disk: %w", path, got, ErrHashMismatch)
	}
	if err == nil {
		err = os.Rename(partial, dst)
	}
	if err != nil {
		os.Remove(partial)
		return 0, fmt.Errorf("fetch %s: %w", sum, err)
	}
	return how, nil
}

// takeLocal links (ReadOnly) or copies src to partial and hashes src.
func takeLocal(ctx context.Context, src *os.File, size int64, partial string, use Use, progress ProgressFunc) (Source, string, error) {
	// A hard link shares the blob's inode: only for files nobody writes.
	if use == ReadOnly {
		if err := os.Link(src.Name(), partial); err == nil {
			sum, err := hashSection(ctx, src, size, progress)
			return Linked, sum, err
		}
		// Another volume, or a file system without hard links: copy.
	}
	out, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, "", err
	}
	// The kernel copies (copy_file_range, a clone where the file system can)
	// while this goroutine hashes: the two passes overlap.
	copied := make(chan error, 1)
	go func() {
		copied <- copyFile(ctx, out, src, size)
	}()
	sum, hashErr := hashSection(ctx, src, size, progress)
	copyErr := <-copied
	if err := out.Close(); copyErr == nil {
		copyErr = err
	}
	if err := errors.Join(hashErr, copyErr); err != nil {
		return 0, "", err
	}
	return Copied, sum, nil
}

// copyFile copies size bytes of src, from its offset (nothing else moves
// it: hashSection reads at offsets), to out in steps, stopping when ctx ends.
// *os.File's ReadFrom sees through CopyN's LimitedReader to the file and
// uses copy_file_range.
func copyFile(ctx context.Context, out, src *os.File, size int64) error {
	var done int64
	for done < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.CopyN(out, src, min(copyStep, size-done))
		done += n
		if err != nil {
			return fmt.Errorf("copy at %d of %d: %w", done, size, err)
		}
	}
	return nil
}

// hashSection hashes size bytes of f from its start, without moving its
// offset, telling progress as it goes.
func hashSection(ctx context.Context, f *os.File, size int64, progress ProgressFunc) (string, error) {
	h := sha256.New()
	buf := make([]byte, ChunkSize)
	r := io.NewSectionReader(f, 0, size)
	var done int64
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := r.Read(buf)
		h.Write(buf[:n])
		done += int64(n)
		if n > 0 {
			progress(done, size)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", err
		}
	}
	if done != size {
		return "", fmt.Errorf("read %d of %d bytes: %w", done, size, io.ErrUnexpectedEOF)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
