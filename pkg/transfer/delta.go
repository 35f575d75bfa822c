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
	"github.com/osvc/osvc/pkg/chunks"
	"github.com/osvc/osvc/pkg/errdefs"
)

// maxReadRanges is the most ranges one Read may list (the server's limit).
const maxReadRanges = 4096

// ErrChunkMismatch means a chunk's data does not hash to the digest the
// chunk index gives it: the chunk is refused, nothing of it written.
var ErrChunkMismatch = errors.New("chunk sha256 mismatch")

// LocalBlob is a verified file the client holds, with the chunks it is cut
// into (chunks.Of): where a delta download looks for the chunks of the blob
// it fetches.
type LocalBlob struct {
	Path   string
	Chunks []chunks.Chunk
}

// Delta says what a delta download did.
type Delta struct {
	// Chunks is the index of the blob fetched; nil when it was fetched
	// whole (too small to have an index, or taken from the library's
	// volume).
	Chunks []chunks.Chunk
	// Local are the bytes copied from the client's own files, Downloaded
	// those read from the server, Resumed those an interrupted attempt had
	// kept.
	Local, Downloaded, Resumed int64
}

// GetChunkIndex reads the chunk index of the blob sum and checks it: it
// must describe that blob, be cut as this client cuts (chunks.SameChunking)
// and pass chunks.Check; a page past the count it announced stops the read.
func GetChunkIndex(ctx context.Context, c osvcv1.ContentServiceClient, sum string) ([]chunks.Chunk, int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.GetChunkIndex(ctx, &osvcv1.GetChunkIndexRequest{Sha256: sum})
	if err != nil {
		return nil, 0, err
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, 0, err
	}
	size, count := first.GetSizeBytes(), first.GetChunkCount()
	switch {
	case first.GetSha256() != sum:
		return nil, 0, fmt.Errorf("the server sent the chunk index of %q, not of %s", first.GetSha256(), sum)
	case !chunks.SameChunking(first.GetChunking()):
		return nil, 0, fmt.Errorf("chunk index of %s: cut with %v, not as this client cuts (%v)", sum, first.GetChunking(), chunks.Chunking())
	case count < 1 || count > chunks.MaxChunks || count > size/chunks.MinSize+1:
		return nil, 0, fmt.Errorf("chunk index of %s: %d chunks for %d bytes; a blob of that size has 1 to %d", sum, count, size, min(size/chunks.MinSize+1, chunks.MaxChunks))
	}
	list := make([]chunks.Chunk, 0, count)
	for page := first; ; {
		got, err := chunks.FromProto(page.GetChunks())
		if err != nil {
			return nil, 0, fmt.Errorf("chunk index of %s: %w", sum, err)
		}
		if int64(len(list)+len(got)) > count {
			return nil, 0, fmt.Errorf("chunk index of %s: more chunks than the %d it announced", sum, count)
		}
		list = append(list, got...)
		if page, err = stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, 0, fmt.Errorf("chunk index of %s: %w", sum, err)
		}
	}
	if int64(len(list)) != count {
		return nil, 0, fmt.Errorf("chunk index of %s: %d chunks, not the %d it announced", sum, len(list), count)
	}
	if err := chunks.Check(list, size); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", sum, err)
	}
	return list, size, nil
}

