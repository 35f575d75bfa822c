// Package cache is the agent's update-file cache: the files of software
// updates, kept in one folder under their sha256, shared by every run of the
// agent.
//
//   - Verified: a file is served only when it hashes to its name; a damaged
//     one is removed and fetched again. It is hashed once, not at every use:
//     its stamp (device, inode, size, modification and change time) taken
//     when it hashed right proves it unwritten since, and a file whose
//     stamp differs is hashed again. The stamp is kept beside the file as
//     <sha256>.verified, so a restart does not hash every file again, once
//     the file's data is on disk: a file is synced in the background, off
//     the fetch path, and served meanwhile on the stamp kept in memory.
//     (Linux only: elsewhere a file is hashed each time it is served.)
//   - Single flight per blob: runs asking for the same file at once share one
//     verification and one download (golang.org/x/sync/singleflight).
//   - Size cap: past MaxBytes the least recently used files are evicted, by
//     the last use the cache records itself, never a file a run holds.
//   - Restartable: the files found in the folder at start are reused (and
//     verified when first served, by their stamp or a hash); a partial
//     download left by a stopped agent is resumed by the Downloader
//     (pkg/transfer keeps it as <sha256>.partial).
//   - Delta: with a Source that can (DeltaSource), a file is fetched as the
//     chunks the cache's other files lack (an earlier version of an image
//     shares most of its chunks). Each file's chunk index is kept beside it
//     as <sha256>.chunks, from the server when the file came whole, else
//     made when the file is first a candidate.
//   - Images too: a servicing run fetches its source version through the
//     cache (and copies it out: the cached file is never written), so that
//     next month's version comes as the chunks this month's lacks.
package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/dustin/go-humanize"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/osvc/osvc/pkg/transfer"
)

// Downloader fetches one blob by sha256 into dst: verified, and resuming
// dst+transfer.PartialSuffix when an earlier attempt left it. transfer.Client
// is one, over the server's ContentService.
type Downloader interface {
	Download(ctx context.Context, sha256, dst string, progress transfer.ProgressFunc) error
}

// DeltaSource is a Downloader that can fetch only the chunks of a blob
// that the files it is given lack (see transfer.DownloadDelta).
// transfer.Client is one.
type DeltaSource interface {
	Downloader
	DownloadDelta(ctx context.Context, sha256, dst string, have []transfer.LocalBlob, progress transfer.ProgressFunc) (transfer.Delta, error)
}

// IndexSuffix names the file beside a cached file that holds its chunk
// index (a serialized osvcv1.ChunkIndex).
const IndexSuffix = ".chunks"

// Config configures a Cache.
type Config struct {
	// Dir is the cache's folder; it is created when missing. Everything in it
	// named <sha256>, <sha256>.partial, <sha256>.chunks or <sha256>.verified
	// (and those last two with .partial, being written) belongs to the cache.
	Dir string
	// MaxBytes caps the bytes the cache keeps on disk (files and partial
	// downloads); 0 means no cap. Files runs hold are never evicted, so the
	// cache can stand above the cap while they are held.
	MaxBytes int64
	// Source fetches the files the cache lacks.
	Source Downloader
	Logger hclog.Logger
	// Now is the clock of last uses; default time.Now.
	Now func() time.Time
	// RetryFor bounds how long a download the server broke off
	// (UNAVAILABLE) is tried again; default DefaultRetryFor.
	RetryFor time.Duration
	// RetryBackoff is the first wait before trying again, doubling up to
	// ten times it; default one second.
	RetryBackoff time.Duration
}

// DefaultRetryFor covers a server replica's failover: the agent's
// connection moves to another replica meanwhile.
const DefaultRetryFor = 2 * time.Minute

// ErrClosed is returned by Acquire once the cache is closed.
var ErrClosed = errors.New("the update cache is closed")

