package servicing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/store"
)

const (
	// A watch message stays well under gRPC's 4 MiB default.
	maxWatchLines     = 1000
	maxWatchLineBytes = 1 << 20
	logChunksPerRead  = 64
)

// WatchRun calls send with the run and its stored log lines after afterSeq,
// then with each change of the run and the lines added since, and returns nil
// once it has sent the run in a final state. Log lines do not rewrite the
// run: each batch is written in the same transaction as the run's log
// count, so watching the run and its log count sees every new line.
func (s *Service) WatchRun(ctx context.Context, name string, afterSeq int64, send func(*osvcv1.Run, []*osvcv1.LogLine) error) error {
	id, err := RunID(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	last := max(afterSeq, 0)
	for {
		run, count, rev, err := s.readRun(ctx, name, id)
		if err != nil {
			return err
		}
		done, err := s.sendRun(ctx, id, run, count, rev, &last, send)
		if err != nil || done {
			return err
		}
		done, err = s.followRun(ctx, name, id, run, count, rev, &last, send)
		if err != nil || done {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// followRun sends the run again at each change of the run or of its log
// count after rev, and returns true once it has sent the run in a final
// state, false when the watch broke (a compacted history, a lost
// connection): the caller starts again from a fresh snapshot.
func (s *Service) followRun(ctx context.Context, name, id string, run *osvcv1.Run, count, rev int64, last *int64, send func(*osvcv1.Run, []*osvcv1.LogLine) error) (bool, error) {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	runKey := s.store.RunKey(id)
	runs := s.client.Watch(ctx, runKey, clientv3.WithRev(rev+1))
	// The count's key is deleted when the run ends, which the run says.
	counts := s.client.Watch(ctx, s.store.LogCountKey(id), clientv3.WithRev(rev+1), clientv3.WithFilterDelete())
	for {
		var wresp clientv3.WatchResponse
		var ok bool
		select {
		case wresp, ok = <-runs:
		case wresp, ok = <-counts:
		}
		if !ok || wresp.CompactRevision != 0 || wresp.Err() != nil {
			s.logger.Debug("run watch restarts from a fresh snapshot", "run", name, "error", wresp.Err())
			return false, nil
		}
		for _, ev := range wresp.Events {
			var err error
			switch {
			case string(ev.Kv.Key) != runKey:
				count, err = logCountOf(ev.Kv.Value)
			case ev.Type == clientv3.EventTypeDelete:
				return false, fmt.Errorf("run %s was deleted: %w", name, errdefs.ErrNotFound)
			default:
				run, err = store.Unmarshal[*osvcv1.Run](ev.Kv.Value)
			}
			if err != nil {
				return false, err
			}
			done, err := s.sendRun(ctx, id, run, count, ev.Kv.ModRevision, last, send)
			if err != nil || done {
				return done, err
			}
		}
	}
}

// SnapshotRun calls send with the run as it is now and its stored log lines
// after afterSeq, in as many calls as keep each message small, and returns:
// WatchRun without the following, for a reader who wants what exists.
func (s *Service) SnapshotRun(ctx context.Context, name string, afterSeq int64, send func(*osvcv1.Run, []*osvcv1.LogLine) error) error {
	id, err := RunID(name)
	if err != nil {
		return err
	}
	ctx = clientv3.WithRequireLeader(ctx)
	run, count, rev, err := s.readRun(ctx, name, id)
	if err != nil {
		return err
	}
	last := max(afterSeq, 0)
	_, err = s.sendRun(ctx, id, run, count, rev, &last, send)
	return err
}

// readRun reads the run and its log count (0 when it has no key) at one
// revision, which it returns.
func (s *Service) readRun(ctx context.Context, name, id string) (run *osvcv1.Run, count, rev int64, err error) {
	resp, err := s.client.Txn(ctx).Then(clientv3.OpGet(s.store.RunKey(id)), clientv3.OpGet(s.store.LogCountKey(id))).Commit()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("read %s: %w", name, err)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, 0, 0, fmt.Errorf("run %s: %w", name, errdefs.ErrNotFound)
	}
	if run, err = store.Unmarshal[*osvcv1.Run](kvs[0].Value); err != nil {
		return nil, 0, 0, fmt.Errorf("read %s: %w", name, err)
	}
	if counts := resp.Responses[1].GetResponseRange().GetKvs(); len(counts) == 1 {
		if count, err = logCountOf(counts[0].Value); err != nil {
			return nil, 0, 0, fmt.Errorf("log count of %s: %w", name, err)
		}
	}
	return run, count, resp.Header.Revision, nil
}

// sendRun sends the run as of rev, counting count log lines unless it
// counts more itself, with its log lines after *last.
func (s *Service) sendRun(ctx context.Context, runID string, run *osvcv1.Run, count, rev int64, last *int64, send func(*osvcv1.Run, []*osvcv1.LogLine) error) (bool, error) {
	run = countingLines(run, count)
	var lines []*osvcv1.LogLine
	if run.GetLogLineCount() > *last {
		var err error
		lines, err = s.readLogs(ctx, runID, *last, rev)
		if errors.Is(err, rpctypes.ErrCompacted) {
			lines, err = s.readLogs(ctx, runID, *last, 0)
		}
		if err != nil {
			return false, err
		}
	}
	// Split the lines so every message stays small; each carries the run.
	for first := true; first || len(lines) > 0; first = false {
		n, size := 0, 0
		for n < len(lines) && n < maxWatchLines {
			size += proto.Size(lines[n])
			if n > 0 && size > maxWatchLineBytes {
				break
			}
			n++
		}
		if err := send(run, lines[:n]); err != nil {
			return false, err
		}
		if n > 0 {
			*last = lines[n-1].GetSequence()
		}
		lines = lines[n:]
	}
	return IsFinal(run.GetState()), nil
}

// readLogs returns the stored lines of a run after sequence after, as of rev
// (0: now). Chunks are keyed by their first sequence, so the chunk that may
// straddle after is the last one keyed at or before it.
func (s *Service) readLogs(ctx context.Context, runID string, after int64, rev int64) ([]*osvcv1.LogLine, error) {
	prefix := s.store.LogsPrefix(runID)
	start := s.store.LogKey(runID, after+1)
	var revOpt []clientv3.OpOption
	if rev > 0 {
		revOpt = append(revOpt, clientv3.WithRev(rev))
	}
	var out []*osvcv1.LogLine
	keep := func(value []byte) error {
		lines, err := decodeLogChunk(value)
		if err != nil {
			return err
		}
		for _, l := range lines {
			if l.GetSequence() > after {
				out = append(out, l)
			}
		}
		return nil
	}
	if after > 0 {
		resp, err := s.client.Get(ctx, prefix, append([]clientv3.OpOption{
			clientv3.WithRange(start), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1),
		}, revOpt...)...)
		if err != nil {
			return nil, err
		}
		for _, kv := range resp.Kvs {
			if err := keep(kv.Value); err != nil {
				return nil, err
			}
		}
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	for {
		resp, err := s.client.Get(ctx, start, append([]clientv3.OpOption{
			clientv3.WithRange(end), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(logChunksPerRead),
		}, revOpt...)...)
		if err != nil {
			return nil, err
		}
		for _, kv := range resp.Kvs {
			if err := keep(kv.Value); err != nil {
				return nil, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		if rev == 0 {
			// Page through one revision, so chunks never show up twice.
			rev = resp.Header.Revision
			revOpt = []clientv3.OpOption{clientv3.WithRev(rev)}
		}
	}
}

// PruneLogs deletes the stored log lines of the runs that ended before
// cutoff, so logs are kept for a retention period and not forever. The runs
// themselves stay, with their log_line_count. It reads the ended-run index up
// to the cutoff, not every run, and removes each entry it handled. It
// returns how many runs lost their lines.
func (s *Service) PruneLogs(ctx context.Context, cutoff time.Time) (int, error) {
	pruned := 0
	end := s.store.EndedRunKey(cutoff, "")
	for {
		resp, err := s.client.Get(ctx, s.store.EndedRunsPrefix(), clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithLimit(logChunksPerRead), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return pruned, fmt.Errorf("prune logs: %w", err)
		}
		for _, kv := range resp.Kvs {
			id := store.IDFromKey(string(kv.Key))
			del, err := s.client.Txn(ctx).Then(
				clientv3.OpDelete(s.store.LogsPrefix(id), clientv3.WithPrefix()),
				clientv3.OpDelete(string(kv.Key)),
			).Commit()
			if err != nil {
				return pruned, fmt.Errorf("prune logs of runs/%s: %w", id, err)
			}
			if del.Responses[0].GetResponseDeleteRange().GetDeleted() > 0 {
				pruned++
			}
		}
		if !resp.More {
			break
		}
	}
	if pruned > 0 {
		s.logger.Info("old run logs pruned", "runs", pruned, "ended_before", cutoff)
	}
	return pruned, nil
}

// Reindex writes the image-run and ended-run index keys of every run, for
// data stored before those indexes existed. It is idempotent.
func (s *Service) Reindex(ctx context.Context) (int, error) {
	n, token := 0, ""
	for {
		page, next, err := store.List[*osvcv1.Run](ctx, s.store, s.store.RunsPrefix(), 1000, token)
		if err != nil {
			return n, fmt.Errorf("reindex runs: %w", err)
		}
		for _, run := range page {
			runID, err := RunID(run.GetName())
			if err != nil {
				continue
			}
			imageID, err := catalog.ImageID(run.GetImage())
			if err != nil {
				continue
			}
			ops := []clientv3.Op{clientv3.OpPut(s.store.ImageRunKey(imageID, runID), "")}
			if IsFinal(run.GetState()) && run.GetEndTime() != nil {
				ops = append(ops, clientv3.OpPut(s.store.EndedRunKey(run.GetEndTime().AsTime(), runID), ""))
			}
			if _, err := s.client.Txn(ctx).Then(ops...).Commit(); err != nil {
				return n, fmt.Errorf("reindex %s: %w", run.GetName(), err)
			}
			n++
		}
		if next == "" {
			return n, nil
		}
		token = next
	}
}
