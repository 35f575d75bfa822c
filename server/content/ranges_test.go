package content_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/content"
)

// chunkRanges are the chunks of the blob sha as ranges of it, in order.
func (l *library) chunkRanges(t *testing.T, sha string) []content.Range {
	t.Helper()
	idx, err := l.ChunkIndex(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	var out []content.Range
	var off int64
	for _, c := range idx.GetChunks() {
		out = append(out, content.Range{Offset: off, Length: c.GetSizeBytes()})
		off += c.GetSizeBytes()
	}
	return out
}

// everyOther is every other range of ranges, from the first: chunks
// apart from one another, as a delta download asks for them.
func everyOther(ranges []content.Range) []content.Range {
	var out []content.Range
	for i := 0; i < len(ranges); i += 2 {
		out = append(out, ranges[i])
	}
	return out
}

// readRanges reads the ranges of the blob sha through Open and
// StreamRanges, within ctx.
func (l *library) readRanges(ctx context.Context, sha string, ranges []content.Range) ([]byte, error) {
	b, err := l.Open(ctx, sha)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	r, err := content.StreamRanges(b, ranges)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// bytesOf is what a read of ranges of data returns: their bytes back to back.
func bytesOf(data []byte, ranges []content.Range) []byte {
	var out []byte
	for _, r := range ranges {
		out = append(out, data[r.Offset:r.Offset+r.Length]...)
	}
	return out
}

func TestAReadOfSeparateChunksKeepsFourInFlightAcrossTheirRangesAndNoMore(t *testing.T) {
	t.Parallel()
	lib, data, sha := backends[1].withBlobOfChunks(t)
	// A chunk a range: a read fetching one range's chunks at a time has
	// one open at once.
	ranges := everyOther(lib.chunkRanges(t, sha))
	wantFourInFlight(t, lib, bytesOf(data, ranges), func(ctx context.Context, watched *library) ([]byte, error) {
		return watched.readRanges(ctx, sha, ranges)
	})
}

func TestAReadOfRangesReturnsTheirBytesBackToBack(t *testing.T) {
	t.Parallel()
	kinds := []struct {
		name string
		cfg  content.Config
	}{
		{name: "stored as chunks"},
		{name: "kept whole", cfg: content.Config{WholeBlobs: true}},
	}
	eachBackend(t, func(t *testing.T, b backend) {
		for _, kind := range kinds {
			t.Run("a blob "+kind.name, func(t *testing.T) {
				t.Parallel()
				lib := b.newLibrary(t, kind.cfg)
				data, _ := versions()
				sha := lib.put(t, data)
				// The chunks of the same data, whether the blob is stored
				// as them or not.
				c := lib.chunkRanges(t, sha)
				mid := func(k int) int64 { return c[k].Offset + c[k].Length/2 }
				size := int64(len(data))
				last := c[len(c)-1]
				tests := []struct {
					name   string
					ranges []content.Range
				}{
					{name: "one range from the middle of a chunk to the middle of another",
						ranges: []content.Range{{Offset: mid(1), Length: mid(4) - mid(1)}}},
					{name: "ranges starting and ending in the middle of chunks", ranges: []content.Range{
						{Offset: 7, Length: mid(0) - 7}, {Offset: mid(2), Length: mid(3) - mid(2)}, {Offset: mid(6), Length: 100}}},
					{name: "ranges sharing a chunk", ranges: []content.Range{
						{Offset: c[2].Offset + 10, Length: 100}, {Offset: c[2].Offset + 500, Length: 1000}, {Offset: mid(2), Length: mid(3) - mid(2)}}},
					{name: "ranges meeting in the middle of a chunk", ranges: []content.Range{
						{Offset: mid(1), Length: mid(2) - mid(1)}, {Offset: mid(2), Length: mid(3) - mid(2)}}},
					{name: "every other chunk", ranges: everyOther(c)},
					{name: "the last chunk", ranges: []content.Range{c[0], last}},
					{name: "the last byte", ranges: []content.Range{{Offset: size - 1, Length: 1}}},
					{name: "empty ranges among others", ranges: []content.Range{
						{Offset: mid(0), Length: 0}, {Offset: mid(1), Length: 10}, {Offset: mid(1) + 10, Length: 0}, {Offset: size, Length: 0}}},
					{name: "no range", ranges: nil},
				}
				for _, tt := range tests {
					t.Run(tt.name, func(t *testing.T) {
						got, err := lib.readRanges(context.Background(), sha, tt.ranges)
						if want := bytesOf(data, tt.ranges); err != nil || !bytes.Equal(got, want) {
							t.Fatalf("read %d bytes, want %d (or other bytes): %v", len(got), len(want), err)
						}
					})
				}
			})
		}
	})
}

func TestAChunkTwoRangesShareIsFetchedOnce(t *testing.T) {
	t.Parallel()
	lib, data, sha := backends[1].withBlobOfChunks(t)
	c := lib.chunkRanges(t, sha)
	w := &watchedChunks{}
	watched := watchChunks(t, lib, w)
	// Chunk 2 holds the end of the first range, the whole second and the
	// start of the third: chunks 1, 2 and 3 are asked for.
	ranges := []content.Range{
		{Offset: c[1].Offset, Length: c[1].Length + 10},
		{Offset: c[2].Offset + 20, Length: 30},
		{Offset: c[2].Offset + 100, Length: c[2].Length},
	}
	got, err := watched.readRanges(context.Background(), sha, ranges)
	if err != nil || !bytes.Equal(got, bytesOf(data, ranges)) {
		t.Fatalf("read: %v, or other bytes", err)
	}
	if _, _, asked := w.counts(); asked != 3 {
		t.Errorf("%d chunks were asked for, want 3: each once", asked)
	}
}

func TestADamagedChunkAmongTheRangesFailsTheReadNamingIt(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, b backend) {
		lib, data, sha := b.withBlobOfChunks(t)
		ranges := everyOther(lib.chunkRanges(t, sha))
		// The fifth chunk is the third range's, in the middle of them; it
		// is put back after each damage.
		chunk, chunkData := lib.chunkAt(t, sha, data, 4)
		for _, d := range damages {
			t.Run("a chunk "+d.name, func(t *testing.T) {
				lib.replaceChunk(t, chunk, d.damage(chunkData))
				defer lib.replaceChunk(t, chunk, chunkData)
				_, err := lib.readRanges(context.Background(), sha, ranges)
				if !errors.Is(err, errdefs.ErrDataLoss) || !strings.Contains(err.Error(), chunk) {
					t.Fatalf("read: %v, want DataLoss naming the chunk %s", err, chunk)
				}
			})
		}
	})
}

