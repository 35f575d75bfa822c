package cache_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/osvc/osvc/agent/cache"
	"github.com/osvc/osvc/pkg/transfer"
)

// Stamps are taken on Linux only (elsewhere every use hashes the file), so
// these tests are built there only.

// damage flips a byte in the middle of the file at path, in place: its
// size and inode stay.
func damage(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, info.Size()/2); err != nil {
		t.Fatal(err)
	}
}

// damageKeepingTime damages the file at path and sets its modification
// time back, so that only its change time tells. The write comes in a later
// clock tick than the cache's last stamp, as any write behind its back
// does (see laterTick).
func damageKeepingTime(t *testing.T, path string) {
	t.Helper()
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	laterTick(t)
	damage(t, path)
	if err := os.Chtimes(path, before.ModTime(), before.ModTime()); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Fatalf("the damaged file's size and modification time differ from before: %v %d, was %v %d",
			after.ModTime(), after.Size(), before.ModTime(), before.Size())
	}
}

// laterTick returns once the file system's clock has left the tick it is
// in, telling by the modification time of new files. Linux before 6.13
// gives a file a new change time only from one tick (a few milliseconds)
// to the next, so without it a write right after the cache's stamp could
// keep the stamp's change time there.
func laterTick(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	probe := func() time.Time {
		f, err := os.CreateTemp(dir, "tick")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(f.Name())
		defer f.Close()
		info, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		return info.ModTime()
	}
	first := probe()
	for deadline := time.Now().Add(waitFor); !probe().After(first); {
		if time.Now().After(deadline) {
			t.Fatal("the file system's clock did not move on")
		}
	}
}

func TestAFileServedAgainUnwrittenIsNotHashedAgain(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data, sha := s.put(t, 3*transfer.ChunkSize/2, 11)
	// Downloaded, so verified as it came: never hashed.
	c := newCache(t, s, opts{})
	for range 3 {
		use(t, c, sha)
	}
	if n := cache.Hashes(c); n != 0 {
		t.Errorf("a downloaded file served 3 times was hashed %d times, want none", n)
	}
	// Found in a folder without a stamp: hashed when first served, only.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, sha), data, 0o640); err != nil {
		t.Fatal(err)
	}
	found := newCache(t, s, opts{dir: dir})
	for range 3 {
		use(t, found, sha)
	}
	if n := cache.Hashes(found); n != 1 {
		t.Errorf("a file found in the folder, served 3 times, was hashed %d times, want once", n)
	}
	if reads := s.startedReads(); len(reads) != 1 {
		t.Errorf("%d downloads, want 1: the file found was served", len(reads))
	}
}

func TestAFileWrittenInPlaceAfterItWasVerifiedIsFetchedAgain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// write changes the cached file at path; held runs it while a run
		// holds the file.
		write func(t *testing.T, path string)
		held  bool
	}{
		{"bytes written at an offset", damage, false},
		{"bytes written at an offset, the modification time set back", damageKeepingTime, false},
		{"bytes written while a run held the file", damage, true},
		{"bytes written while a run held the file, the modification time set back", damageKeepingTime, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			_, sha := s.put(t, 3*transfer.ChunkSize/2, 12)
			c := newCache(t, s, opts{})
			path, release, err := c.Acquire(context.Background(), sha, nil)
			if err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			if tt.held {
				tt.write(t, path)
				release()
			} else {
				release()
				tt.write(t, path)
			}
			s.startedReads()

			path, release, err = c.Acquire(context.Background(), sha, nil)
			if err != nil {
				t.Fatalf("Acquire after the write: %v", err)
			}
			defer release()
			if got := fileSHA(t, path); got != sha {
				t.Errorf("served a file hashing to %s, want %s", got, sha)
			}
			if reads := s.startedReads(); len(reads) != 1 {
				t.Errorf("%d downloads after the write, want 1", len(reads))
			}
			if got := cache.Hashes(c); got != 1 {
				t.Errorf("hashed %d times, want once: after the write", got)
			}
		})
	}
}