// Cache holds update files by sha256. It is safe for concurrent use.
type Cache struct {
	cfg   Config
	log   hclog.Logger
	group singleflight.Group
	// hashes counts the cached files hashed to verify them (for tests).
	hashes atomic.Int64

	// wg waits for the shared fetches (singleflight runs them in goroutines
	// of their own).
	wg sync.WaitGroup
	// syncs waits for the background syncs of verified files (see
	// remember); only a fetch starts one, so after wg none starts.
	syncs sync.WaitGroup
	// syncFile makes the data of the file at a path durable; a test
	// replaces it to hold a sync.
	syncFile func(path string) error

	mu      sync.Mutex
	closed  bool
	entries map[string]*entry
	used    int64
	// flights are the fetches under way, one per sha256; a flight is in this
	// map exactly while group has a call under the same key (both change
	// under mu), so a flight's waiters are the callers of its call.
	flights map[string]*flight
	// lastSyncID names the background syncs, see entry.syncID.
	lastSyncID uint64
}

// entry is what the cache knows of one sha256.
type entry struct {
	// size is the bytes on disk: the file, or a partial download of it.
	size int64
	// lastUse is when a run last acquired or released the file. It is
	// written to the file's modification time too, so that it outlives the
	// agent; access times are not used, since volumes are often mounted
	// noatime or relatime.
	lastUse time.Time
	// refs counts the runs holding the file: from the start of Acquire until
	// release, the file is never evicted.
	refs int
	// verified is the file's stamp when it last hashed to its name (or was
	// downloaded, verified as it came), kept anew after each touch; nil when
	// the file is to be hashed before it is served again.
	verified *stamp
	// durable tells that the data verified vouches for is on disk: the
	// file was synced since, or its stamp was read from the stamp file.
	// Only then is the stamp kept beside the file, since it outlives the
	// agent (and a crash of the machine).
	durable bool
	// syncID names the latest background sync of the file (see remember):
	// one started before is of an earlier state and keeps no stamp.
	syncID uint64
}

// flight is one shared fetch (verify, then download if needed) of a sha256.
type flight struct {
	// ctx is the fetch's own: it outlives any one waiter, and is canceled
	// when the last waiter gives up or the cache closes.
	ctx    context.Context
	cancel context.CancelFunc
	// done is closed when the fetch has ended and left the flights map.
	done chan struct{}

	// waiters are the callers waiting for the fetch; guarded by Cache.mu.
	waiters map[*waiter]struct{}

	// watchers are the waiters with a progress function, apart from waiters
	// so that reporting progress never takes Cache.mu.
	pmu      sync.Mutex
	watchers map[*waiter]struct{}
}

// waiter is one caller waiting for a flight. (Not of zero size: pointers to
// distinct zero-size values may be equal, and waiters are map keys.)
type waiter struct {
	progress transfer.ProgressFunc
}

// New indexes the files already in cfg.Dir (by name, size and modification
// time; each is verified when first served) and evicts down to the cap.
// Stamps left without their file, or half written, are removed.
func New(cfg Config) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("cache: a folder is required (Dir)")
	}
	if cfg.MaxBytes < 0 {
		return nil, fmt.Errorf("cache: size cap %d bytes: want 0 (no cap) or more", cfg.MaxBytes)
	}
	if cfg.Source == nil {
		return nil, errors.New("cache: a Source to download missing files from is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RetryFor < 0 || cfg.RetryBackoff < 0 {
		return nil, errors.New("cache: RetryFor and RetryBackoff must not be negative")
	}
	cfg.RetryFor = cmp.Or(cfg.RetryFor, DefaultRetryFor)
	cfg.RetryBackoff = cmp.Or(cfg.RetryBackoff, time.Second)
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("cache: create the cache folder %s: %w: set --data-dir to a writable folder", cfg.Dir, err)
	}
	c := &Cache{
		cfg:      cfg,
		log:      cfg.Logger.Named("cache"),
		syncFile: fsync,
		entries:  make(map[string]*entry),
		flights:  make(map[string]*flight),
	}
	if err := c.scan(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.log.Info("update cache ready", "dir", cfg.Dir, "files", len(c.entries), "bytes", c.used, "max_bytes", cfg.MaxBytes)
	c.trim()
	c.mu.Unlock()
	return c, nil
}

