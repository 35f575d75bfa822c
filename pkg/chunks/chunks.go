// Package chunks cuts blobs into content-defined chunks (FastCDC, through
// github.com/PlakarKorp/go-cdc-chunkers) and checks chunk indexes. The
// server indexes every blob it stores; a client holding an earlier version
// of a blob cuts its own file the same way, so that the chunks an update
// left alone have the same sha256 on both sides and only the others travel.
//
// The cut points depend on the data and on the chunker's name and sizes
// alone: Algorithm names a versioned chunker, whose cuts the library keeps
// the same from release to release.
package chunks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	cdc "github.com/PlakarKorp/go-cdc-chunkers"
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/fastcdc" // registers Algorithm

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Algorithm is the chunker every index is cut with.
const Algorithm = "fastcdc-v1.0.0"

// Chunk sizes: 1 MiB on average for WIMs of several GiB (a 10 GiB image
// is some 10,000 chunks, an index of about 400 KB); a monthly update
// rewrites files here and there, and a smaller average would find more
// unchanged chunks between them at the price of a larger index and more
// ranges to read (osvc-bench -run distribute measures it).
const (
	MinSize     = 256 << 10
	AverageSize = 1 << 20
	MaxSize     = 4 << 20
)

// MinBlobBytes is the smallest blob that gets an index: a smaller one is a
// few chunks, cheaper to send whole than to index and compare.
const MinBlobBytes = 2 * MaxSize

// DigestSize is the size of a chunk's digest, a sha256.
const DigestSize = sha256.Size

// MaxChunks is the most chunks an index may have: a blob of the content
// library's largest size (64 GiB) cut at MinSize everywhere. Anything past
// it is a hostile or damaged index.
const MaxChunks = 64 << 30 / MinSize

// Chunk is one chunk of a blob: the sha256 of its data and its size. Its
// offset is the sum of the sizes of the chunks before it.
type Chunk struct {
	Digest [DigestSize]byte
	Size   int64
}

// Chunking describes how this package cuts, as indexes record it.
func Chunking() *osvcv1.Chunking {
	return &osvcv1.Chunking{Algorithm: Algorithm, MinSizeBytes: MinSize, AverageSizeBytes: AverageSize, MaxSizeBytes: MaxSize}
}

// SameChunking tells whether c cuts as this package does: only then can a
// client's own chunks match an index's.
func SameChunking(c *osvcv1.Chunking) bool {
	return c.GetAlgorithm() == Algorithm && c.GetMinSizeBytes() == MinSize &&
		c.GetAverageSizeBytes() == AverageSize && c.GetMaxSizeBytes() == MaxSize
}

// Check checks that list is an index of a blob of size bytes cut as this
// package cuts: at most MaxChunks chunks, each at most MaxSize and, but for
// the last, at least MinSize, adding up to size. A client checks every
// index it is sent, so that a hostile one cannot make it plan billions of
// chunks or write past the blob's end.
func Check(list []Chunk, size int64) error {
	if size < 0 {
		return fmt.Errorf("chunk index: the blob's size is %d", size)
	}
	if len(list) > MaxChunks {
		return fmt.Errorf("chunk index: %d chunks, more than the %d a blob may have", len(list), MaxChunks)
	}
	var sum int64
	for i, c := range list {
		switch {
		case c.Size < 1 || c.Size > MaxSize:
			return fmt.Errorf("chunk index: chunk %d has %d bytes; a chunk has 1 to %d", i, c.Size, MaxSize)
		case c.Size < MinSize && i != len(list)-1:
			return fmt.Errorf("chunk index: chunk %d has %d bytes; only the last may have fewer than %d", i, c.Size, MinSize)
		}
		sum += c.Size
		if sum > size {
			return fmt.Errorf("chunk index: the chunks up to %d add up to %d bytes, past the blob's %d", i, sum, size)
		}
	}
	if sum != size {
		return fmt.Errorf("chunk index: the chunks add up to %d bytes, not the blob's %d", sum, size)
	}
	return nil
}

