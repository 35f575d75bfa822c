// Package transfer moves blobs to and from the server's content library:
// uploads hashed while they stream and checked by the server before the blob
// is stored, resumable, verified downloads, and, for a client on the
// library's own machine, files taken from the library's volume.
package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// ChunkSize is the size of the data chunks sent in each message.
const ChunkSize = 1 << 20

// PartialSuffix is appended to a download's destination while it is in progress.
const PartialSuffix = ".partial"

const (
	// maxMessageBytes leaves room above a chunk and never lowers gRPC's default
	// 4 MiB, since the options apply to every call on the connection.
	maxMessageBytes = 16 << 20
	// The flow-control windows hold several chunks in flight, so a link with
	// latency stays busy instead of waiting for window updates per chunk.
	streamWindowBytes = 8 << 20
	connWindowBytes   = 16 << 20
	// Socket buffers of a quarter chunk cut system calls per chunk.
	socketBufferBytes = 256 << 10
)

// ProgressFunc is told how many bytes of total are done; total is 0 when unknown.
type ProgressFunc func(done, total int64)

// ErrHashMismatch means downloaded bytes do not hash to the sha256 asked for.
var ErrHashMismatch = errors.New("sha256 mismatch")

// DialOptions are the client options for moving content: larger flow-control
// windows and message sizes fitting 1 MiB chunks.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(streamWindowBytes),
		grpc.WithInitialConnWindowSize(connWindowBytes),
		grpc.WithReadBufferSize(socketBufferBytes),
		grpc.WithWriteBufferSize(socketBufferBytes),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessageBytes),
			grpc.MaxCallSendMsgSize(maxMessageBytes),
		),
	}
}

// ServerOptions are the matching server options. gRPC's read buffer is
// off: a server would hold one per connection, most of its memory with
// thousands of agents connected, and TLS buffers a whole record anyway.
// The write buffer is shared between connections while idle.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(streamWindowBytes),
		grpc.InitialConnWindowSize(connWindowBytes),
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(socketBufferBytes),
		grpc.MaxRecvMsgSize(maxMessageBytes),
		grpc.MaxSendMsgSize(maxMessageBytes),
	}
}

// HashFile returns the sha256 (lower-case hex) and size of the file at path;
// it stops when ctx ends, since hashing gigabytes takes a while.
func HashFile(ctx context.Context, path string) (sum string, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return hashFile(ctx, f)
}

// hashFile returns the sha256 and size of f read from its start.
func hashFile(ctx context.Context, f *os.File) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, &ctxReader{ctx: ctx, r: f})
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Download fetches sha256 into dst: it writes dst+".partial", resumes from its
// size after an interruption, verifies the sha256 and renames into place. A hash
// mismatch removes the partial file; when the bad bytes came from an earlier,
// resumed attempt, the download starts again from zero once. dst is not
// synced to disk: the agent's copies are scratch made again after a crash,
// and its cache syncs a file itself, in the background, before it keeps
// beside the file the stamp that spares it a new hash after a restart.
func Download(ctx context.Context, c osvcv1.ContentServiceClient, sha256, dst string, progress ProgressFunc) error {
	if !ValidSHA256(sha256) {
		return fmt.Errorf("download %q: not a sha256 (want 64 lower-case hex digits)", sha256)
	}
	if progress == nil {
		progress = func(int64, int64) {}
	}
	resumed, err := download(ctx, c, sha256, dst, progress)
	if errors.Is(err, ErrHashMismatch) && resumed {
		// The bytes kept from before were wrong (the partial file was damaged or
		// belonged to something else): they are gone now, fetch everything.
		_, err = download(ctx, c, sha256, dst, progress)
	}
	return err
}