// scan indexes what an earlier agent left in the folder.
func (c *Cache) scan() error {
	des, err := os.ReadDir(c.cfg.Dir)
	if err != nil {
		return fmt.Errorf("cache: read the cache folder %s: %w", c.cfg.Dir, err)
	}
	var stamps []string
	found := make(map[string]bool)
	for _, de := range des {
		sha, suffix, ok := cacheName(de.Name())
		if !de.Type().IsRegular() || !ok {
			c.log.Debug("not a cache file: left alone", "name", de.Name())
			continue
		}
		if slices.Contains(stampFiles, suffix) {
			// Read when its file is first served (see unchanged), and not
			// counted (see stampFiles).
			stamps = append(stamps, de.Name())
			continue
		}
		found[de.Name()] = true
		info, err := de.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("cache: read the cache folder %s: %w", c.cfg.Dir, err)
		}
		e := c.entries[sha]
		if e == nil {
			e = &entry{}
			c.entries[sha] = e
		}
		e.size += info.Size()
		if info.ModTime().After(e.lastUse) {
			e.lastUse = info.ModTime()
		}
		c.used += info.Size()
	}
	for _, name := range stamps {
		if strings.HasSuffix(name, VerifiedSuffix) && found[strings.TrimSuffix(name, VerifiedSuffix)] {
			continue
		}
		// Its file is gone (a later file of that name is another inode and
		// would not match it anyway), or a crash cut its writing short.
		if err := os.Remove(filepath.Join(c.cfg.Dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("removing a stamp left without its file failed", "name", name, "error", err)
		}
	}
	return nil
}

// Path is where the cache keeps the file with that sha256.
func (c *Cache) Path(sha256 string) string { return filepath.Join(c.cfg.Dir, sha256) }

// counted are the suffixes of the files the cache keeps for a sha256 and
// counts in its size: the file itself, its partial download, its chunk
// index and one being written.
var counted = []string{"", transfer.PartialSuffix, IndexSuffix, IndexSuffix + transfer.PartialSuffix}

// stampFiles are the suffixes of a file's stamp and one being written. A
// few dozen bytes each, they are not counted: the cap and Usage speak of
// the files and their indexes.
var stampFiles = []string{VerifiedSuffix, VerifiedSuffix + transfer.PartialSuffix}

// cacheName splits the name of a file in the cache's folder into the
// sha256 it belongs to and its suffix; ok is false for a name the cache
// does not use.
func cacheName(name string) (sha256, suffix string, ok bool) {
	const hexLen = 64
	if len(name) < hexLen {
		return "", "", false
	}
	sha256, suffix = name[:hexLen], name[hexLen:]
	ok = transfer.ValidSHA256(sha256) && (slices.Contains(counted, suffix) || slices.Contains(stampFiles, suffix))
	return sha256, suffix, ok
}

// files are the files the cache may keep for sha256 and counts in its size.
func (c *Cache) files(sha256 string) []string {
	return c.paths(sha256, counted)
}

// paths are sha256's file with each of suffixes.
func (c *Cache) paths(sha256 string, suffixes []string) []string {
	p := c.Path(sha256)
	out := make([]string, len(suffixes))
	for i, s := range suffixes {
		out[i] = p + s
	}
	return out
}

// removeFiles removes every file the cache keeps for sha256, its stamp
// first, and forgets the stamp; c.mu is held.
func (c *Cache) removeFiles(sha256 string) error {
	if e := c.entries[sha256]; e != nil {
		e.verified, e.durable = nil, false
	}
	return removeAll(append(c.paths(sha256, stampFiles), c.files(sha256)...))
}

