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
	"sync/atomic"

	"golang.org/x/sync/errgroup"
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
	// Chunks is the index of the blob fetched, for the client to keep
	// beside it; nil when the blob has none (too small) or was taken from
	// the library's volume.
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
// index and writes dst+".partial" from two sides at once, each chunk at its
// offset: the chunks found in have are copied from there, the others read
// from the server in one Read of their ranges, each checked against its
// digest before it is written. Meanwhile the chunks are hashed in order,
// from the very buffers they are written from, so the whole file is
// checked against sum once, with no second pass and no reading back,
// before it is renamed to dst.
//
// A chunk copied from have is not hashed on its own: the whole file's hash
// covers it. Should that fail (a file of have changed since it was cut),
// the download is made again with every local chunk checked first, and a
// local chunk that no longer matches is read from the server.
//
// An interrupted download resumes: the next call finds, in the partial
// file, every chunk the server had sent whose bytes still hash to its
// digest, and reads only the others, so at most the chunk being received
// when it stopped is sent again. A blob too small to have an index is
// downloaded whole (see Download), and so is one for a client holding
// nothing (have empty): then the index is only read, and returned, for the
// client to keep beside the file.
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
	d := &deltaDownload{c: c, sum: sum, dst: dst, list: list, size: size, progress: progress, stats: &deltaStats{}}
	d.offsets, _ = chunks.Locate(list)
	d.index(have)
	if len(d.local) == 0 {
		// Nothing to reuse: a plain download hashes each byte once, where
		// checking chunks would hash it twice. Its partial file is a prefix
		// of the blob, which a later delta attempt checks chunk by chunk.
		if err := Download(ctx, c, sum, dst, progress); err != nil {
			return Delta{}, err
		}
		return Delta{Chunks: list, Downloaded: size}, nil
	}
	err = d.attempt(ctx, false)
	if errors.Is(err, ErrHashMismatch) {
		// A local chunk was not what its index said, or a resumed one was
		// damaged: check every one this time.
		d.stats = &deltaStats{}
		err = d.attempt(ctx, true)
	}
	return Delta{Chunks: list, Local: d.stats.local.Load(), Downloaded: d.stats.downloaded.Load(), Resumed: d.stats.resumed.Load()}, err
}

// deltaDownload is one delta download.
type deltaDownload struct {
	c        osvcv1.ContentServiceClient
	sum, dst string
	list     []chunks.Chunk
	offsets  []int64
	size     int64
	progress ProgressFunc
	// local is where each digest is found among the client's files.
	local map[[chunks.DigestSize]byte]localChunk
	stats *deltaStats
}

// deltaStats counts an attempt's bytes by where they came from.
type deltaStats struct{ local, downloaded, resumed atomic.Int64 }

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