// servedThenStopped starts a server holding a file, and a cache in a new
// folder that downloads the file, serves it and stops: the folder holds the
// file and its stamp, as an agent leaves them.
func servedThenStopped(t *testing.T) (s *server, data []byte, sha, dir string) {
	t.Helper()
	s = startServer(t)
	data, sha = s.put(t, 3*transfer.ChunkSize/2, 13)
	dir = t.TempDir()
	c := newCache(t, s, opts{dir: dir})
	use(t, c, sha)
	c.Close()
	s.startedReads()
	return s, data, sha, dir
}

// rewriteStamp is a change of TestARestartTrustsOnlyAStampThatMatchesItsFile
// that rewrites the stamp file through edit.
func rewriteStamp(edit func([]byte) []byte) func(t *testing.T, path, stamp string, data []byte) {
	return func(t *testing.T, _, stamp string, _ []byte) {
		t.Helper()
		b, err := os.ReadFile(stamp)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(stamp, edit(b), 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

func TestARestartTrustsOnlyAStampThatMatchesItsFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// change acts on the cached file and its stamp while no agent runs.
		change               func(t *testing.T, path, stamp string, data []byte)
		wantHashes, wantRead int
	}{
		{"a stamp that matches its file spares the hash", func(*testing.T, string, string, []byte) {}, 0, 0},
		{"a stamp of an earlier state of the file is not trusted", func(t *testing.T, path, _ string, data []byte) {
			laterTick(t)
			if err := os.WriteFile(path, data, 0o640); err != nil {
				t.Fatal(err)
			}
		}, 1, 0},
		{"a file written, the modification time set back, is fetched again", func(t *testing.T, path, _ string, _ []byte) {
			damageKeepingTime(t, path)
		}, 1, 1},
		{"a stamp cut short is not trusted", rewriteStamp(func(b []byte) []byte { return b[:len(b)/2] }), 1, 0},
		{"a stamp that does not parse is not trusted, though every field it holds matches", rewriteStamp(func(b []byte) []byte {
			// A field said again with the wrong type: JSON keeps the rest.
			return append(bytes.TrimSuffix(bytes.TrimSpace(b), []byte("}")), `,"size":"unknown"}`...)
		}), 1, 0},
		{"a stamp larger than 4 KiB is not trusted", rewriteStamp(func(b []byte) []byte {
			// Still the stamp, as JSON reads it.
			return append(b, bytes.Repeat([]byte(" "), 4<<10)...)
		}), 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, data, sha, dir := servedThenStopped(t)
			path := filepath.Join(dir, sha)
			tt.change(t, path, path+cache.VerifiedSuffix, data)

			after := newCache(t, s, opts{dir: dir})
			got, release, err := after.Acquire(context.Background(), sha, nil)
			if err != nil {
				t.Fatalf("Acquire after the restart: %v", err)
			}
			release()
			if sum := fileSHA(t, got); sum != sha {
				t.Errorf("served a file hashing to %s, want %s", sum, sha)
			}
			if n := cache.Hashes(after); n != int64(tt.wantHashes) {
				t.Errorf("hashed %d times after the restart, want %d", n, tt.wantHashes)
			}
			if reads := s.startedReads(); len(reads) != tt.wantRead {
				t.Errorf("%d downloads after the restart, want %d", len(reads), tt.wantRead)
			}
			// Stamped anew, once synced (Close waits for that): a third
			// agent trusts it.
			after.Close()
			third := newCache(t, s, opts{dir: dir})
			use(t, third, sha)
			if n := cache.Hashes(third); n != 0 {
				t.Errorf("the next agent hashed the file %d times, want none", n)
			}
		})
	}
}

