package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/osvc/osvc/agent/cache"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

// waitFor bounds every wait of these tests: long enough never to fail a
// slow machine, short enough to end a test that would hang.
const waitFor = 30 * time.Second

// server is a real content server over bufconn. It tells each Read that
// starts (with its offset) and each that ends because its client went away,
// and holds Reads at a gate when the test closes one. It does not answer
// Locate, as a server on another machine's volume would not be seen
// through it, so every file the cache lacks is downloaded.
type server struct {
	lib    *content.Library
	source *transfer.Client

	// reads gets the offset of every Read that starts; abandoned gets one
	// value per Read whose client gave up while it waited at the gate.
	reads     chan int64
	abandoned chan struct{}
	// served counts the data bytes Reads sent.
	served atomic.Int64
	// failReads makes this many Reads fail UNAVAILABLE, as a replica that
	// goes away does.
	failReads atomic.Int32

	mu   sync.Mutex
	gate chan struct{}
}

// readStream sees the ReadRequest, to tell the offset.
type readStream struct {
	grpc.ServerStream
	s *server
}

func (r *readStream) SendMsg(m any) error {
	if resp, ok := m.(*osvcv1.ReadResponse); ok {
		r.s.served.Add(int64(len(resp.GetData())))
	}
	return r.ServerStream.SendMsg(m)
}

func (r *readStream) RecvMsg(m any) error {
	err := r.ServerStream.RecvMsg(m)
	if req, ok := m.(*osvcv1.ReadRequest); ok && err == nil {
		r.s.reads <- req.GetOffset()
		if r.s.failReads.Add(-1) >= 0 {
			return status.Error(codes.Unavailable, "the server replica is going away")
		}
		r.s.mu.Lock()
		gate := r.s.gate
		r.s.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				r.s.abandoned <- struct{}{}
				return r.Context().Err()
			}
		}
	}
	return err
}

func startServer(t *testing.T) *server {
	t.Helper()
	lib, err := content.New(content.Config{Dir: t.TempDir(), Store: storetest.New(t), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	s := &server{lib: lib, reads: make(chan int64, 100), abandoned: make(chan struct{}, 100)}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(append(transfer.ServerOptions(), grpc.StreamInterceptor(
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			if info.FullMethod == osvcv1.ContentService_Read_FullMethodName {
				ss = &readStream{ServerStream: ss, s: s}
			}
			return handler(srv, ss)
		}), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if info.FullMethod == osvcv1.ContentService_Locate_FullMethodName {
				return nil, status.Error(codes.Unimplemented, "the library is on another machine")
			}
			return handler(ctx, req)
		}))...)
	osvcv1.RegisterContentServiceServer(srv, api.NewContentServer(lib, hclog.NewNullLogger()))
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	dial := append(transfer.DialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	cc, err := grpc.NewClient("passthrough:///bufnet", dial...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); srv.Stop(); wg.Wait() })
	if s.source, err = transfer.NewClient(osvcv1.NewContentServiceClient(cc)); err != nil {
		t.Fatal(err)
	}
	return s
}

// hold makes every Read wait until the returned function is called.
func (s *server) hold() (release func()) {
	gate := make(chan struct{})
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }
}

// put stores a blob of n bytes, different for each seed, and returns its
// data and sha256.
func (s *server) put(t *testing.T, n int, seed byte) ([]byte, string) {
	t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*31) ^ seed
	}
	if _, _, err := s.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return data, hex.EncodeToString(sum[:])
}

// put3 stores three blobs of n bytes, a, b and x.
func (s *server) put3(t *testing.T, n int) (a, b, x string) {
	t.Helper()
	_, a = s.put(t, n, 'a')
	_, b = s.put(t, n, 'b')
	_, x = s.put(t, n, 'x')
	return a, b, x
}

// startedReads drains the Reads started so far.
func (s *server) startedReads() []int64 {
	var out []int64
	for {
		select {
		case off := <-s.reads:
			out = append(out, off)
		default:
			return out
		}
	}
}