// DownloadDelta is Download for a client that holds files sharing chunks
// with the blob (an earlier version of an image): it reads the blob's chunk
// index, copies the chunks found in have from there, each checked against
// its digest, and reads only the others from the server, in one Read of
// their ranges. Every chunk is checked before it is written, in order, to
// dst+".partial", and the whole file against sum before it is renamed to
// dst. An interrupted download resumes after the last whole chunk written,
// so at most one chunk is sent again. A blob too small to have an index is
// downloaded whole.
func DownloadDelta(ctx context.Context, c osvcv1.ContentServiceClient, sum, dst string, have []LocalBlob, progress ProgressFunc) (Delta, error) {
	if !ValidSHA256(sum) {
		return Delta{}, fmt.Errorf("download %q: not a sha256 (want 64 lower-case hex digits)", sum)
	}
	if progress == nil {
		progress = func(int64, int64) {}
	}
	list, size, err := GetChunkIndex(ctx, c, sum)
	switch native := errdefs.ToNative(err); {
	case errors.Is(native, errdefs.ErrFailedPrecondition), errors.Is(native, errdefs.ErrUnimplemented):
		// Too small to be cut, or a server without chunk indexes.
		return Delta{}, Download(ctx, c, sum, dst, progress)
	case err != nil:
		return Delta{}, fmt.Errorf("download %s: %w", sum, err)
	}
	d := &deltaDownload{c: c, sum: sum, dst: dst, list: list, size: size, progress: progress}
	d.index(have)
	resumed, err := d.attempt(ctx)
	if errors.Is(err, ErrHashMismatch) && resumed {
		// The bytes kept from before were wrong: they are gone now.
		d.stats = Delta{}
		_, err = d.attempt(ctx)
	}
	d.stats.Chunks = list
	return d.stats, err
}

// deltaDownload is one delta download.
type deltaDownload struct {
	c        osvcv1.ContentServiceClient
	sum, dst string
	list     []chunks.Chunk
	size     int64
	progress ProgressFunc
	// local is where each digest is found among the client's files.
	local map[[chunks.DigestSize]byte]localChunk
	stats Delta
}

// localChunk is a chunk of one of the client's files.
type localChunk struct {
	path   string
	offset int64
}

// index records where the chunks of have are.
func (d *deltaDownload) index(have []LocalBlob) {
	d.local = make(map[[chunks.DigestSize]byte]localChunk)
	for _, b := range have {
		offsets, _ := chunks.Locate(b.Chunks)
		for i, c := range b.Chunks {
			if _, ok := d.local[c.Digest]; !ok {
				d.local[c.Digest] = localChunk{path: b.Path, offset: offsets[i]}
			}
		}
	}
}