func TestAStampGoesWithItsFile(t *testing.T) {
	t.Parallel()
	const size = 1000
	tests := []struct {
		name     string
		maxBytes int64
		// drop makes the cache part with a, used before b.
		drop func(t *testing.T, s *server, c *cache.Cache, a string)
	}{
		{"a file evicted past the cap", 2 * size, func(t *testing.T, s *server, c *cache.Cache, _ string) {
			_, x := s.put(t, size, 'x')
			use(t, c, x)
		}},
		{"a file removed", 0, func(t *testing.T, _ *server, c *cache.Cache, a string) {
			if err := c.Remove(a); err != nil {
				t.Fatalf("Remove: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			_, a := s.put(t, size, 'a')
			_, b := s.put(t, size, 'b')
			c := newCache(t, s, opts{maxBytes: tt.maxBytes})
			use(t, c, a)
			use(t, c, b)
			cache.WaitSynced(c)
			for _, sha := range []string{a, b} {
				if !exists(c.Path(sha) + cache.VerifiedSuffix) {
					t.Fatalf("no stamp beside %s after its use", sha)
				}
			}
			tt.drop(t, s, c, a)
			if exists(c.Path(a)) || exists(c.Path(a)+cache.VerifiedSuffix) {
				t.Errorf("after a was dropped: file kept %v, stamp kept %v; want neither",
					exists(c.Path(a)), exists(c.Path(a)+cache.VerifiedSuffix))
			}
			if !exists(c.Path(b) + cache.VerifiedSuffix) {
				t.Error("the stamp of b went with a")
			}
		})
	}
}

// refusingSource refuses every download, as a server that lost the blob
// does.
type refusingSource struct{}

func (refusingSource) Download(context.Context, string, string, transfer.ProgressFunc) error {
	return errors.New("no such blob")
}

func TestADamagedFileLeavesNoStampWhenItCannotBeFetchedAgain(t *testing.T) {
	t.Parallel()
	_, _, sha, dir := servedThenStopped(t)
	path := filepath.Join(dir, sha)
	damageKeepingTime(t, path)

	c, err := cache.New(cache.Config{Dir: dir, Source: refusingSource{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, _, err := c.Acquire(context.Background(), sha, nil); err == nil {
		t.Fatal("Acquire served a damaged file it could not fetch again")
	}
	if exists(path) || exists(path+cache.VerifiedSuffix) {
		t.Errorf("the damaged file kept %v, its stamp kept %v: want neither", exists(path), exists(path+cache.VerifiedSuffix))
	}
}

func TestAtStartAStampIsNeitherCountedNorKeptWithoutItsFile(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	data, a := s.put(t, 1000, 'a')
	_, b := s.put(t, 1000, 'b')
	dir := t.TempDir()
	files := map[string][]byte{
		a:                        data,
		a + cache.VerifiedSuffix: []byte(`{"dev":1}`),
		a + cache.VerifiedSuffix + transfer.PartialSuffix: []byte(`{"dev"`),
		b + cache.VerifiedSuffix:                          []byte(`{"dev":1}`),
		b + cache.VerifiedSuffix + transfer.PartialSuffix: []byte(`{"dev"`),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	c := newCache(t, s, opts{dir: dir})
	if bytes, n := c.Usage(); bytes != int64(len(data)) || n != 1 {
		t.Errorf("Usage = %d bytes in %d files, want %d in 1: the file, not the stamps", bytes, n, len(data))
	}
	for name := range files {
		want := name == a || name == a+cache.VerifiedSuffix
		if got := exists(filepath.Join(dir, name)); got != want {
			t.Errorf("%s kept %v, want %v", name, got, want)
		}
	}
}

// heldSyncs stands for the cache's syncs: each tells the file it syncs on
// started, then waits for release to be closed and returns err.
type heldSyncs struct {
	started chan string
	release chan struct{}
}

func holdSyncs(c *cache.Cache, err error) *heldSyncs {
	h := &heldSyncs{started: make(chan string, 10), release: make(chan struct{})}
	cache.SetSyncFile(c, func(path string) error {
		h.started <- path
		<-h.release
		return err
	})
	return h
}

func TestADownloadedFileIsServedAtOnceAndStampedOnDiskOnlyOnceSynced(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	_, sha := s.put(t, 3*transfer.ChunkSize/2, 14)
	dir := t.TempDir()
	c := newCache(t, s, opts{dir: dir})
	held := holdSyncs(c, nil)
	stampPath := c.Path(sha) + cache.VerifiedSuffix

	// Acquire does not wait for the sync.
	got := wait(t, acquire(context.Background(), c, sha), "Acquire, its file's sync held")
	if got.err != nil {
		t.Fatalf("Acquire: %v", got.err)
	}
	got.release()
	if path := wait(t, held.started, "the sync of the file downloaded"); path != c.Path(sha) {
		t.Fatalf("synced %s, want the file downloaded, %s", path, c.Path(sha))
	}
	if exists(stampPath) {
		t.Error("a stamp was kept beside the file before its sync ended")
	}
	use(t, c, sha)
	if n := cache.Hashes(c); n != 0 {
		t.Errorf("served again before its sync ended, the file was hashed %d times, want none: its stamp is in memory", n)
	}
	if exists(stampPath) {
		t.Error("a use kept the stamp beside the file before its sync ended")
	}

	close(held.release)
	c.Close() // Waits for the sync.
	if !exists(stampPath) {
		t.Fatal("no stamp beside the file once its sync ended")
	}
	next := newCache(t, s, opts{dir: dir})
	use(t, next, sha)
	if n := cache.Hashes(next); n != 0 {
		t.Errorf("the next agent hashed the file %d times, want none: it was stamped once synced", n)
	}
	if reads := s.startedReads(); len(reads) != 1 {
		t.Errorf("%d downloads, want 1", len(reads))
	}
}

func TestCloseWaitsForASyncAndAStampIsKeptOnlyForAFileStillAsVerified(t *testing.T) {
	t.Parallel()
	const size = 1000
	nothing := func(*testing.T, *server, *cache.Cache, string) {}
	tests := []struct {
		name    string
		syncErr error
		// meanwhile acts on the file sha while its sync is held.
		meanwhile func(t *testing.T, s *server, c *cache.Cache, sha string)
		wantStamp bool
	}{
		{"a file left as it was is stamped", nil, nothing, true},
		{"a file whose sync failed is not", errors.New("input/output error"), nothing, false},
		{"a file written meanwhile is not", nil, func(t *testing.T, _ *server, c *cache.Cache, sha string) {
			damageKeepingTime(t, c.Path(sha))
		}, false},
		{"a file removed meanwhile is not", nil, func(t *testing.T, _ *server, c *cache.Cache, sha string) {
			if err := c.Remove(sha); err != nil {
				t.Fatalf("Remove: %v", err)
			}
		}, false},
		{"a file evicted meanwhile is not", nil, func(t *testing.T, s *server, c *cache.Cache, _ string) {
			_, x := s.put(t, size, 'x')
			use(t, c, x)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			_, sha := s.put(t, size, 'a')
			dir := t.TempDir()
			c := newCache(t, s, opts{dir: dir, maxBytes: 3 * size / 2})
			held := holdSyncs(c, tt.syncErr)
			use(t, c, sha)
			wait(t, held.started, "the sync of the file downloaded")
			tt.meanwhile(t, s, c, sha)

			closed := make(chan struct{})
			go func() {
				c.Close()
				close(closed)
			}()
			// Cannot fail wrongly, only miss: Close may not have started.
			select {
			case <-closed:
				t.Error("Close returned while a sync was under way")
			default:
			}
			close(held.release)
			// Close returned: the goroutine of every sync ended.
			wait(t, closed, "Close, once the syncs ended")
			path := filepath.Join(dir, sha)
			if got := exists(path + cache.VerifiedSuffix); got != tt.wantStamp {
				t.Errorf("stamp kept %v, want %v", got, tt.wantStamp)
			}

			// What was left is served right, on the stamp only if it was kept.
			next := newCache(t, s, opts{dir: dir})
			got, release, err := next.Acquire(context.Background(), sha, nil)
			if err != nil {
				t.Fatalf("Acquire by the next agent: %v", err)
			}
			release()
			if sum := fileSHA(t, got); sum != sha {
				t.Errorf("the next agent served a file hashing to %s, want %s", sum, sha)
			}
			if n := cache.Hashes(next); tt.wantStamp && n != 0 {
				t.Errorf("the next agent hashed the file %d times, want none: it was stamped", n)
			}
		})
	}
}