// FromProto converts the chunks of an index message, checking each digest.
func FromProto(pb []*osvcv1.Chunk) ([]Chunk, error) {
	out := make([]Chunk, len(pb))
	for i, c := range pb {
		if len(c.GetDigest()) != DigestSize {
			return nil, fmt.Errorf("chunk index: chunk %d has a digest of %d bytes, not %d", i, len(c.GetDigest()), DigestSize)
		}
		copy(out[i].Digest[:], c.GetDigest())
		out[i].Size = c.GetSizeBytes()
	}
	return out, nil
}

// FromIndex returns the chunks of idx after checking that it is an index of
// the blob sha256 of size bytes, cut as this package cuts (see Check).
func FromIndex(idx *osvcv1.ChunkIndex, sha256 string, size int64) ([]Chunk, error) {
	if idx.GetSha256() != sha256 || idx.GetSizeBytes() != size {
		return nil, fmt.Errorf("chunk index: it describes %s of %d bytes, not %s of %d", idx.GetSha256(), idx.GetSizeBytes(), sha256, size)
	}
	if !SameChunking(idx.GetChunking()) {
		return nil, fmt.Errorf("chunk index: cut with %v, not %v", idx.GetChunking(), Chunking())
	}
	list, err := FromProto(idx.GetChunks())
	if err != nil {
		return nil, err
	}
	return list, Check(list, size)
}

// Index is the index message of list, the chunks of the blob sha256 of size bytes.
func Index(sha256 string, size int64, list []Chunk) *osvcv1.ChunkIndex {
	return &osvcv1.ChunkIndex{Sha256: sha256, SizeBytes: size, Chunking: Chunking(), Chunks: ToProto(list)}
}

// ToProto converts chunks to index messages.
func ToProto(list []Chunk) []*osvcv1.Chunk {
	out := make([]*osvcv1.Chunk, len(list))
	for i := range list {
		out[i] = &osvcv1.Chunk{Digest: list[i].Digest[:], SizeBytes: list[i].Size}
	}
	return out
}

// Of cuts what r yields until EOF.
func Of(ctx context.Context, r io.Reader) ([]Chunk, error) {
	return OfSizes(ctx, r, Sizes{MinSize, AverageSize, MaxSize})
}

// Sizes are a chunker's minimum, average and maximum chunk sizes.
type Sizes struct{ Min, Average, Max int }

// OfSizes cuts what r yields with other sizes than this package's, to
// measure what they would do (osvc-bench -run distribute); an index the
// server keeps is always cut with Of's.
func OfSizes(ctx context.Context, r io.Reader, sizes Sizes) ([]Chunk, error) {
	ix := newIndexer(sizes)
	buf := make([]byte, pieceSize)
	for {
		if err := ctx.Err(); err != nil {
			ix.Close()
			return nil, err
		}
		n, err := r.Read(buf)
		ix.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return ix.Close()
		}
		if err != nil {
			ix.Close()
			return nil, err
		}
	}
}

// OfFile cuts the file at path.
func OfFile(ctx context.Context, path string) ([]Chunk, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Of(ctx, f)
}

// pieceSize is the size of the copies an Indexer queues.
const pieceSize = 1 << 20

// queuedPieces is how many copies an Indexer queues before Write waits: the
// writer (an upload being received and hashed) runs that far ahead of the
// chunker, so the two overlap on two cores.
const queuedPieces = 4

var pieces = sync.Pool{New: func() any { b := make([]byte, pieceSize); return &b }}

// scanBuffers are the chunkers' buffers: twice MaxSize, which lets the
// chunker refill in larger strides than MaxSize alone.
var scanBuffers = sync.Pool{New: func() any { b := make([]byte, 2*MaxSize); return &b }}