// removeAll removes the files at paths, those missing already too.
func removeAll(paths []string) error {
	var errs []error
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Acquire returns the path of the file with that sha256, verified, fetching
// it when the cache lacks it or holds a damaged copy. Callers asking for the
// same file at once share one fetch; progress tells how the download goes
// (it is not called for a file served from the cache). When ctx ends, the
// caller stops waiting; the download goes on for the others still waiting,
// and stops (its partial file kept for a later resume) when none is left.
//
// The file is held until release is called: hold it as long as anything
// uses it, e.g. a link to it in a run's work folder. A file larger than
// MaxBytes is served all the same: it stays while it is held and is evicted
// when released.
func (c *Cache) Acquire(ctx context.Context, sha256 string, progress transfer.ProgressFunc) (path string, release func(), err error) {
	path, _, release, err = c.AcquireCounted(ctx, sha256, progress)
	return path, release, err
}

// AcquireCounted is Acquire that also tells how many bytes of the file
// crossed the network for it: those the fetch it waited for read from the
// server (an interrupted attempt's included), 0 when the cache held the
// file.
func (c *Cache) AcquireCounted(ctx context.Context, sha256 string, progress transfer.ProgressFunc) (path string, received int64, release func(), err error) {
	if !transfer.ValidSHA256(sha256) {
		return "", 0, nil, fmt.Errorf("update file %q: not a sha256 (want 64 lower-case hex digits)", sha256)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return "", 0, nil, ErrClosed
	}
	// Held from here: nothing evicts the file between its check and its use.
	c.entry(sha256).refs++
	c.mu.Unlock()

	received, err = c.await(ctx, sha256, progress)
	if err != nil {
		c.unref(sha256, false)
		return "", 0, nil, fmt.Errorf("update file %s: %w", sha256, err)
	}
	// The flight recorded this use (see fly); the release records the last.
	var once sync.Once
	return c.Path(sha256), received, func() { once.Do(func() { c.unref(sha256, true) }) }, nil
}

// entry returns the entry of sha256, made when missing; c.mu is held.
func (c *Cache) entry(sha256 string) *entry {
	e := c.entries[sha256]
	if e == nil {
		e = &entry{}
		c.entries[sha256] = e
	}
	return e
}

// unref drops one hold; used marks a use of the file (a release after
// serving it). A file no longer held may be evicted.
func (c *Cache) unref(sha256 string, used bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[sha256]
	if e == nil {
		return
	}
	e.refs--
	if used {
		c.touch(sha256)
	}
	if e.refs == 0 && e.size == 0 && c.flights[sha256] == nil {
		delete(c.entries, sha256)
	}
	c.trim()
}

// touch records a use of sha256 now, in memory and as the file's
// modification time; c.mu is held, so no fetch reads the stamp meanwhile.
// Setting the time moves the file's change time too: a file still as it
// was verified is stamped anew after it, so the cache's own touch costs no
// hash, and one written since loses its stamp and is hashed when next
// served. The new stamp is kept beside the file only when its data is
// durable; until its background sync ends, a file has its stamp in memory
// only (see remember).
func (c *Cache) touch(sha256 string) {
	now := c.cfg.Now()
	e := c.entry(sha256)
	e.lastUse = now
	path := c.Path(sha256)
	before, ok := statStamp(path)
	unwritten := ok && e.verified != nil && before == *e.verified
	if err := os.Chtimes(path, now, now); err != nil && !errors.Is(err, fs.ErrNotExist) {
		// The order survives in memory; only a restart would forget it.
		c.log.Warn("recording the last use of a cached file failed", "sha256", sha256, "error", err)
	}
	e.verified = nil
	if unwritten {
		if after, ok := statStamp(path); ok {
			e.verified = &after
		}
	}
	if e.verified == nil {
		e.durable = false
	}
	c.keepStamp(sha256, e)
}

// await joins the flight of sha256, starting one when none is under way,
// and waits for it or for ctx; it returns the bytes the flight received.
func (c *Cache) await(ctx context.Context, sha256 string, progress transfer.ProgressFunc) (int64, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, ErrClosed
		}
		f := c.flights[sha256]
		if f != nil && f.ctx.Err() != nil {
			// Every waiter gave up and the fetch is stopping: start a new one
			// once it is gone, rather than join it and share its cancel.
			c.mu.Unlock()
			select {
			case <-f.done:
				continue
			case <-ctx.Done():
				return 0, context.Cause(ctx)
			}
		}
		joined := f != nil
		if f == nil {
			// Not the caller's ctx: one caller giving up must not stop the
			// download the others wait for. Its values (e.g. metadata) stay.
			fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			f = &flight{ctx: fctx, cancel: cancel, done: make(chan struct{}),
				waiters: make(map[*waiter]struct{}), watchers: make(map[*waiter]struct{})}
			c.flights[sha256] = f
			c.wg.Add(1)
		}
		w := &waiter{progress: progress}
		f.waiters[w] = struct{}{}
		f.watch(w, true)
		// Under mu, so the call is the flight's: a new key starts f's fetch,
		// an existing one is f's (see flights).
		ch := c.group.DoChan(sha256, func() (any, error) { return c.fly(sha256, f) })
		c.mu.Unlock()
		if joined {
			c.log.Info("the update file is being fetched for another run: waiting for it", "sha256", sha256)
		}
		select {
		case res := <-ch:
			c.leave(f, w)
			received, _ := res.Val.(int64)
			return received, res.Err
		case <-ctx.Done():
			c.leave(f, w)
			return 0, context.Cause(ctx)
		}
	}
}