// attempt makes one attempt; checkLocal checks every local chunk before it
// is written. A hash mismatch of the whole removes the partial file only
// when checkLocal is set (otherwise the next attempt checks and keeps it).
func (d *deltaDownload) attempt(ctx context.Context, checkLocal bool) error {
	partial := d.dst + PartialSuffix
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("download %s: %w", d.sum, err)
	}
	defer f.Close()
	held, err := d.resume(ctx, f)
	if err != nil {
		return fmt.Errorf("download %s: resume %s: %w", d.sum, partial, err)
	}
	if err := f.Truncate(d.size); err != nil {
		return fmt.Errorf("download %s: %w", d.sum, err)
	}

	// The server's chunks and the local ones are written at their offsets
	// as they come, neither side waiting for the other, and each buffer
	// written goes on to the hasher, which hashes the chunks in order as
	// soon as each is written: the file is hashed once, from memory, while
	// the transfer goes on. Each side has buffers of its own, so a side
	// waiting for the hasher never holds up the other, which the hasher
	// waits for.
	var remote, local []int
	for i, c := range d.list {
		switch _, ok := d.local[c.Digest]; {
		case held[i]:
		case ok:
			local = append(local, i)
		default:
			remote = append(remote, i)
		}
	}
	// Room for every chunk: neither side ever waits for the hasher (see
	// check and copyLocal).
	written := make(chan filled, len(remote)+len(local))
	received := make(chan filled, receiveBuffers)
	h := sha256.New()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.receive(gctx, remote, received) })
	g.Go(func() error { return d.check(gctx, f, received, written) })
	g.Go(func() error { return d.copyLocal(gctx, f, local, checkLocal, written) })
	g.Go(func() error { return d.hash(gctx, f, held, written, h) })
	if err := g.Wait(); err != nil {
		// Keep the chunks written: the next attempt resumes with them.
		return fmt.Errorf("download %s: %w", d.sum, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.sum {
		if checkLocal {
			f.Close()
			os.Remove(partial)
			return fmt.Errorf("download %s: the chunks assembled hash to %s; the partial file was removed: %w", d.sum, got, ErrHashMismatch)
		}
		return fmt.Errorf("download %s: the chunks assembled hash to %s: %w", d.sum, got, ErrHashMismatch)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("download %s: close %s: %w", d.sum, partial, err)
	}
	if err := os.Rename(partial, d.dst); err != nil {
		return fmt.Errorf("download %s: %w", d.sum, err)
	}
	return nil
}

// receiveBuffers is how many chunk buffers the server's chunks go
// through: one being received while the others are checked, written and
// hashed.
const receiveBuffers = 4

// localBuffers is how many chunk buffers the local chunks go through: one
// being read and written while the others wait for the hasher, which may
// be waiting for a chunk of the server's before them.
const localBuffers = 4

// filled is the chunk i in a buffer of free, which takes it back once the
// chunk is written and hashed.
type filled struct {
	i    int
	data []byte
	free chan []byte
}

// buffers returns a pool of n chunk buffers.
func buffers(n int) chan []byte {
	free := make(chan []byte, n)
	for range n {
		free <- make([]byte, chunks.MaxSize)
	}
	return free
}

// take returns a free buffer, or nil when ctx ends first.
func take(ctx context.Context, free chan []byte) []byte {
	select {
	case b := <-free:
		return b
	case <-ctx.Done():
		return nil
	}
}

// resume tells which chunks the server would send that the partial file f
// already holds: those whose bytes there hash to their digest. The bytes
// are checked, not trusted, so a file left by a crash, or by an attempt of
// Download (a prefix), serves as well. Local chunks are copied again, which
// costs no transfer.
func (d *deltaDownload) resume(ctx context.Context, f *os.File) ([]bool, error) {
	held := make([]bool, len(d.list))
	info, err := f.Stat()
	if err != nil || info.Size() == 0 {
		return held, err
	}
	buf := make([]byte, chunks.MaxSize)
	for i, c := range d.list {
		if _, ok := d.local[c.Digest]; ok || d.offsets[i]+c.Size > info.Size() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if _, err := f.ReadAt(buf[:c.Size], d.offsets[i]); err != nil {
			return nil, err
		}
		if chunks.Verify(c, buf[:c.Size]) {
			held[i] = true
			d.stats.resumed.Add(c.Size)
		}
	}
	return held, nil
}

// receive reads the chunks todo (in order) from the server, in one Read of
// their ranges (adjacent ones merged), and hands each to check.
func (d *deltaDownload) receive(ctx context.Context, todo []int, received chan<- filled) error {
	defer close(received)
	remote := d.plan(todo)
	defer remote.close()
	free := buffers(receiveBuffers)
	for _, i := range todo {
		c, off := d.list[i], d.offsets[i]
		buf := take(ctx, free)
		if buf == nil {
			return ctx.Err()
		}
		if err := remote.read(ctx, off, buf[:c.Size]); err != nil {
			return fmt.Errorf("chunk %d at %d: %w", i, off, err)
		}
		select {
		case received <- filled{i: i, data: buf[:c.Size], free: free}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// check checks each chunk received against its digest, writes it and
// hands it to the hasher. A chunk received whole is written even when the
// download is being stopped, so that an interrupted download sends again
// only the chunk it was receiving.
//
// The transfer never waits for the hasher, which hashes in file order and
// may be far behind, copying local chunks: when the receiver has no buffer
// left, the chunk's buffer goes straight back to it and the hasher reads
// the chunk back from the file (the page cache) when it gets there. So the
// connection is drained at the rate it delivers, not at the rate the whole
// file is hashed.
func (d *deltaDownload) check(ctx context.Context, f *os.File, received <-chan filled, written chan<- filled) error {
	for b := range received {
		if err := d.put(f, b.i, b.data); err != nil {
			return err
		}
		if len(b.free) == 0 {
			b.free <- b.data[:cap(b.data)]
			b.data, b.free = nil, nil
		}
		// written has room for every chunk: this never blocks.
		written <- b
	}
	return ctx.Err()
}

// copyLocal copies the chunks todo from the client's files to their
// offsets and tells the hasher each is written. It never waits for the
// hasher, which waits for the server's chunks in file order: a chunk goes
// to the hasher in its buffer while one of its buffers is free, else it is
// written from a buffer of its own and the hasher reads it back from the
// file (the page cache) when it gets there. So the local copy runs in
// parallel with the transfer instead of in bursts after each chunk the
// server sends. With check, each is checked against its digest first, and
// one that no longer matches is read from the server with a Read of its
// own.
func (d *deltaDownload) copyLocal(ctx context.Context, f *os.File, todo []int, check bool, written chan<- filled) error {
	files := make(map[string]*os.File)
	defer func() {
		for _, lf := range files {
			lf.Close()
		}
	}()
	free := buffers(localBuffers)
	own := make([]byte, chunks.MaxSize)
	for _, i := range todo {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, off := d.list[i], d.offsets[i]
		buf, pooled := own, false
		select {
		case buf = <-free:
			pooled = true
		default:
		}
		data := buf[:c.Size]
		if readLocal(files, d.local[c.Digest], data) && (!check || chunks.Verify(c, data)) {
			if _, err := f.WriteAt(data, off); err != nil {
				return fmt.Errorf("write chunk %d at %d: %w", i, off, err)
			}
			d.stats.local.Add(c.Size)
		} else {
			// Unreadable, or (checked) changed since it was cut: the server
			// sends it. Unchecked, a changed chunk shows in the whole hash,
			// and the next attempt checks.
			if err := readRange(ctx, d.c, d.sum, off, data); err != nil {
				return fmt.Errorf("chunk %d at %d: %w", i, off, err)
			}
			if err := d.put(f, i, data); err != nil {
				return err
			}
		}
		b := filled{i: i}
		if pooled {
			b.data, b.free = data, free
		}
		// written has room for every chunk: this never blocks.
		written <- b
	}
	return nil
}

// put checks the chunk i the server sent against its digest, writes it and
// counts it.
func (d *deltaDownload) put(f *os.File, i int, data []byte) error {
	c, off := d.list[i], d.offsets[i]
	if !chunks.Verify(c, data) {
		got := sha256.Sum256(data)
		return fmt.Errorf("chunk %d (%d bytes at %d) hashes to %x, not %x as the chunk index says: refused: %w",
			i, c.Size, off, got, c.Digest, ErrChunkMismatch)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		return fmt.Errorf("write chunk %d at %d: %w", i, off, err)
	}
	d.stats.downloaded.Add(c.Size)
	return nil
}

// hash hashes the chunks into h in order: those the partial file held
// already (held), and chunks handed over without a buffer, read from it;
// the others from the buffers they were written from, each given back once
// hashed. It tells progress as the hashed prefix grows.
func (d *deltaDownload) hash(ctx context.Context, f *os.File, held []bool, written <-chan filled, h hash.Hash) error {
	// ready are the chunks written ahead of the next one to hash.
	ready := make(map[int]filled)
	var buf []byte
	var done int64
	for next, c := range d.list {
		if held[next] {
			if buf == nil {
				buf = make([]byte, chunks.MaxSize)
			}
			if _, err := f.ReadAt(buf[:c.Size], d.offsets[next]); err != nil {
				return fmt.Errorf("read back chunk %d: %w", next, err)
			}
			h.Write(buf[:c.Size])
		} else {
			for {
				b, ok := ready[next]
				if ok {
					delete(ready, next)
					if b.data == nil {
						// Written without a buffer to spare, or its buffer
						// went back to the receiver: read it back.
						if buf == nil {
							buf = make([]byte, chunks.MaxSize)
						}
						if _, err := f.ReadAt(buf[:c.Size], d.offsets[next]); err != nil {
							return fmt.Errorf("read back chunk %d: %w", next, err)
						}
						h.Write(buf[:c.Size])
						break
					}
					h.Write(b.data)
					b.free <- b.data[:cap(b.data)]
					break
				}
				select {
				case b := <-written:
					ready[b.i] = b
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		done += c.Size
		d.progress(done, d.size)
	}
	return nil
}

// plan lists the ranges of the chunks todo, adjacent ones merged.
func (d *deltaDownload) plan(todo []int) *rangeReader {
	var ranges []*osvcv1.ByteRange
	for _, i := range todo {
		off, size := d.offsets[i], d.list[i].Size
		if n := len(ranges); n > 0 && ranges[n-1].Offset+ranges[n-1].Length == off {
			ranges[n-1].Length += size
			continue
		}
		ranges = append(ranges, &osvcv1.ByteRange{Offset: off, Length: size})
	}
	return &rangeReader{c: d.c, sum: d.sum, ranges: ranges}
}

// readLocal reads the chunk at src into buf, keeping the files it opens in
// files; false when it cannot.
func readLocal(files map[string]*os.File, src localChunk, buf []byte) bool {
	f, ok := files[src.path]
	if !ok {
		var err error
		if f, err = os.Open(src.path); err != nil {
			return false
		}
		files[src.path] = f
	}
	_, err := f.ReadAt(buf, src.offset)
	return err == nil
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