// download makes one attempt; resumed reports whether it kept bytes of a
// partial file.
func download(ctx context.Context, c osvcv1.ContentServiceClient, sum, dst string, progress ProgressFunc) (resumed bool, err error) {
	// Canceling on return ends a Read stream left undrained by an error.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	partial := dst + PartialSuffix
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return false, fmt.Errorf("download %s: %w", sum, err)
	}
	closed := false
	defer func() {
		if closed {
			return
		}
		// An attempt that got nothing leaves no empty partial file behind.
		if info, serr := f.Stat(); serr == nil && info.Size() == 0 && err != nil {
			f.Close()
			os.Remove(partial)
			return
		}
		f.Close()
	}()

	// Hash what an earlier attempt kept, then continue after it.
	h := sha256.New()
	offset, err := io.Copy(h, &ctxReader{ctx: ctx, r: f})
	if err != nil {
		return false, fmt.Errorf("download %s: read %s: %w", sum, partial, err)
	}
	stream, err := openRead(ctx, c, sum, offset)
	if errors.Is(errdefs.ToNative(err), errdefs.ErrOutOfRange) {
		// The partial file is longer than the blob: it cannot be a prefix of it.
		if err := restart(f, h); err != nil {
			return false, fmt.Errorf("download %s: %w", sum, err)
		}
		offset = 0
		stream, err = openRead(ctx, c, sum, 0)
	}
	if err != nil {
		return false, fmt.Errorf("download %s: %w", sum, err)
	}
	resumed = offset > 0

	total, err := receive(ctx, stream, f, h, offset, progress)
	if err != nil {
		// Keep what arrived: the next attempt resumes after it.
		return resumed, fmt.Errorf("download %s: %w", sum, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		f.Close()
		closed = true
		os.Remove(partial)
		return resumed, fmt.Errorf("download %s: the data hashes to %s (%d bytes); the partial file was removed: %w",
			sum, got, total, ErrHashMismatch)
	}
	closed = true
	if err := f.Close(); err != nil {
		return resumed, fmt.Errorf("download %s: close %s: %w", sum, partial, err)
	}
	if err := os.Rename(partial, dst); err != nil {
		return resumed, fmt.Errorf("download %s: %w", sum, err)
	}
	return resumed, nil
}

// openRead starts a Read and waits for its first message, so errors like
// OutOfRange and NotFound surface here.
func openRead(ctx context.Context, c osvcv1.ContentServiceClient, sum string, offset int64) (*readStream, error) {
	s, err := c.Read(ctx, &osvcv1.ReadRequest{Sha256: sum, Offset: offset})
	if err != nil {
		return nil, err
	}
	first, err := s.Recv()
	if err != nil {
		return nil, err
	}
	return &readStream{stream: s, first: first}, nil
}

type readStream struct {
	stream grpc.ServerStreamingClient[osvcv1.ReadResponse]
	first  *osvcv1.ReadResponse
}

func (r *readStream) Recv() (*osvcv1.ReadResponse, error) {
	if m := r.first; m != nil {
		r.first = nil
		return m, nil
	}
	return r.stream.Recv()
}

// receive appends the stream's data to f at offset until the end of the
// blob, and h hashes it in a goroutine of its own, a few chunks behind, so
// hashing overlaps receiving; it returns the blob's size.
func receive(ctx context.Context, stream *readStream, f *os.File, h hash.Hash, offset int64, progress ProgressFunc) (int64, error) {
	// Each message's data is its own slice (unmarshaling allocates it), so
	// the hasher can take it as it is.
	toHash := make(chan []byte, 8)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for data := range toHash {
			h.Write(data)
		}
	}()
	total, err := receiveInto(ctx, stream, f, toHash, offset, progress)
	close(toHash)
	<-hashed
	return total, err
}

// receiveInto is receive's loop: it writes each chunk and passes it on to be hashed.
func receiveInto(ctx context.Context, stream *readStream, f *os.File, toHash chan<- []byte, offset int64, progress ProgressFunc) (int64, error) {
	var total int64
	for first := true; ; first = false {
		// Chunks already buffered would still arrive after ctx ends: stop here.
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("receive at %d: %w", offset, err)
		}
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("receive at %d: %w", offset, err)
		}
		if first {
			total = resp.GetSizeBytes()
		}
		if resp.GetOffset() != offset {
			return 0, fmt.Errorf("the server sent offset %d, expected %d", resp.GetOffset(), offset)
		}
		data := resp.GetData()
		if _, err := f.WriteAt(data, offset); err != nil {
			return 0, fmt.Errorf("write at %d: %w", offset, err)
		}
		toHash <- data
		offset += int64(len(data))
		progress(offset, total)
	}
	if offset != total {
		return 0, fmt.Errorf("the stream ended at %d of %d bytes", offset, total)
	}
	return total, nil
}

// restart empties the partial file and the hash.
func restart(f *os.File, h hash.Hash) error {
	h.Reset()
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("empty %s: %w", f.Name(), err)
	}
	return nil
}

// ValidSHA256 tells whether s is a content address: 64 lower-case hex digits.
func ValidSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ContextReader reads r until ctx ends: a long local read (hashing
// gigabytes) or a stalled upload stops with ctx's error.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return &ctxReader{ctx: ctx, r: r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