// watch starts or stops telling w the flight's progress.
func (f *flight) watch(w *waiter, on bool) {
	if w.progress == nil {
		return
	}
	f.pmu.Lock()
	defer f.pmu.Unlock()
	if on {
		f.watchers[w] = struct{}{}
	} else {
		delete(f.watchers, w)
	}
}

// report tells every watching waiter's progress function.
func (f *flight) report(done, total int64) {
	f.pmu.Lock()
	ps := make([]transfer.ProgressFunc, 0, len(f.watchers))
	for w := range f.watchers {
		ps = append(ps, w.progress)
	}
	f.pmu.Unlock()
	for _, p := range ps {
		p(done, total)
	}
}

// leave removes a waiter; the last one to leave stops the fetch. Under c.mu,
// so that no caller joins a flight that is being given up (see await).
func (c *Cache) leave(f *flight, w *waiter) {
	f.watch(w, false)
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(f.waiters, w)
	if len(f.waiters) == 0 {
		f.cancel()
	}
}

// fly is the shared fetch of sha256: it verifies the cached file and
// downloads it when missing or damaged, and returns the bytes it received.
func (c *Cache) fly(sha256 string, f *flight) (int64, error) {
	defer c.wg.Done()
	received, err := c.fetch(f.ctx, sha256, f.report)

	c.mu.Lock()
	delete(c.flights, sha256)
	c.group.Forget(sha256)
	c.restat(sha256)
	if err == nil {
		// A use by the waiters (and fresh, should they all have given up).
		c.touch(sha256)
	}
	c.trim()
	c.mu.Unlock()
	f.cancel()
	close(f.done)
	return received, err
}