// clock is a test clock; every reading is a minute after the last.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Minute)
	return c.now
}

// logWatch closes a channel when the cache logs a message containing a text.
type logWatch struct {
	text string
	once sync.Once
	seen chan struct{}
}

func (w *logWatch) Accept(_ string, _ hclog.Level, msg string, _ ...any) {
	if strings.Contains(msg, w.text) {
		w.once.Do(func() { close(w.seen) })
	}
}

// opts are a test cache's settings.
type opts struct {
	dir      string
	maxBytes int64
	clock    *clock
	watch    *logWatch
}

func newCache(t *testing.T, s *server, o opts) *cache.Cache {
	t.Helper()
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	if o.clock == nil {
		o.clock = newClock()
	}
	logger := hclog.NewInterceptLogger(&hclog.LoggerOptions{Output: &bytes.Buffer{}, Level: hclog.Debug})
	if o.watch != nil {
		logger.RegisterSink(o.watch)
	}
	c, err := cache.New(cache.Config{Dir: o.dir, MaxBytes: o.maxBytes, Source: s.source, Logger: logger, Now: o.clock.Now, RetryBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the cached file: %v", err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// use acquires sha256 and releases it at once.
func use(t *testing.T, c *cache.Cache, sha string) {
	t.Helper()
	_, release, err := c.Acquire(context.Background(), sha, nil)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	release()
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// acquired is what an Acquire in a goroutine returned.
type acquired struct {
	path    string
	release func()
	err     error
}

func acquire(ctx context.Context, c *cache.Cache, sha string) <-chan acquired {
	return acquireWatching(ctx, c, sha, nil)
}

func acquireWatching(ctx context.Context, c *cache.Cache, sha string, progress transfer.ProgressFunc) <-chan acquired {
	out := make(chan acquired, 1)
	go func() {
		path, release, err := c.Acquire(ctx, sha, progress)
		out <- acquired{path, release, err}
	}()
	return out
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func TestNewRefusesABadConfig(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	tests := []struct {
		name string
		cfg  cache.Config
		want string
	}{
		{"without a folder", cache.Config{Source: s.source}, "a folder is required"},
		{"without a source", cache.Config{Dir: t.TempDir()}, "a Source"},
		{"with a negative cap", cache.Config{Dir: t.TempDir(), Source: s.source, MaxBytes: -1}, "want 0 (no cap) or more"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := cache.New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestAFileIsServedOnlyWhenItsHashMatches(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// found is what the cache folder holds for the file at start: nil
		// nothing, else a function of the real data.
		found     func(data []byte) []byte
		wantReads int
	}{
		{"a file not cached is downloaded", nil, 1},
		{"a cached file that hashes right is served without a download", func(d []byte) []byte { return d }, 0},
		{"a damaged cached file of the right size is fetched again", func(d []byte) []byte {
			bad := bytes.Clone(d)
			bad[len(bad)/2] ^= 0xff
			return bad
		}, 1},
		{"a truncated cached file is fetched again", func(d []byte) []byte { return d[:len(d)-1] }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			data, sha := s.put(t, 3*transfer.ChunkSize/2, 1)
			dir := t.TempDir()
			if tt.found != nil {
				if err := os.WriteFile(dir+"/"+sha, tt.found(data), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			c := newCache(t, s, opts{dir: dir})
			path, release, err := c.Acquire(context.Background(), sha, nil)
			if err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			defer release()
			if got := fileSHA(t, path); got != sha {
				t.Errorf("served a file hashing to %s, want %s", got, sha)
			}
			if reads := s.startedReads(); len(reads) != tt.wantReads {
				t.Errorf("%d downloads, want %d", len(reads), tt.wantReads)
			}
			// Served again: from the cache now.
			use(t, c, sha)
			if reads := s.startedReads(); len(reads) != 0 {
				t.Errorf("%d downloads of a file the cache holds, want none", len(reads))
			}
		})
	}
}

// startHeld starts a server whose Reads wait until release is called, and a
// cache over it whose watch tells when a caller joins another's download.
func startHeld(t *testing.T) (s *server, c *cache.Cache, watch *logWatch, release func()) {
	t.Helper()
	s = startServer(t)
	watch = &logWatch{text: "waiting for it", seen: make(chan struct{})}
	c = newCache(t, s, opts{watch: watch})
	return s, c, watch, s.hold()
}

func TestRunsAskingForTheSameFileAtOnceShareOneDownload(t *testing.T) {
	t.Parallel()
	s, c, watch, release := startHeld(t)
	defer release()
	data, sha := s.put(t, 2*transfer.ChunkSize, 2)
	// Each caller is told how the shared download goes.
	var mu sync.Mutex
	last := make([]int64, 2)
	progress := func(i int) transfer.ProgressFunc {
		return func(done, _ int64) { mu.Lock(); last[i] = done; mu.Unlock() }
	}

	first := acquireWatching(context.Background(), c, sha, progress(0))
	wait(t, s.reads, "the first download")
	second := acquireWatching(context.Background(), c, sha, progress(1))
	select {
	case <-s.reads:
		t.Fatal("a second download of the same file started")
	case <-watch.seen:
	case <-time.After(waitFor):
		t.Fatal("the second caller neither joined the download nor started its own")
	}
	release()
	for i, ch := range []<-chan acquired{first, second} {
		got := wait(t, ch, "Acquire")
		if got.err != nil {
			t.Fatalf("caller %d: %v", i+1, got.err)
		}
		if sum := fileSHA(t, got.path); sum != sha {
			t.Errorf("caller %d got a file hashing to %s", i+1, sum)
		}
		got.release()
	}
	if reads := s.startedReads(); len(reads) != 0 {
		t.Errorf("%d more downloads, want one in all", len(reads))
	}
	mu.Lock()
	defer mu.Unlock()
	for i, done := range last {
		if done != int64(len(data)) {
			t.Errorf("caller %d was last told %d bytes done, want %d", i+1, done, len(data))
		}
	}
}

func TestACallerGivingUpDoesNotStopTheDownloadForTheOthers(t *testing.T) {
	t.Parallel()
	s, c, watch, release := startHeld(t)
	defer release()
	_, sha := s.put(t, 2*transfer.ChunkSize, 3)

	// The first caller starts the download, a second joins, the first gives up.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := acquire(ctx, c, sha)
	wait(t, s.reads, "the download")
	second := acquire(context.Background(), c, sha)
	wait(t, watch.seen, "the second caller to join")
	cancel()
	if got := wait(t, first, "the first caller to give up"); !errors.Is(got.err, context.Canceled) {
		t.Fatalf("the first caller's Acquire = %v, want context.Canceled", got.err)
	}

	release()
	got := wait(t, second, "the second caller")
	if got.err != nil {
		t.Fatalf("the second caller's Acquire = %v, want the file", got.err)
	}
	defer got.release()
	if sum := fileSHA(t, got.path); sum != sha {
		t.Errorf("served a file hashing to %s", sum)
	}
	if reads, abandoned := s.startedReads(), len(s.abandoned); len(reads) != 0 || abandoned != 0 {
		t.Errorf("%d more downloads, %d abandoned: want the first one carried on", len(reads), abandoned)
	}
}

func TestADownloadNobodyWaitsForStopsAndResumesLater(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data, sha := s.put(t, 3*transfer.ChunkSize, 4)
	dir := t.TempDir()
	// An earlier agent stopped half way.
	half := transfer.ChunkSize + 1000
	if err := os.WriteFile(dir+"/"+sha+transfer.PartialSuffix, data[:half], 0o640); err != nil {
		t.Fatal(err)
	}
	c := newCache(t, s, opts{dir: dir})
	release := s.hold()
	defer release()

	ctx, cancel := context.WithCancel(context.Background())
	first := acquire(ctx, c, sha)
	if off := wait(t, s.reads, "the download"); off != int64(half) {
		t.Errorf("the download started at %d, want %d: the partial file resumed", off, half)
	}
	cancel()
	if got := wait(t, first, "Acquire to give up"); !errors.Is(got.err, context.Canceled) {
		t.Fatalf("Acquire = %v, want context.Canceled", got.err)
	}
	wait(t, s.abandoned, "the download to stop")

	release()
	path, done, err := c.Acquire(context.Background(), sha, nil)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	defer done()
	if off := wait(t, s.reads, "the second download"); off != int64(half) {
		t.Errorf("the second download started at %d, want %d", off, half)
	}
	if got := fileSHA(t, path); got != sha {
		t.Errorf("served a file hashing to %s", got)
	}
}

func TestEvictionRemovesTheLeastRecentlyUsedFileFirst(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	const size = 1000
	a, b, x := s.put3(t, size)
	c := newCache(t, s, opts{maxBytes: 2 * size})
	use(t, c, a)
	use(t, c, b)
	use(t, c, a) // a was cached first but used last
	use(t, c, x)
	if exists(c.Path(b)) || !exists(c.Path(a)) || !exists(c.Path(x)) {
		t.Errorf("cached after the cap was passed: a %v, b %v, x %v; want b, the least recently used, evicted",
			exists(c.Path(a)), exists(c.Path(b)), exists(c.Path(x)))
	}
	if bytes, files := c.Usage(); bytes != 2*size || files != 2 {
		t.Errorf("usage = %d bytes in %d files, want %d in 2", bytes, files, 2*size)
	}
}

func TestEvictionNeverRemovesAFileARunHolds(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	const size = 1000
	a, b, x := s.put3(t, size)
	_, y := s.put(t, size, 'y')
	c := newCache(t, s, opts{maxBytes: 2 * size})
	ctx := context.Background()

	pathA, releaseA, err := c.Acquire(ctx, a, nil) // held, and the least recently used
	if err != nil {
		t.Fatal(err)
	}
	use(t, c, b)
	_, releaseX, err := c.Acquire(ctx, x, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !exists(pathA) || exists(c.Path(b)) {
		t.Fatalf("a held %v, b %v: want the held file kept and b evicted in its place", exists(pathA), exists(c.Path(b)))
	}

	// Past the cap with every file held: nothing can go.
	_, releaseY, err := c.Acquire(ctx, y, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes, files := c.Usage(); bytes != 3*size || files != 3 {
		t.Errorf("usage = %d bytes in %d files, want the 3 held files", bytes, files)
	}
	if got := fileSHA(t, pathA); got != a {
		t.Errorf("the held file hashes to %s now", got)
	}

	// Let go, the least recently used goes.
	releaseA()
	if exists(pathA) {
		t.Error("a is still cached after its release took the cache past its cap")
	}
	releaseX()
	releaseY()
	if bytes, files := c.Usage(); bytes != 2*size || files != 2 {
		t.Errorf("usage = %d bytes in %d files, want %d in 2", bytes, files, 2*size)
	}
}

func TestAFileLargerThanTheCapIsServedWhileHeldAndEvictedOnRelease(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	_, sha := s.put(t, 5000, 'l')
	c := newCache(t, s, opts{maxBytes: 1000})
	path, release, err := c.Acquire(context.Background(), sha, nil)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if got := fileSHA(t, path); got != sha {
		t.Errorf("served a file hashing to %s", got)
	}
	release()
	release() // a second release is harmless
	if exists(path) {
		t.Error("the file larger than the cap stayed after its release")
	}
	if bytes, files := c.Usage(); bytes != 0 || files != 0 {
		t.Errorf("usage = %d bytes in %d files, want none", bytes, files)
	}
}

func TestTheCacheAndItsOrderOfUseSurviveARestart(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	const size = 1000
	a, b, x := s.put3(t, size)
	dir := t.TempDir()
	clk := newClock()

	before := newCache(t, s, opts{dir: dir, maxBytes: 2 * size, clock: clk})
	use(t, before, a)
	use(t, before, b)
	use(t, before, a) // b is now the least recently used, though downloaded last
	before.Close()
	if _, _, err := before.Acquire(context.Background(), a, nil); !errors.Is(err, cache.ErrClosed) {
		t.Errorf("Acquire after Close = %v, want ErrClosed", err)
	}
	s.startedReads()

	after := newCache(t, s, opts{dir: dir, maxBytes: 2 * size, clock: clk})
	if bytes, files := after.Usage(); bytes != 2*size || files != 2 {
		t.Errorf("after the restart: %d bytes in %d files, want what was cached", bytes, files)
	}
	use(t, after, x)
	if exists(after.Path(b)) || !exists(after.Path(a)) {
		t.Errorf("after the restart a is cached %v, b %v: want b, the least recently used before the restart, evicted",
			exists(after.Path(a)), exists(after.Path(b)))
	}
	use(t, after, a)
	if reads := s.startedReads(); len(reads) != 1 {
		t.Errorf("%d downloads after the restart, want 1 (x): a was cached", len(reads))
	}
}

// stallingSource downloads through the server, except one blob: its
// download signals started and then hangs, deaf to its ctx, until release
// is closed, as one stuck in a slow write would.
type stallingSource struct {
	next    cache.Downloader
	sha     string
	started chan struct{}
	release chan struct{}
}

func (s *stallingSource) Download(ctx context.Context, sha, dst string, progress transfer.ProgressFunc) error {
	if sha != s.sha {
		return s.next.Download(ctx, sha, dst, progress)
	}
	close(s.started)
	<-s.release
	return context.Cause(ctx)
}

func TestADownloadUnderWayIsNeverEvictedEvenWhenNobodyWaitsForIt(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	const size = 1000
	dataP, p := s.put(t, 2*size, 'p')
	_, o := s.put(t, size, 'o')
	_, q := s.put(t, size, 'q')
	dir := t.TempDir()
	// An earlier agent left half of p, before any use this cache records.
	partial := dir + "/" + p + transfer.PartialSuffix
	if err := os.WriteFile(partial, dataP[:size], 0o640); err != nil {
		t.Fatal(err)
	}
	src := &stallingSource{next: s.source, sha: p, started: make(chan struct{}), release: make(chan struct{})}
	c, err := cache.New(cache.Config{Dir: dir, MaxBytes: 2*size + size/2, Source: src, Now: newClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	defer close(src.release) // before Close, which waits for the download
	use(t, c, o)

	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := acquire(ctx, c, p)
	wait(t, src.started, "the download of p")
	cancel()
	if got := wait(t, gaveUp, "Acquire to give up"); !errors.Is(got.err, context.Canceled) {
		t.Fatalf("Acquire = %v, want context.Canceled", got.err)
	}
	// p's download still runs; q takes the cache past its cap.
	use(t, c, q)
	if !exists(partial) {
		t.Error("the partial download of p was evicted while its download was under way")
	}
	if exists(c.Path(o)) {
		t.Error("o, the least recently used file no one holds, is still cached")
	}
}

func TestADownloadTheServerBrokeOffIsTriedAgain(t *testing.T) {
	s := startServer(t)
	data, sha := s.put(t, 3<<20, 7)
	c := newCache(t, s, opts{})
	s.failReads.Store(2)
	got := wait(t, acquire(context.Background(), c, sha), "the download")
	if got.err != nil {
		t.Fatalf("Acquire after two broken Reads: %v", got.err)
	}
	defer got.release()
	if b, err := os.ReadFile(got.path); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("the file: %v", err)
	}
	if n := len(s.reads); n < 3 {
		t.Fatalf("%d Reads, want the two broken ones and one more", n)
	}
}