// Indexer cuts the data written to it, in a goroutine of its own, so that a
// blob is indexed while it is received, without a second read. Close
// returns the chunks; it must be called once, whatever happened, to end
// the goroutine.
type Indexer struct {
	sizes  Sizes
	queue  chan *[]byte
	done   chan struct{}
	chunks []Chunk
	err    error
	closed bool
}

// NewIndexer starts an Indexer.
func NewIndexer() *Indexer { return newIndexer(Sizes{MinSize, AverageSize, MaxSize}) }

func newIndexer(sizes Sizes) *Indexer {
	ix := &Indexer{sizes: sizes, queue: make(chan *[]byte, queuedPieces), done: make(chan struct{})}
	go ix.run()
	return ix
}

// Write queues a copy of p; it never fails.
func (ix *Indexer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		b := pieces.Get().(*[]byte)
		m := copy((*b)[:pieceSize], p)
		*b = (*b)[:m]
		p = p[m:]
		ix.queue <- b
	}
	return n, nil
}

// Close waits for the chunker to cut what was written and returns the chunks.
func (ix *Indexer) Close() ([]Chunk, error) {
	if !ix.closed {
		ix.closed = true
		close(ix.queue)
	}
	<-ix.done
	return ix.chunks, ix.err
}

func (ix *Indexer) run() {
	defer close(ix.done)
	r := &queueReader{queue: ix.queue}
	// The chunker never stops reading before EOF: drain the queue
	// whatever happens, so Write never blocks for ever.
	defer io.Copy(io.Discard, r)
	buf := scanBuffers.Get().(*[]byte)
	defer scanBuffers.Put(buf)
	scan := *buf
	if len(scan) < 2*ix.sizes.Max {
		scan = make([]byte, 2*ix.sizes.Max)
	}
	opts := &cdc.ChunkerOpts{MinSize: ix.sizes.Min, NormalSize: ix.sizes.Average, MaxSize: ix.sizes.Max}
	c, err := cdc.NewChunkerBuffer(Algorithm, r, opts, scan)
	if err != nil {
		ix.err = fmt.Errorf("chunker %s: %w", Algorithm, err)
		return
	}
	for {
		data, err := c.Next()
		if len(data) > 0 {
			ix.chunks = append(ix.chunks, Chunk{Digest: sha256.Sum256(data), Size: int64(len(data))})
		}
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			ix.err = fmt.Errorf("chunker %s: %w", Algorithm, err)
			return
		}
	}
}

// queueReader reads the pieces of a queue in order, giving each back to
// the pool once read.
type queueReader struct {
	queue chan *[]byte
	cur   *[]byte
	off   int
}

func (r *queueReader) Read(p []byte) (int, error) {
	for r.cur == nil || r.off == len(*r.cur) {
		if r.cur != nil {
			pieces.Put(r.cur)
			r.cur = nil
		}
		b, ok := <-r.queue
		if !ok {
			return 0, io.EOF
		}
		r.cur, r.off = b, 0
	}
	n := copy(p, (*r.cur)[r.off:])
	r.off += n
	return n, nil
}

// Locate returns the offset of every chunk of list, and the blob's size.
func Locate(list []Chunk) (offsets []int64, size int64) {
	offsets = make([]int64, len(list))
	for i, c := range list {
		offsets[i] = size
		size += c.Size
	}
	return offsets, size
}

// Lacking is how many bytes of the chunks of want none of have holds: what
// a delta download of want sends to a client holding have.
func Lacking(want []Chunk, have ...[]Chunk) int64 {
	held := make(map[[DigestSize]byte]bool)
	for _, list := range have {
		for _, c := range list {
			held[c.Digest] = true
		}
	}
	var n int64
	for _, c := range want {
		if !held[c.Digest] {
			n += c.Size
		}
	}
	return n
}

// Verify tells whether data is the chunk c.
func Verify(c Chunk, data []byte) bool {
	if int64(len(data)) != c.Size {
		return false
	}
	sum := sha256.Sum256(data)
	return bytes.Equal(sum[:], c.Digest[:])
}
