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
	ctx := context.Background()
	st := storetest.New(b)
	bucket := s3test.NewBucket(b)
	near := newS3Library(b, st, s3test.Shared(b).Endpoint(), bucket)
	data := noise(64<<20, 11)
	c, _, err := near.Write(ctx, content.WriteHeader{}, bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	if !c.GetStoredAsChunks() {
		b.Fatal("the blob is not stored as chunks")
	}
	for _, delay := range []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond} {
		b.Run(fmt.Sprintf("%s a request", delay), func(b *testing.B) {
			far := newS3Library(b, st, delayedProxy(b, s3test.Shared(b).Endpoint(), delay), bucket)
			read := func(readAhead int) time.Duration {
				far.SetReadAhead(readAhead)
				start := time.Now()
				blob, err := far.Open(ctx, c.GetSha256())
				if err != nil {
					b.Fatal(err)
				}
				defer blob.Close()
				r, err := blob.Stream(0, blob.Size())
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, r); err != nil || n != int64(len(data)) {
					b.Fatalf("read %d bytes: %v", n, err)
				}
				return time.Since(start)
			}
			var ahead, alone time.Duration
			reads := 0
			for b.Loop() {
				ahead += read(4)
				alone += read(1)
				reads++
			}
			mb := float64(len(data)) * float64(reads) / 1e6
			b.ReportMetric(mb/ahead.Seconds(), "MB/s")
			b.ReportMetric(mb/alone.Seconds(), "MB/s-one-chunk-at-a-time")
			b.ReportMetric(alone.Seconds()/ahead.Seconds(), "read-ahead/one-at-a-time")
		})
	}
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