// fetch makes sure the cache holds a verified copy of sha256, and returns
// the bytes it received from the server for it.
func (c *Cache) fetch(ctx context.Context, sha256 string, progress transfer.ProgressFunc) (int64, error) {
	path := c.Path(sha256)
	// Taken before the file is read: a write while it is hashed shows in
	// the stamp remembered.
	info, err := os.Stat(path)
	if err == nil {
		ok, err := c.verify(ctx, sha256, info)
		if ok || err != nil {
			return 0, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("verify the cached file %s: %w", path, err)
	}
	received, err := c.download(ctx, sha256, progress)
	if err != nil {
		return 0, err
	}
	// pkg/transfer verified the file as it wrote it, just now.
	if info, err := os.Stat(path); err == nil {
		c.remember(sha256, info)
	}
	return received, nil
}

// verify tells whether the cached file of sha256, in the state info, is
// one to serve: unwritten since it last hashed to its name, or hashing to
// it now. A damaged file is removed (ok false, to fetch it again).
func (c *Cache) verify(ctx context.Context, sha256 string, info fs.FileInfo) (ok bool, err error) {
	if c.unchanged(sha256, info) {
		c.log.Debug("update file served from the cache, unwritten since it was verified", "sha256", sha256, "size", info.Size())
		return true, nil
	}
	path := c.Path(sha256)
	c.hashes.Add(1)
	sum, size, err := transfer.HashFile(ctx, path)
	switch {
	case err == nil && sum == sha256:
		c.log.Debug("update file served from the cache", "sha256", sha256, "size", size)
		c.remember(sha256, info)
		return true, nil
	case err == nil:
		// Never served: a damaged file would fail (or worse, pass) a run.
		c.log.Warn("damaged cached file: fetching it again", "sha256", sha256, "hashes_to", sum, "size", size)
		// Its stamp goes with it (the one in memory, if any, is of another
		// state: else the file would not have been hashed).
		if err := removeAll(append(c.paths(sha256, stampFiles), path, path+IndexSuffix)); err != nil {
			return false, fmt.Errorf("remove the damaged cached file: %w", err)
		}
		return false, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case ctx.Err() != nil:
		return false, context.Cause(ctx)
	default:
		return false, fmt.Errorf("verify the cached file %s: %w", path, err)
	}
}

// download fetches sha256 into the cache. A failure a new attempt may not
// meet (the server, or the replica the agent reached, went away: the next
// attempt reaches another) is tried again, resuming from what the last
// attempt wrote, until RetryFor has passed.
func (c *Cache) download(ctx context.Context, sha256 string, progress transfer.ProgressFunc) (int64, error) {
	bo := &backoff.ExponentialBackOff{InitialInterval: c.cfg.RetryBackoff, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: 10 * c.cfg.RetryBackoff}
	return backoff.Retry(ctx, func() (int64, error) {
		received, err := c.downloadOnce(ctx, sha256, progress)
		if err != nil && status.Code(err) != codes.Unavailable {
			return 0, backoff.Permanent(err)
		}
		return received, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(c.cfg.RetryFor), backoff.WithNotify(func(err error, next time.Duration) {
		c.log.Warn("download interrupted; resuming", "sha256", sha256, "retry_in", next.Round(time.Millisecond), "error", err)
	}))
}

// downloadOnce makes one attempt at the download, and returns the bytes of
// the file that came from the server (by this attempt or, resumed, by the
// ones before).
func (c *Cache) downloadOnce(ctx context.Context, sha256 string, progress transfer.ProgressFunc) (int64, error) {
	if src, ok := c.cfg.Source.(DeltaSource); ok {
		// With no candidates too: the file then comes whole, and its chunk
		// index with it, kept for the next version's delta.
		have, release := c.candidates(ctx, sha256)
		defer release()
		return c.fetchDelta(ctx, src, sha256, have, progress)
	}
	c.log.Info("downloading file", "sha256", sha256)
	if err := c.cfg.Source.Download(ctx, sha256, c.Path(sha256), progress); err != nil {
		return 0, fmt.Errorf("download into the cache: %w", err)
	}
	// All of it came from the server, if over several attempts.
	info, err := os.Stat(c.Path(sha256))
	if err != nil {
		return 0, err
	}
	return info.Size(), nil
}

// restat updates the size of sha256 from what is on disk; c.mu is held.
func (c *Cache) restat(sha256 string) {
	e := c.entry(sha256)
	var size int64
	for _, p := range c.files(sha256) {
		if info, err := os.Stat(p); err == nil {
			size += info.Size()
		}
	}
	c.used += size - e.size
	e.size = size
	if e.refs == 0 && size == 0 {
		delete(c.entries, sha256)
	}
}

// trim evicts files no run holds, least recently used first, until the
// cache is within its cap; c.mu is held.
func (c *Cache) trim() {
	if c.cfg.MaxBytes == 0 || c.used <= c.cfg.MaxBytes {
		return
	}
	var victims []string
	for sha, e := range c.entries {
		if e.refs == 0 && c.flights[sha] == nil {
			victims = append(victims, sha)
		}
	}
	slices.SortFunc(victims, func(a, b string) int {
		return cmp.Or(c.entries[a].lastUse.Compare(c.entries[b].lastUse), strings.Compare(a, b))
	})
	for _, sha := range victims {
		if c.used <= c.cfg.MaxBytes {
			return
		}
		e := c.entries[sha]
		if err := c.removeFiles(sha); err != nil {
			c.log.Warn("evicting a cached file failed: the cache stays above its cap", "sha256", sha, "error", err)
			c.restat(sha)
			continue
		}
		c.used -= e.size
		delete(c.entries, sha)
		c.log.Info("evicted from the update cache", "sha256", sha, "size", humanize.IBytes(uint64(e.size)),
			"last_use", e.lastUse.UTC().Format(time.RFC3339))
	}
	if c.used > c.cfg.MaxBytes {
		c.log.Info("the update cache stays above its cap: the rest is in use by runs",
			"bytes", c.used, "max_bytes", c.cfg.MaxBytes)
	}
}

// Usage returns the bytes the cache holds on disk and how many files.
func (c *Cache) Usage() (bytes int64, files int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.size > 0 {
			files++
		}
	}
	return c.used, files
}

// Close stops the downloads under way (their partial files stay, for the
// next agent to resume) and waits for them, then for the background syncs
// of the files fetched: those write pages the system would write anyway,
// and a file whose stamp is kept is not hashed again by the next agent.
// Acquire fails after Close.
func (c *Cache) Close() {
	c.mu.Lock()
	c.closed = true
	for _, f := range c.flights {
		f.cancel()
	}
	c.mu.Unlock()
	c.wg.Wait()
	c.syncs.Wait()
}
