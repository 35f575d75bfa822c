package chunks_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/chunks"
)

// random returns n bytes of a seeded generator.
func random(seed byte, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

func TestAnEditLeavesTheChunksAwayFromItAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	v1 := random(1, 48<<20)
	// An update rewrites 64 KiB in the middle and inserts 100 bytes near the start.
	v2 := bytes.Clone(v1)
	copy(v2[30<<20:], random(2, 64<<10))
	v2 = append(v2[:3<<20:3<<20], append(random(3, 100), v2[3<<20:]...)...)

	a, err := chunks.Of(ctx, bytes.NewReader(v1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := chunks.Of(ctx, bytes.NewReader(v2))
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		list []chunks.Chunk
		data []byte
	}{{a, v1}, {b, v2}} {
		if err := chunks.Check(x.list, int64(len(x.data))); err != nil {
			t.Fatalf("the index of the data it cut: %v", err)
		}
		offsets, _ := chunks.Locate(x.list)
		for i, c := range x.list {
			if !chunks.Verify(c, x.data[offsets[i]:offsets[i]+c.Size]) {
				t.Fatalf("chunk %d does not hash to its digest", i)
			}
		}
	}
	missing := chunks.Lacking(b, a)
	// Two edits cost a few chunks each, never most of the file.
	if missing > 6*chunks.MaxSize {
		t.Errorf("after two small edits %d of %d bytes are in chunks version 1 lacks", missing, len(v2))
	}
	t.Logf("%d and %d chunks; %d bytes of version 2 to send", len(a), len(b), missing)
}

func TestTheSameDataIsCutTheSameWayHoweverItIsWritten(t *testing.T) {
	t.Parallel()
	data := random(4, 20<<20)
	whole, err := chunks.Of(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	ix := chunks.NewIndexer()
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 1+rand.IntN(3<<20))
		ix.Write(rest[:n])
		rest = rest[n:]
	}
	pieces, err := ix.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(pieces) != len(whole) {
		t.Fatalf("%d chunks written in pieces, %d read whole", len(pieces), len(whole))
	}
	for i := range whole {
		if pieces[i] != whole[i] {
			t.Fatalf("chunk %d differs", i)
		}
	}
}

func TestCheckRefusesIndexesThatDoNotDescribeTheBlob(t *testing.T) {
	t.Parallel()
	c := func(size int64) chunks.Chunk { return chunks.Chunk{Size: size} }
	tests := []struct {
		name string
		list []chunks.Chunk
		size int64
		want string
	}{
		{"a valid index passes", []chunks.Chunk{c(chunks.MinSize), c(10)}, chunks.MinSize + 10, ""},
		{"chunks adding up to less than the blob are refused", []chunks.Chunk{c(chunks.MinSize)}, chunks.MinSize + 1, "add up to"},
		{"chunks adding up to more than the blob are refused", []chunks.Chunk{c(chunks.MinSize), c(chunks.MinSize)}, chunks.MinSize + 1, "past the blob"},
		{"a chunk larger than the largest is refused", []chunks.Chunk{c(chunks.MaxSize + 1)}, chunks.MaxSize + 1, "a chunk has 1 to"},
		{"an empty chunk is refused", []chunks.Chunk{c(chunks.MinSize), c(0), c(1)}, chunks.MinSize + 1, "a chunk has 1 to"},
		{"a negative chunk is refused", []chunks.Chunk{c(chunks.MinSize), c(-5), c(15)}, chunks.MinSize + 10, "a chunk has 1 to"},
		{"small chunks before the last are refused", []chunks.Chunk{c(1), c(1)}, 2, "only the last"},
		{"more chunks than any blob has are refused", make([]chunks.Chunk, chunks.MaxChunks+1), 0, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := chunks.Check(tt.list, tt.size)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Check: %v, want %q", err, tt.want)
			}
		})
	}
}

func BenchmarkIndexer(b *testing.B) {
	data := random(5, 64<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		ix := chunks.NewIndexer()
		ix.Write(data)
		if _, err := ix.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
