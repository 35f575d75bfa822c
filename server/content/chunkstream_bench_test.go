package content_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/content/s3store"
	"github.com/osvc/osvc/server/content/s3store/s3test"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

// BenchmarkReadAheadFromADistantObjectStore reads a blob of 64 MiB stored
// as chunks whole, through a proxy of the object store delaying every
// request, as a bucket far away answers late: with read-ahead and, as the
// floor, one chunk at a time, in the same run. It reports both speeds and
// their ratio.
func BenchmarkReadAheadFromADistantObjectStore(b *testing.B) {
	d := newDistantBlob(b)
	whole := func(blob content.Blob) (io.Reader, error) { return blob.Stream(0, blob.Size()) }
	for _, delay := range distances {
		b.Run(fmt.Sprintf("%s a request", delay), func(b *testing.B) {
			far := d.far(b, delay)
			read := func(readAhead int) func() time.Duration {
				return func() time.Duration {
					far.SetReadAhead(readAhead)
					return d.read(b, far, whole, int64(len(d.data)))
				}
			}
			compare(b, int64(len(d.data)), read(4), read(1), "one-chunk-at-a-time", "read-ahead/one-at-a-time")
		})
	}
}

// BenchmarkReadOfSeparateChunksFromADistantObjectStore reads every other
// chunk of a blob of 64 MiB stored as chunks, each a range of its own as
// a delta download asks for the chunks it lacks, through a proxy of the
// object store delaying every request: with one stream of all the ranges
// (StreamRanges, as ContentService.Read reads them) and, as the floor, a
// stream a range, as Read did before, in the same run. It reports both
// speeds and their ratio.
func BenchmarkReadOfSeparateChunksFromADistantObjectStore(b *testing.B) {
	d := newDistantBlob(b)
	idx, err := d.near.ChunkIndex(context.Background(), d.c.GetSha256())
	if err != nil {
		b.Fatal(err)
	}
	var ranges []content.Range
	var off, want int64
	for i, c := range idx.GetChunks() {
		if i%2 == 0 {
			ranges = append(ranges, content.Range{Offset: off, Length: c.GetSizeBytes()})
			want += c.GetSizeBytes()
		}
		off += c.GetSizeBytes()
	}
	together := func(blob content.Blob) (io.Reader, error) { return content.StreamRanges(blob, ranges) }
	// Wrapped, the blob is not known to be stored as chunks: StreamRanges
	// reads it a Stream a range, as Read did.
	apart := func(blob content.Blob) (io.Reader, error) {
		return content.StreamRanges(struct{ content.Blob }{blob}, ranges)
	}
	for _, delay := range distances {
		b.Run(fmt.Sprintf("%d ranges, %s a request", len(ranges), delay), func(b *testing.B) {
			far := d.far(b, delay)
			compare(b, want,
				func() time.Duration { return d.read(b, far, together, want) },
				func() time.Duration { return d.read(b, far, apart, want) },
				"a-stream-a-range", "one-stream/a-stream-a-range")
		})
	}
}

// compare times read and floor in turn, each reading n bytes, and
// reports their speeds and the ratio of their times.
func compare(b *testing.B, n int64, read, floor func() time.Duration, floorName, ratioName string) {
	var fast, slow time.Duration
	reads := 0
	for b.Loop() {
		fast += read()
		slow += floor()
		reads++
	}
	mb := float64(n) * float64(reads) / 1e6
	b.ReportMetric(mb/fast.Seconds(), "MB/s")
	b.ReportMetric(mb/slow.Seconds(), "MB/s-"+floorName)
	b.ReportMetric(slow.Seconds()/fast.Seconds(), ratioName)
}

// distances are the delays of the benchmarks' proxy: none, a nearby
// region's, a distant one's.
var distances = []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond}

// distantBlob is a blob of 64 MiB stored as chunks in a bucket, written
// through near, its records in st.
type distantBlob struct {
	st     *store.Store
	bucket string
	near   *content.Library
	c      *osvcv1.Content
	data   []byte
}

func newDistantBlob(b *testing.B) *distantBlob {
	b.Helper()
	d := &distantBlob{st: storetest.New(b), bucket: s3test.NewBucket(b), data: noise(64<<20, 11)}
	d.near = newS3Library(b, d.st, s3test.Shared(b).Endpoint(), d.bucket)
	c, _, err := d.near.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(d.data))
	if err != nil {
		b.Fatal(err)
	}
	if !c.GetStoredAsChunks() {
		b.Fatal("the blob is not stored as chunks")
	}
	d.c = c
	return d
}

// far is a library reaching the blob's bucket through a proxy delaying
// every request.
func (d *distantBlob) far(b *testing.B, delay time.Duration) *content.Library {
	b.Helper()
	return newS3Library(b, d.st, delayedProxy(b, s3test.Shared(b).Endpoint(), delay), d.bucket)
}

// read opens the blob in lib, reads the stream that stream makes of it,
// checks it has want bytes and returns how long that took.
func (d *distantBlob) read(b *testing.B, lib *content.Library, stream func(content.Blob) (io.Reader, error), want int64) time.Duration {
	b.Helper()
	start := time.Now()
	blob, err := lib.Open(context.Background(), d.c.GetSha256())
	if err != nil {
		b.Fatal(err)
	}
	defer blob.Close()
	r, err := stream(blob)
	if err != nil {
		b.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, r); err != nil || n != want {
		b.Fatalf("read %d bytes, want %d: %v", n, want, err)
	}
	return time.Since(start)
}

// newS3Library is a library on bucket, its blobs and chunks reached at
// endpoint, its records in st.
func newS3Library(b *testing.B, st *store.Store, endpoint, bucket string) *content.Library {
	b.Helper()
	lib, err := content.New(content.Config{
		Dir:    b.TempDir(),
		Blobs:  bucketStoreAt(b, endpoint, bucket, "", 0),
		Chunks: bucketStoreAt(b, endpoint, bucket, s3store.ChunksPrefix, 0),
		Store:  st,
	})
	if err != nil {
		b.Fatal(err)
	}
	return lib
}

// delayedProxy forwards every request to the server at target once delay
// has passed, and returns its own URL.
func delayedProxy(b *testing.B, target string, delay time.Duration) string {
	b.Helper()
	u, err := url.Parse(target)
	if err != nil {
		b.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The latency stands for the distance: the benchmark's subject.
		time.Sleep(delay)
		proxy.ServeHTTP(w, r)
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}
