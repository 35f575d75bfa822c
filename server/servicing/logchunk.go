package servicing

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/protobuf/proto"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/store"
)

// maxLogChunkInflated bounds what a stored chunk may inflate to. A chunk is
// written from at most maxLogChunkBytes of lines (plus one line), so anything
// far larger is a damaged or foreign value, not something to read into memory.
const maxLogChunkInflated = 16 * maxLogChunkBytes

// gzipWriters reuses compressors: each holds about a megabyte of state, and
// every log batch writes at least one chunk. Chunks are compressed for
// speed: on agent-like lines gzip's fastest level stores about 8 times less
// than the lines, its default level about 10 times, at three and a half
// times the time, which made compression half of what a busy agent's lines
// cost the server.
var gzipWriters = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed) // a valid level: no error
	return zw
}}

// encodeLogChunk returns the stored value of a chunk of lines: a LogChunk
// whose compressed_lines is the gzip of a LogChunk holding the lines. Agents'
// log lines repeat (same prefixes, same paths, progress ticks), so gzip
// shrinks them several times over.
func (s *Service) encodeLogChunk(lines []*osvcv1.LogLine) ([]byte, error) {
	raw, err := proto.Marshal(&storev1.LogChunk{Lines: lines})
	if err != nil {
		return nil, fmt.Errorf("encode log chunk: %w", err)
	}
	var buf bytes.Buffer
	zw := gzipWriters.Get().(*gzip.Writer)
	defer func() {
		zw.Reset(io.Discard) // let buf go
		gzipWriters.Put(zw)
	}()
	zw.Reset(&buf)
	if _, err := zw.Write(raw); err != nil {
		return nil, fmt.Errorf("compress log chunk: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compress log chunk: %w", err)
	}
	return s.store.Marshal(&storev1.LogChunk{CompressedLines: buf.Bytes()})
}

// decodeLogChunk returns the lines of a stored chunk, compressed or written
// before chunks were compressed.
func decodeLogChunk(value []byte) ([]*osvcv1.LogLine, error) {
	chunk, err := store.Unmarshal[*storev1.LogChunk](value)
	if err != nil {
		return nil, err
	}
	if len(chunk.GetCompressedLines()) == 0 {
		return chunk.GetLines(), nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(chunk.GetCompressedLines()))
	if err != nil {
		return nil, fmt.Errorf("decompress log chunk: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, maxLogChunkInflated+1))
	if err != nil {
		return nil, fmt.Errorf("decompress log chunk: %w", err)
	}
	if len(raw) > maxLogChunkInflated {
		return nil, errors.New("decompress log chunk: it inflates past the size any chunk is written with")
	}
	inner, err := store.Unmarshal[*storev1.LogChunk](raw)
	if err != nil {
		return nil, fmt.Errorf("decompressed log chunk: %w", err)
	}
	// Lines stored both ways in one value would be a writer's bug; keep both.
	return append(chunk.GetLines(), inner.GetLines()...), nil
}