func TestStreamRangesRefusesRangesOutOfOrderOrOutsideTheBlob(t *testing.T) {
	t.Parallel()
	lib, data, sha := backends[0].withBlobOfChunks(t)
	size := int64(len(data))
	tests := []struct {
		name   string
		ranges []content.Range
	}{
		{name: "a range before the one it follows", ranges: []content.Range{{Offset: 100, Length: 10}, {Offset: 50, Length: 10}}},
		{name: "overlapping ranges", ranges: []content.Range{{Offset: 100, Length: 10}, {Offset: 105, Length: 10}}},
		{name: "a negative offset", ranges: []content.Range{{Offset: -1, Length: 10}}},
		{name: "a negative length", ranges: []content.Range{{Offset: 100, Length: -1}}},
		{name: "a range past the end", ranges: []content.Range{{Offset: size - 10, Length: 11}}},
	}
	blob, err := lib.Open(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := content.StreamRanges(blob, tt.ranges); !errors.Is(err, errdefs.ErrOutOfRange) {
				t.Fatalf("StreamRanges = %v, want OutOfRange", err)
			}
		})
	}
}

// shortBlob is a blob whose streams end a byte early, as a store
// answering less than it was asked for.
type shortBlob struct{ content.Blob }

func (b shortBlob) Stream(off, n int64) (io.Reader, error) {
	r, err := b.Blob.Stream(off, n)
	return io.LimitReader(r, n-1), err
}

func TestARangeOfAWholeBlobCutShortFailsTheRead(t *testing.T) {
	t.Parallel()
	lib := backends[0].newLibrary(t, content.Config{})
	sha := lib.put(t, noise(1000, 3))
	blob, err := lib.Open(context.Background(), sha)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	// The second range's bytes must not pass for the first's last one.
	r, err := content.StreamRanges(shortBlob{blob}, []content.Range{{Offset: 0, Length: 100}, {Offset: 200, Length: 100}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(r); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %d bytes, %v; want ErrUnexpectedEOF", len(got), err)
	}
}
