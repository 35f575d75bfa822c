package content

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/packagetree"
	"github.com/osvc/osvc/server/store"
)

// Defaults of CollectorConfig.
const (
	// DefaultGrace keeps an unreferenced blob a day: long enough for an
	// upload to be imported or reported, and for replicas' clocks to differ.
	DefaultGrace = 24 * time.Hour
	// DefaultCollectInterval spaces the collector's passes.
	DefaultCollectInterval = time.Hour
	// DefaultCollectorElectionTTL is how long a dead collector blocks another replica's.
	DefaultCollectorElectionTTL = 10 * time.Second
)

// runClockSkew is how far the clock of the replica that recorded a blob may
// be behind the one that leased a run: a blob recorded that much before a
// run's lease still counts as the run's upload.
const runClockSkew = 5 * time.Minute

// collectPageSize is how many keys one read of a pass asks etcd for.
const collectPageSize = 500

// CollectorConfig configures a Collector.
type CollectorConfig struct {
	Store   *store.Store
	Library *Library
	Logger  hclog.Logger
	// ServerID names this replica in the collector's election.
	ServerID string
	// Grace is how long a blob nothing references is kept after its
	// record's create or update time (Content.update_time), whichever is
	// later; default DefaultGrace.
	Grace time.Duration
	// Interval spaces the passes of the elected collector; default
	// DefaultCollectInterval.
	Interval time.Duration
	// ElectionTTL is the TTL of the election session; default
	// DefaultCollectorElectionTTL, at least 1s.
	ElectionTTL time.Duration
	// Now is the clock blobs' ages are measured with; time.Now when nil.
	Now func() time.Time
}

// Collector removes the blobs of the content library that nothing references,
// by mark and sweep: a pass marks every sha256 named by a version of an
// image (for an OS upgrade package kept as a folder tree, its manifest and
// every file the manifest lists), a file of an update, a log file of a run (artifacts, whatever the
// run's state), the result of a run that has not ended or the record of a
// blob (its chunk index), then
// sweeps every blob unmarked, recorded or last claimed more than a grace
// period ago, and not uploaded while a run in progress held its lease.
//
// Nothing about to be referenced is removed:
//   - A blob written during the pass, or since its mark phase read its
//     sources, has a young record: the grace period keeps it.
//   - Whatever starts referencing a blob after the mark phase (an import, a
//     run's result) claims it first (Library.Claim, or a Write answered
//     existed), which sets the record's update time to now: young again. The
//     sweep deletes a record only if it is still at the revision it judged,
//     so a claim that lands between the judgement and the deletion keeps the
//     blob, and one that comes after finds it gone and the caller is told to
//     upload again, before any reference is written.
//   - A run in progress may have uploaded its result (or artifacts) without
//     reporting it yet: blobs recorded or claimed since the lease of a LEASED
//     or IN_PROCESS run are kept until it ends. PENDING runs have uploaded
//     nothing a report could still name: a new attempt uploads again.
//
// A pass then removes what the store holds without a record, stored more
// than a grace period ago (data whose removal failed after its record's, a
// write cut short between the two), and what uploads that never ended left.
//
// One replica collects at a time, elected through etcd like the scheduler,
// but on its own election: a long sweep never delays scheduling, and the
// library need not know the scheduler.
type Collector struct {
	store    *store.Store
	lib      *Library
	logger   hclog.Logger
	serverID string
	grace    time.Duration
	interval time.Duration
	ttl      time.Duration
	now      func() time.Time
	// afterChunkList, for tests, runs between a pass's choice of the
	// chunks to remove and their removal.
	afterChunkList func()
}

