package transfer

import (
	"context"
	"crypto/rand"
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
	if err := seesLibrary(loc.GetLibraryIdPath(), loc.GetLibraryId()); err != nil {
		return 0, err
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

// seesLibrary returns nil when the file at idPath holds id: this machine
// sees the server's library there, not another folder of the same name.
func seesLibrary(idPath, id string) error {
	got, err := os.ReadFile(idPath)
	if err != nil || id == "" || strings.TrimSpace(string(got)) != id {
		return fmt.Errorf("%w: %s does not identify the server's library (%v)", errNotLocal, idPath, err)
	}
	return nil
}

// storeLocal moves the file at path into the library's incoming folder
// and asks the server to Adopt it, hashing the file meanwhile to check the
// answer. errNotLocal, with the file back at path, when the library is not
// visible from here, or the move or the adoption fails for a reason the
// stream upload may not have: the caller uploads over the connection then.
func (c *Client) storeLocal(ctx context.Context, path, mediaType string, progress ProgressFunc) (*osvcv1.Content, error) {
	loc, err := c.content.LocateLibrary(ctx, &osvcv1.LocateLibraryRequest{})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("store %s: %w", path, context.Cause(ctx))
		}
		return nil, fmt.Errorf("%w: locate the library: %w", errNotLocal, err)
	}
	if !filepath.IsAbs(loc.GetIncomingPath()) {
		return nil, fmt.Errorf("%w: the server's incoming folder is %q", errNotLocal, loc.GetIncomingPath())
	}
	if err := seesLibrary(loc.GetLibraryIdPath(), loc.GetLibraryId()); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	if !info.Mode().IsRegular() || info.Size() == 0 {
		return nil, fmt.Errorf("%w: %s is not a regular file with data", errNotLocal, path)
	}
	name := make([]byte, 16)
	rand.Read(name)
	moved := filepath.Join(loc.GetIncomingPath(), hex.EncodeToString(name))
	if err := os.Rename(path, moved); err != nil {
		// Another volume, another user's folder: send it over the connection.
		return nil, fmt.Errorf("%w: %w", errNotLocal, err)
	}

	hashed := make(chan error, 1)
	var sum string
	go func() {
		var err error
		sum, err = hashSection(ctx, f, info.Size(), func(int64, int64) {})
		hashed <- err
	}()
	resp, err := c.content.Adopt(ctx, &osvcv1.AdoptRequest{
		Name: filepath.Base(moved), SizeBytes: info.Size(), MediaType: mediaType,
	})
	herr := <-hashed
	if err != nil {
		// Refused, the file stays in the incoming folder: take it back.
		if rerr := os.Rename(moved, path); rerr != nil {
			return nil, fmt.Errorf("store %s: the server did not adopt it (%w), and taking it back failed: %w", path, err, rerr)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("store %s: %w", path, context.Cause(ctx))
		}
		return nil, fmt.Errorf("%w: adopt: %w", errNotLocal, err)
	}
	if herr != nil {
		return nil, fmt.Errorf("store %s: hash: %w", path, herr)
	}
	if got := resp.GetContent(); got.GetSha256() != sum || got.GetSizeBytes() != info.Size() {
		return nil, fmt.Errorf("store %s: the server stored %q (%d bytes), but the file hashed to %s (%d bytes): the file changed while it was stored; store it again once nothing writes it",
			path, got.GetSha256(), got.GetSizeBytes(), sum, info.Size())
	}
	progress(info.Size(), info.Size())
	return resp.GetContent(), nil
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
		copied <- copyFile(ctx, out, src, size, nil)
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
func copyFile(ctx context.Context, out, src *os.File, size int64, progress ProgressFunc) error {
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
		if progress != nil {
			progress(done, size)
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

// CopyLocal makes dst a copy of the verified file src, for use, without
// hashing it again: for ReadOnly a hard link where the volume allows (the
// caller then never writes dst: src changes with it), else a copy of its
// own, which the kernel makes (copy_file_range, a clone where the file
// system can). dst appears whole or not at all: it is written as
// dst+PartialSuffix and renamed.
func CopyLocal(ctx context.Context, src, dst string, use Use) (Source, error) {
	return CopyLocalProgress(ctx, src, dst, use, nil)
}

// CopyLocalProgress is CopyLocal telling progress, when not nil, how a copy
// goes (a link is done at once).
func CopyLocalProgress(ctx context.Context, src, dst string, use Use, progress ProgressFunc) (Source, error) {
	partial := dst + PartialSuffix
	if err := os.Remove(partial); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	how := Linked
	err := errors.New("not linked")
	if use == ReadOnly {
		err = os.Link(src, partial)
	}
	if err != nil {
		how = Copied
		err = copyLocal(ctx, src, partial, progress)
	}
	if err == nil {
		err = os.Rename(partial, dst)
	}
	if err != nil {
		os.Remove(partial)
		return 0, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return how, nil
}

// copyLocal copies the file src to a new file dst, telling progress (when
// not nil) how it goes.
func copyLocal(ctx context.Context, src, dst string, progress ProgressFunc) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = copyFile(ctx, out, in, info.Size(), progress)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