// attempt makes one attempt; resumed reports whether it kept chunks of a
// partial file.
func (d *deltaDownload) attempt(ctx context.Context) (resumed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	partial := d.dst + PartialSuffix
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return false, fmt.Errorf("download %s: %w", d.sum, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("download %s: %w", d.sum, err)
	}
	// Keep the whole chunks an earlier attempt wrote, nothing after them.
	offsets, _ := chunks.Locate(d.list)
	next := 0
	for next < len(d.list) && offsets[next]+d.list[next].Size <= info.Size() {
		next++
	}
	kept := d.size
	if next < len(d.list) {
		kept = offsets[next]
	}
	if err := f.Truncate(kept); err != nil {
		return false, fmt.Errorf("download %s: %w", d.sum, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, ContextReader(ctx, io.NewSectionReader(f, 0, kept))); err != nil {
		return false, fmt.Errorf("download %s: read %s: %w", d.sum, partial, err)
	}
	d.stats.Resumed = kept
	resumed = kept > 0

	remote := d.plan(next, offsets)
	defer remote.close()
	w := newChunkWriter(f, h)
	err = d.assemble(ctx, next, offsets, kept, remote, w)
	if werr := w.close(); err == nil {
		err = werr
	}
	if err != nil {
		// Keep the chunks written: the next attempt resumes after them.
		return resumed, fmt.Errorf("download %s: %w", d.sum, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.sum {
		f.Close()
		os.Remove(partial)
		return resumed, fmt.Errorf("download %s: the chunks assembled hash to %s; the partial file was removed: %w", d.sum, got, ErrHashMismatch)
	}
	if err := f.Close(); err != nil {
		return resumed, fmt.Errorf("download %s: close %s: %w", d.sum, partial, err)
	}
	if err := os.Rename(partial, d.dst); err != nil {
		return resumed, fmt.Errorf("download %s: %w", d.sum, err)
	}
	return resumed, nil
}

// plan lists the ranges of the chunks from next on that the client lacks,
// adjacent ones merged.
func (d *deltaDownload) plan(next int, offsets []int64) *rangeReader {
	var ranges []*osvcv1.ByteRange
	for i := next; i < len(d.list); i++ {
		if _, ok := d.local[d.list[i].Digest]; ok {
			continue
		}
		if n := len(ranges); n > 0 && ranges[n-1].Offset+ranges[n-1].Length == offsets[i] {
			ranges[n-1].Length += d.list[i].Size
			continue
		}
		ranges = append(ranges, &osvcv1.ByteRange{Offset: offsets[i], Length: d.list[i].Size})
	}
	return &rangeReader{c: d.c, sum: d.sum, ranges: ranges}
}

// assemble writes the chunks from next on, in order, each from the
// client's files or from remote, checked against its digest first.
func (d *deltaDownload) assemble(ctx context.Context, next int, offsets []int64, done int64, remote *rangeReader, w *chunkWriter) error {
	for i := next; i < len(d.list); i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, off := d.list[i], offsets[i]
		buf := w.buffer()[:c.Size]
		if src, ok := d.local[c.Digest]; ok {
			if !d.readLocal(src, buf, c) {
				// The file changed since it was cut: ask the server for
				// this chunk alone.
				if err := readRange(ctx, d.c, d.sum, off, buf); err != nil {
					return fmt.Errorf("chunk %d at %d: %w", i, off, err)
				}
				d.stats.Downloaded += c.Size
			} else {
				d.stats.Local += c.Size
			}
		} else {
			if err := remote.read(ctx, off, buf); err != nil {
				return fmt.Errorf("chunk %d at %d: %w", i, off, err)
			}
			d.stats.Downloaded += c.Size
		}
		if !chunks.Verify(c, buf) {
			got := sha256.Sum256(buf)
			return fmt.Errorf("chunk %d (%d bytes at %d) hashes to %x, not %x as the chunk index says: refused: %w",
				i, c.Size, off, got, c.Digest, ErrChunkMismatch)
		}
		w.write(buf, off)
		done += c.Size
		d.progress(done, d.size)
	}
	return nil
}

// readLocal reads the chunk c from src into buf and tells whether it is
// the chunk.
func (d *deltaDownload) readLocal(src localChunk, buf []byte, c chunks.Chunk) bool {
	f, err := os.Open(src.path)
	if err != nil {
		return false
	}
	defer f.Close()
	if _, err := f.ReadAt(buf, src.offset); err != nil {
		return false
	}
	return chunks.Verify(c, buf)
}

// readRange reads len(buf) bytes of the blob sum at off with a Read of its own.
func readRange(ctx context.Context, c osvcv1.ContentServiceClient, sum string, off int64, buf []byte) error {
	r := &rangeReader{c: c, sum: sum, ranges: []*osvcv1.ByteRange{{Offset: off, Length: int64(len(buf))}}}
	defer r.close()
	return r.read(ctx, off, buf)
}

// rangeReader reads the planned ranges of a blob in order, maxReadRanges
// at a time per Read, checking that every message is where it belongs.
type rangeReader struct {
	c      osvcv1.ContentServiceClient
	sum    string
	ranges []*osvcv1.ByteRange
	// batch is how many of ranges the open stream reads.
	batch  int
	stream grpc.ServerStreamingClient[osvcv1.ReadResponse]
	cancel context.CancelFunc
	// pos is the offset of the next byte expected, left the bytes of the
	// current range still to come, data what the last message brought
	// that was not read yet.
	pos  int64
	left int64
	data []byte
}

// read fills buf with the bytes at off, which must be the next ones planned.
func (r *rangeReader) read(ctx context.Context, off int64, buf []byte) error {
	if r.left == 0 && len(r.data) == 0 {
		if err := r.nextRange(ctx); err != nil {
			return err
		}
	}
	if off != r.pos {
		return fmt.Errorf("asked for the bytes at %d, the next planned are at %d", off, r.pos)
	}
	for len(buf) > 0 {
		if len(r.data) == 0 {
			if err := r.recv(ctx); err != nil {
				return err
			}
		}
		n := copy(buf, r.data)
		buf, r.data = buf[n:], r.data[n:]
		r.pos += int64(n)
	}
	return nil
}

// nextRange moves to the next planned range, opening a Read for the next
// batch of ranges when the last one is read.
func (r *rangeReader) nextRange(ctx context.Context) error {
	if r.stream != nil && r.batch > 0 {
		r.ranges, r.batch = r.ranges[1:], r.batch-1
	}
	if len(r.ranges) == 0 {
		return errors.New("no more bytes were planned")
	}
	if r.batch == 0 {
		r.close()
		sctx, cancel := context.WithCancel(ctx)
		r.batch = min(len(r.ranges), maxReadRanges)
		stream, err := r.c.Read(sctx, &osvcv1.ReadRequest{Sha256: r.sum, Ranges: r.ranges[:r.batch]})
		if err != nil {
			cancel()
			return err
		}
		r.stream, r.cancel = stream, cancel
	}
	r.pos, r.left = r.ranges[0].Offset, r.ranges[0].Length
	return nil
}

// recv takes the next message of the current range.
func (r *rangeReader) recv(ctx context.Context) error {
	if r.left == 0 {
		return fmt.Errorf("asked for bytes past the range ending at %d", r.pos)
	}
	// Messages already buffered would still arrive after ctx ends: stop here.
	if err := ctx.Err(); err != nil {
		return err
	}
	resp, err := r.stream.Recv()
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("the server ended the read at %d, %d bytes before the range's end", r.pos, r.left)
	}
	if err != nil {
		return fmt.Errorf("receive at %d: %w", r.pos, err)
	}
	if resp.GetOffset() != r.pos || int64(len(resp.GetData())) > r.left || len(resp.GetData()) == 0 {
		return fmt.Errorf("the server sent %d bytes at %d, expected up to %d at %d", len(resp.GetData()), resp.GetOffset(), r.left, r.pos)
	}
	r.data = resp.GetData()
	r.left -= int64(len(r.data))
	return nil
}

// close ends the open Read, if any.
func (r *rangeReader) close() {
	if r.cancel != nil {
		r.cancel()
		r.cancel, r.stream = nil, nil
	}
}

// writeBuffers is how many chunk buffers a delta download cycles through:
// one being filled, the others written and hashed meanwhile.
const writeBuffers = 3

// chunkWriter writes checked chunks to the partial file and hashes them
// into the whole file's sha256, in a goroutine of its own, so that the next
// chunk is read (from the network or a local file) meanwhile.
type chunkWriter struct {
	free chan []byte
	work chan chunkAt
	done chan error
}

type chunkAt struct {
	data []byte
	off  int64
}

func newChunkWriter(f *os.File, h hash.Hash) *chunkWriter {
	w := &chunkWriter{free: make(chan []byte, writeBuffers), work: make(chan chunkAt, writeBuffers), done: make(chan error, 1)}
	for range writeBuffers {
		w.free <- make([]byte, chunks.MaxSize)
	}
	go func() {
		var err error
		for c := range w.work {
			if err == nil {
				if _, err = f.WriteAt(c.data, c.off); err != nil {
					err = fmt.Errorf("write at %d: %w", c.off, err)
				} else {
					h.Write(c.data)
				}
			}
			w.free <- c.data[:cap(c.data)]
		}
		w.done <- err
	}()
	return w
}

// buffer returns a free buffer of chunks.MaxSize bytes.
func (w *chunkWriter) buffer() []byte { return <-w.free }

// write queues buf, a buffer from buffer, to be written at off. A write
// error is told by close; the chunks after it are not written.
func (w *chunkWriter) write(buf []byte, off int64) { w.work <- chunkAt{data: buf, off: off} }

// close waits for the queued chunks and returns the first write error.
func (w *chunkWriter) close() error {
	close(w.work)
	return <-w.done
}