// NewCollector validates cfg and returns a Collector.
func NewCollector(cfg CollectorConfig) (*Collector, error) {
	if cfg.Store == nil || cfg.Library == nil {
		return nil, errors.New("content collector: Config.Store and Config.Library are required")
	}
	if cfg.ServerID == "" {
		return nil, errors.New("content collector: Config.ServerID is required; use the replica's host name")
	}
	for name, d := range map[string]time.Duration{"Grace": cfg.Grace, "Interval": cfg.Interval, "ElectionTTL": cfg.ElectionTTL} {
		if d < 0 {
			return nil, fmt.Errorf("content collector: Config.%s is %s; use a positive duration", name, d)
		}
	}
	c := &Collector{
		store:    cfg.Store,
		lib:      cfg.Library,
		logger:   cmp.Or(cfg.Logger, hclog.NewNullLogger()).Named("content-collector"),
		serverID: cfg.ServerID,
		grace:    cmp.Or(cfg.Grace, DefaultGrace),
		interval: cmp.Or(cfg.Interval, DefaultCollectInterval),
		ttl:      cmp.Or(cfg.ElectionTTL, DefaultCollectorElectionTTL),
		now:      cfg.Now,
	}
	if c.ttl < time.Second {
		return nil, fmt.Errorf("content collector: Config.ElectionTTL is %s; use at least 1s", c.ttl)
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// Run campaigns to be the replica that collects and, while it is, runs a
// pass every Interval, until ctx ends.
func (c *Collector) Run(ctx context.Context) error {
	e := store.Election{Prefix: c.store.CollectorElectionPrefix(), ID: c.serverID, TTL: c.ttl, Logger: c.logger}
	return c.store.RunElected(ctx, e, func(ctx context.Context) error {
		for {
			if _, err := c.Collect(ctx); err != nil && ctx.Err() == nil {
				c.logger.Warn("content collection pass failed; trying at the next one", "error", err, "next_in", c.interval)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(c.interval):
			}
		}
	})
}

// Collect runs one mark-and-sweep pass and returns the sha256 of the blobs
// it removed.
func (c *Collector) Collect(ctx context.Context) ([]string, error) {
	m, err := c.mark(ctx)
	if err != nil {
		return nil, fmt.Errorf("content collector: mark: %w", err)
	}
	now := c.now()
	var removed []string
	var kept, young int
	recorded := map[string]bool{}
	err = c.eachContent(ctx, func(sha string, rec *osvcv1.Content, rev int64) error {
		recorded[sha] = true
		last := lastClaim(rec)
		switch {
		case m.shas[sha]:
			kept++
			return nil
		case now.Sub(last) < c.grace:
			young++
			return nil
		case m.uploadedDuringRun(last):
			kept++
			return nil
		}
		ok, err := c.lib.collect(ctx, sha, rev)
		if err != nil {
			return err
		}
		if ok {
			removed = append(removed, sha)
			c.logger.Info("unreferenced blob removed", "sha256", sha, "size", rec.GetSizeBytes(),
				"media_type", rec.GetMediaType(), "last_claimed", last)
		}
		return nil
	})
	if err != nil {
		return removed, fmt.Errorf("content collector: sweep: %w", err)
	}
	orphans, err := c.sweepOrphans(ctx, recorded, now)
	removed = append(removed, orphans...)
	if err != nil {
		return removed, fmt.Errorf("content collector: sweep the store: %w", err)
	}
	stale := c.lib.blobs.RemoveStale(ctx, staleTempAge)
	var chunksRemoved int
	var chunkBytes int64
	if c.lib.chunks != nil {
		if chunksRemoved, chunkBytes, err = c.sweepChunks(ctx, m.chunks, now); err != nil {
			return removed, fmt.Errorf("content collector: sweep the chunks: %w", err)
		}
		stale += c.lib.chunks.RemoveStale(ctx, staleTempAge)
	}
	c.logger.Info("content collection pass done", "removed", len(removed), "orphans", len(orphans), "stale_uploads", stale,
		"referenced", kept, "in_grace", young, "grace", c.grace, "chunks_removed", chunksRemoved, "chunk_bytes_removed", chunkBytes)
	return removed, nil
}

// sweepChunks removes the chunks that no blob recorded at the mark lists
// (live) and that were stored or last touched more than a grace period
// ago, judged again under the chunk's lock (see storeChunks).
func (c *Collector) sweepChunks(ctx context.Context, live map[string]bool, now time.Time) (removed int, bytes int64, err error) {
	locks, done, err := c.lib.chunkLocks(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer done()
	var old []BlobInfo
	err = c.lib.chunks.List(ctx, func(b BlobInfo) error {
		if !live[b.SHA256] && now.Sub(b.ModTime) >= c.grace {
			old = append(old, b)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if c.afterChunkList != nil {
		c.afterChunkList()
	}
	for _, b := range old {
		ok, err := c.lib.collectChunk(ctx, locks, b.SHA256, now.Add(-c.grace))
		if err != nil {
			return removed, bytes, err
		}
		if ok {
			removed++
			bytes += b.SizeBytes
		}
	}
	return removed, bytes, nil
}

// sweepOrphans removes the blobs of the store that have no record, neither
// when the pass read the records nor now, and that were stored more than
// a grace period ago.
func (c *Collector) sweepOrphans(ctx context.Context, recorded map[string]bool, now time.Time) ([]string, error) {
	var removed []string
	err := c.lib.blobs.List(ctx, func(b BlobInfo) error {
		if recorded[b.SHA256] || now.Sub(b.ModTime) < c.grace {
			return nil
		}
		ok, err := c.lib.collectOrphan(ctx, b.SHA256)
		if err != nil {
			return err
		}
		if ok {
			removed = append(removed, b.SHA256)
			c.logger.Info("blob without a record removed", "sha256", b.SHA256, "size", b.SizeBytes, "stored", b.ModTime)
		}
		return nil
	})
	return removed, err
}

// marks is what the mark phase found referenced.
type marks struct {
	shas map[string]bool
	// chunks are the chunks of the blobs recorded as stored as chunks.
	chunks map[string]bool
	// leases are the lease times of the runs in progress.
	leases []time.Time
}

// uploadedDuringRun tells whether a blob last claimed at t may be the upload
// of a run in progress.
func (m *marks) uploadedDuringRun(t time.Time) bool {
	for _, start := range m.leases {
		if !t.Before(start.Add(-runClockSkew)) {
			return true
		}
	}
	return false
}

// mark reads every image, update and run.
func (c *Collector) mark(ctx context.Context) (*marks, error) {
	m := &marks{shas: map[string]bool{}, chunks: map[string]bool{}}
	trees := map[string]bool{}
	err := eachValue(ctx, c.store, c.store.ImagesPrefix(), func(img *osvcv1.Image) {
		for _, v := range img.GetVersions() {
			m.shas[v.GetSha256()] = true
			if tree := v.GetTree().GetSha256(); tree != "" {
				trees[tree] = true
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if err := c.markTrees(ctx, m, trees); err != nil {
		return nil, err
	}
	err = eachValue(ctx, c.store, c.store.UpdatesPrefix(), func(u *osvcv1.Update) {
		for _, f := range u.GetFiles() {
			m.shas[f.GetSha256()] = true
		}
	})
	if err != nil {
		return nil, err
	}
	err = eachValue(ctx, c.store, c.store.RunsPrefix(), func(r *osvcv1.Run) {
		// A run's log files are kept as long as the run names them, ended or not.
		for _, a := range r.GetArtifacts() {
			m.shas[a.GetSha256()] = true
		}
		switch r.GetState() {
		case osvcv1.RunState_RUN_STATE_SUCCEEDED, osvcv1.RunState_RUN_STATE_FAILED, osvcv1.RunState_RUN_STATE_CANCELED:
			return
		case osvcv1.RunState_RUN_STATE_LEASED, osvcv1.RunState_RUN_STATE_IN_PROCESS:
			// A run without a start time protects everything: better late than lost.
			m.leases = append(m.leases, r.GetStartTime().AsTime())
		}
		if sha := r.GetResultSha256(); sha != "" {
			m.shas[sha] = true
		}
	})
	if err != nil {
		return nil, err
	}
	// A blob's chunk index is kept as long as the blob's record: the
	// index of a blob this pass removes goes at the next one.
	err = c.eachContent(ctx, func(_ string, rec *osvcv1.Content, _ int64) error {
		if ref := rec.GetChunkIndex(); ref != nil {
			m.shas[ref.GetSha256()] = true
		}
		if rec.GetStoredAsChunks() {
			return c.markChunks(ctx, m, rec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	delete(m.shas, "")
	return m, nil
}

// markTrees marks the manifests of package trees and every file they list.
// A manifest that cannot be read fails the pass, so no file of a tree is
// ever removed for want of reading its list; one the library no longer
// holds, or that is no manifest (its tree is lost either way), is logged
// and passed over, so one broken version does not stop collection for good.
func (c *Collector) markTrees(ctx context.Context, m *marks, trees map[string]bool) error {
	for sha := range trees {
		m.shas[sha] = true
		t, err := c.lib.ReadTree(ctx, sha)
		if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, packagetree.ErrInvalid) {
			c.logger.Error("an image version names a package tree that cannot be read; its files are not kept for it", "tree", sha, "error", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("read package tree %s: %w", sha, err)
		}
		for _, f := range t.GetFiles() {
			m.shas[f.GetSha256()] = true
		}
	}
	return nil
}

// markChunks marks the chunks of a blob stored as chunks. An index that
// cannot be read fails the pass, so no chunk is ever removed for want of
// reading the list; one the library no longer holds, or that is damaged
// (the blob is lost either way), is logged and passed over.
func (c *Collector) markChunks(ctx context.Context, m *marks, rec *osvcv1.Content) error {
	list, err := c.lib.chunkList(ctx, rec)
	if errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrDataLoss) {
		c.logger.Error("a blob stored as chunks has an index that cannot be read; its chunks are not kept for it", "sha256", rec.GetSha256(), "error", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the chunk index of %s: %w", rec.GetSha256(), err)
	}
	for _, ch := range list {
		m.chunks[hex.EncodeToString(ch.Digest[:])] = true
	}
	return nil
}

// lastClaim is when the blob's record was made or last claimed.
func lastClaim(c *osvcv1.Content) time.Time {
	created, updated := c.GetCreateTime().AsTime(), c.GetUpdateTime().AsTime()
	if c.GetUpdateTime() != nil && updated.After(created) {
		return updated
	}
	return created
}

// eachValue calls fn with every value under prefix, a page at a time.
func eachValue[T proto.Message](ctx context.Context, s *store.Store, prefix string, fn func(T)) error {
	return eachKey(ctx, s, prefix, func(key string, value []byte, _ int64) error {
		v, err := store.Unmarshal[T](value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		fn(v)
		return nil
	})
}

// eachContent calls fn with every content record and its revision.
func (c *Collector) eachContent(ctx context.Context, fn func(sha string, rec *osvcv1.Content, rev int64) error) error {
	return eachKey(ctx, c.store, c.store.ContentsPrefix(), func(key string, value []byte, rev int64) error {
		rec, err := store.Unmarshal[*osvcv1.Content](value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		sha := store.IDFromKey(key)
		if !ValidSHA256(sha) {
			return nil
		}
		return fn(sha, rec, rev)
	})
}

// eachKey calls fn with every key under prefix, its value and revision, a
// page at a time.
func eachKey(ctx context.Context, s *store.Store, prefix string, fn func(key string, value []byte, rev int64) error) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		resp, err := s.Client().Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(collectPageSize))
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, kv := range resp.Kvs {
			if err := fn(string(kv.Key), kv.Value, kv.ModRevision); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// collect removes a blob whose record is still at revision rev: its record
// in a transaction comparing that revision, then its data. It reports false
// when the record changed (a claim) or is gone. It holds the blob's lock, so
// no Write puts the same blob in place meanwhile.
func (l *Library) collect(ctx context.Context, sha string, rev int64) (bool, error) {
	unlock, err := l.lockBlob(ctx, sha)
	if err != nil {
		return false, err
	}
	defer unlock()
	key := l.store.ContentKey(sha)
	deleted, err := l.store.Txn(ctx, "collect content "+sha, func(tx *store.Tx) error {
		if cur, err := tx.Revision(key); err != nil || cur != rev {
			return err
		}
		tx.Delete(key)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("remove the record of %s: %w", sha, err)
	}
	if deleted == 0 {
		return false, nil
	}
	if err := l.blobs.Delete(ctx, sha); err != nil {
		// The record is gone: the data is an orphan that the next write of
		// the same blob replaces, or a later pass removes.
		return true, fmt.Errorf("remove blob %s: %w", sha, err)
	}
	return true, nil
}

// collectOrphan removes a blob the store holds without a record (a record
// whose data could not be removed, a write cut short between the two),
// unless a record appeared since the pass read them. It holds the blob's
// lock, so no Write is between putting the blob in place and recording it.
func (l *Library) collectOrphan(ctx context.Context, sha string) (bool, error) {
	unlock, err := l.lockBlob(ctx, sha)
	if err != nil {
		return false, err
	}
	defer unlock()
	resp, err := l.store.Client().Get(ctx, l.store.ContentKey(sha), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("look up the record of %s: %w", sha, err)
	}
	if resp.Count > 0 {
		return false, nil
	}
	if err := l.blobs.Delete(ctx, sha); err != nil {
		return false, fmt.Errorf("remove blob %s: %w", sha, err)
	}
	return true, nil
}

// collectChunk removes a chunk unless, under its lock, it was stored or
// touched after cutoff: a write reusing it since the mark.
func (l *Library) collectChunk(ctx context.Context, locks *chunkLocks, sha string, cutoff time.Time) (bool, error) {
	unlock, err := locks.lock(ctx, sha)
	if err != nil {
		return false, err
	}
	defer unlock()
	info, err := l.chunks.Stat(ctx, sha)
	if errors.Is(err, errdefs.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if info.ModTime.After(cutoff) {
		return false, nil
	}
	if err := l.chunks.Delete(ctx, sha); err != nil {
		return false, fmt.Errorf("remove chunk %s: %w", sha, err)
	}
	return true, nil
}
