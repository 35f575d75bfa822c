package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// uploadBuffers is how many chunks an upload has read ahead of the one being
// sent: the file is read and hashed while the previous chunks go out.
const uploadBuffers = 4

// Upload stores the file at path in the content library in one pass: it
// sends the chunks as it reads and hashes them, then declares the sha256 in
// a trailer. The server stores the blob only if what it received has the
// size the header announced and hashes to the trailer's sha256, and the
// answer must name that sha256 too, so a blob damaged or cut short on the
// way is refused, never stored under the name of the file. The data is sent
// even when the library holds the blob already (UploadUnlessHeld asks
// first, at the price of reading the file twice).
func Upload(ctx context.Context, c osvcv1.ContentServiceClient, path, mediaType string, progress ProgressFunc) (*osvcv1.Content, error) {
	return upload(ctx, c, path, mediaType, "", progress)
}

// upload is Upload announcing the sha256 the file had, when known, in the
// header: a library on an object store then uploads the data straight to
// the blob's name instead of to a temporary one it copies afterwards.
func upload(ctx context.Context, c osvcv1.ContentServiceClient, path, mediaType, announced string, progress ProgressFunc) (*osvcv1.Content, error) {
	if progress == nil {
		progress = func(int64, int64) {}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("upload %s: %w", path, err)
	}
	size := info.Size()

	// Canceling on return ends a stream left open by an error.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Write(ctx)
	if err != nil {
		return nil, fmt.Errorf("upload %s: %w", path, err)
	}
	header := &osvcv1.WriteRequest{Part: &osvcv1.WriteRequest_Header{Header: &osvcv1.WriteHeader{Sha256: announced, SizeBytes: size, MediaType: mediaType}}}
	if err := stream.Send(header); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("upload %s: send header: %w", path, err)
	}

	// The reader hashes each chunk, then hands it over to be sent; chunks
	// come back through free once sent. Ending readCtx (on any return, or
	// when the server has answered) stops it; the stream keeps ctx, so that
	// the server's answer still arrives.
	readCtx, stopReading := context.WithCancel(ctx)
	finished := make(chan struct{})
	defer func() {
		stopReading()
		<-finished
	}()
	h := sha256.New()
	full, free := make(chan []byte, uploadBuffers), make(chan []byte, uploadBuffers)
	for range uploadBuffers {
		free <- make([]byte, ChunkSize)
	}
	readErr := make(chan error, 1)
	go func() {
		defer close(finished)
		defer close(full)
		r := ContextReader(readCtx, io.LimitReader(f, size))
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-readCtx.Done():
				readErr <- readCtx.Err()
				return
			}
			n, err := io.ReadFull(r, buf)
			if n > 0 {
				h.Write(buf[:n])
				select {
				case full <- buf[:n]:
				case <-readCtx.Done():
					readErr <- readCtx.Err()
					return
				}
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				readErr <- nil
				return
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()

	var done int64
	answered := false
	for buf := range full {
		if !answered {
			err := stream.Send(&osvcv1.WriteRequest{Part: &osvcv1.WriteRequest_Data{Data: buf}})
			switch {
			case errors.Is(err, io.EOF):
				// The server has answered already (it refused the upload):
				// CloseAndRecv tells why.
				answered = true
				stopReading()
			case err != nil:
				return nil, fmt.Errorf("upload %s: send at %d: %w", path, done, err)
			default:
				done += int64(len(buf))
				progress(done, size)
			}
		}
		free <- buf[:cap(buf)]
	}
	if err := <-readErr; err != nil && !answered {
		return nil, fmt.Errorf("upload %s: read at %d: %w", path, done, err)
	}
	if !answered {
		if done != size {
			return nil, fmt.Errorf("upload %s: the file has %d bytes, not the %d it had when the upload started: upload it again once nothing writes it", path, done, size)
		}
		sum := hex.EncodeToString(h.Sum(nil))
		trailer := &osvcv1.WriteRequest{Part: &osvcv1.WriteRequest_Trailer{Trailer: &osvcv1.WriteTrailer{Sha256: sum}}}
		if err := stream.Send(trailer); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("upload %s: send trailer: %w", path, err)
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return nil, fmt.Errorf("upload %s: %w", path, err)
		}
		// The server checks the trailer; this checks the server (or one that
		// ignores trailers), so a damaged upload never passes for the file.
		if got := resp.GetContent(); got.GetSha256() != sum || got.GetSizeBytes() != size {
			return nil, fmt.Errorf("upload %s: the server stored %q (%d bytes), but the file hashes to %s (%d bytes): the upload was damaged on the way; upload it again",
				path, got.GetSha256(), got.GetSizeBytes(), sum, size)
		}
		progress(size, size)
		return resp.GetContent(), nil
	}
	_, err = stream.CloseAndRecv()
	if err == nil {
		err = errors.New("the server ended the upload early without saying why")
	}
	return nil, fmt.Errorf("upload %s: %w", path, err)
}

// UploadUnlessHeld hashes the file first and asks the server for the blob: a
// blob the library holds costs one small call instead of a stream; any
// other is sent with Upload, its sha256 announced in the header (a file
// changed since it was hashed is refused). For files the library may hold
// already (an administrator importing an image again), at the price of
// reading the file twice when it does not.
func UploadUnlessHeld(ctx context.Context, c osvcv1.ContentServiceClient, path, mediaType string, progress ProgressFunc) (*osvcv1.Content, error) {
	sum, size, err := HashFile(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("upload %s: hash: %w", path, err)
	}
	got, err := c.GetContent(ctx, &osvcv1.GetContentRequest{Sha256: sum})
	switch err = errdefs.ToNative(err); {
	case err == nil:
		if progress != nil {
			progress(size, size)
		}
		return got.GetContent(), nil
	case errors.Is(err, errdefs.ErrNotFound):
		return upload(ctx, c, path, mediaType, sum, progress)
	default:
		return nil, fmt.Errorf("upload %s: ask the server for %s: %w", path, sum, err)
	}
}
