package servicing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/store"
)

const (
	// maxLogChunkBytes bounds the lines of one stored chunk, before
	// compression, well under the store's value limit; a big batch becomes
	// several chunks.
	maxLogChunkBytes = 256 << 10
	// maxLogLineBytes truncates a single runaway line.
	maxLogLineBytes = 16 << 10
	// maxLogTxnBytes bounds the chunk values one log transaction writes:
	// with their keys, the count and the compares, the request stays under
	// etcd's limit (1.5 MiB unless --max-request-bytes raises it).
	maxLogTxnBytes = store.MaxValueBytes
	// maxLogChunksPerTxn keeps a log transaction far from etcd's 128
	// operations: each chunk is a put and a compare.
	maxLogChunksPerTxn = 32
	// logProgressEvery is how often log lines alone are written into the
	// run as its progress: often enough for any stall timeout of minutes,
	// rarely enough that storing lines does not rewrite the run.
	logProgressEvery = time.Minute
)

// ReportLogs stores a batch of log lines. The agent numbers the lines of its
// attempt from 1; they are stored after the lines of the run's earlier
// attempts (the attempt's log base, fixed at its first batch). A line whose
// sequence is already in (a resent batch) is skipped, so every line is
// stored once. Lines past MaxLogLines are counted and dropped. A batch that
// follows a line the server does not hold (follows_sequence) is refused
// with ErrOutOfRange: an earlier batch in flight failed, and the agent sends
// both again.
//
// The lines are written as chunks of at most maxLogChunkBytes, as many as fit
// in one etcd request per transaction. Each transaction compares the fencing
// token (the assignment's revision and agent) and the run's log count, and
// writes the chunks and the count, not the run: a batch of thousands of
// lines is one etcd write. The lines count as the run's progress, written
// into the run at most once per logProgressEvery (or at once, to clear a
// stall or to start a LEASED run).
func (s *Service) ReportLogs(ctx context.Context, agent string, m *osvcv1.LogBatch) error {
	for _, l := range m.GetLines() {
		if l.GetSequence() <= 0 {
			return errdefs.InvalidArgument("log_batch.lines.sequence", "number the log lines of a run from 1")
		}
	}
	if m.GetFollowsSequence() < 0 {
		return errdefs.InvalidArgument("log_batch.follows_sequence", "send the sequence of the line the batch follows, or 0")
	}
	runID, err := idFromName("run", m.GetRun(), runsCollection)
	if err != nil {
		return err
	}
	countKey := s.store.LogCountKey(runID)
	in := sortedBySequence(m.GetLines())
	for {
		var done bool
		var dropped int64
		_, err := s.fenced(ctx, agent, m.GetRun(), m.GetFencingToken(), func(ch *change) error {
			count, err := s.logCount(ch, runID, m.GetFencingToken())
			if err != nil {
				return err
			}
			if f := m.GetFollowsSequence(); f > 0 && count.GetBase()+f > count.GetLines() {
				return fmt.Errorf("run %s holds this attempt's log lines up to %d, and the batch follows line %d: send the lines after %d again: %w",
					m.GetRun(), count.GetLines()-count.GetBase(), f, count.GetLines()-count.GetBase(), errdefs.ErrOutOfRange)
			}
			lines := renumbered(in, count.GetBase(), count.GetLines())
			if len(lines) == 0 {
				done = true
				return errNoChange
			}
			taken, d, err := s.putLogChunks(ch, runID, count, lines)
			if err != nil {
				return err
			}
			done, dropped = taken == len(lines), d
			if err := ch.tx.Put(countKey, count); err != nil {
				return err
			}
			if ch.run.GetStalled() || s.now().Sub(LastProgress(ch.run)) >= logProgressEvery {
				return nil
			}
			return errNoChange
		}, countKey)
		if err != nil {
			return err
		}
		if dropped > 0 && s.droppedLogLines.Add(dropped) == dropped {
			s.logger.Warn("run reached the log line cap, dropping further lines", "run", m.GetRun(), "cap", s.maxLogLines)
		}
		if done {
			return nil
		}
	}
}

// logCount reads the run's log count within ch's transaction, with the base
// of the attempt leased with token: at the attempt's first batch, the lines
// the earlier attempts counted. A run whose count has no key yet (its first
// batch, or a run an older server counted in the run itself) starts from
// the run's log_line_count and, for an attempt an older server leased, from
// the base that server wrote with the lease.
func (s *Service) logCount(ch *change, runID string, token int64) (*storev1.LogCount, error) {
	count, err := store.Load[*storev1.LogCount](ch.tx, s.store.LogCountKey(runID))
	if errors.Is(err, errdefs.ErrNotFound) {
		count = &storev1.LogCount{Lines: ch.run.GetLogLineCount()}
		base, ok, err := s.leasedLogBase(ch.tx, runID, token)
		if err != nil {
			return nil, err
		}
		if ok {
			count.FencingToken, count.Base = token, base
		}
	} else if err != nil {
		return nil, fmt.Errorf("log lines of runs/%s: %w", runID, err)
	}
	if count.GetFencingToken() != token {
		count.FencingToken, count.Base = token, count.GetLines()
	}
	return count, nil
}

// leasedLogBase is the log base an older server's lease wrote for the
// attempt leased with token: the key is that lease's when it was written in
// its transaction, whose revision is the token.
func (s *Service) leasedLogBase(tx *store.Tx, runID string, token int64) (int64, bool, error) {
	key := s.store.LogBaseKey(runID)
	if rev, err := tx.Revision(key); err != nil || rev != token {
		return 0, false, err
	}
	base, err := store.Load[*wrapperspb.Int64Value](tx, key)
	if err != nil {
		return 0, false, fmt.Errorf("log lines of runs/%s: %w", runID, err)
	}
	return base.GetValue(), true, nil
}

// putLogChunks asks ch's transaction to write lines (numbered for the run,
// all after count.lines, in order) as chunks, as many as fit in one etcd
// request, and advances count over them. It returns how many lines it took
// and how many of those it dropped past MaxLogLines.
func (s *Service) putLogChunks(ch *change, runID string, count *storev1.LogCount, lines []*osvcv1.LogLine) (taken int, dropped int64, err error) {
	size := 0
	for chunks := 0; taken < len(lines) && chunks < maxLogChunksPerTxn; chunks++ {
		chunk, d, n := s.nextChunk(lines[taken:])
		if len(chunk) > 0 {
			data, err := s.encodeLogChunk(chunk)
			if err != nil {
				return 0, 0, err
			}
			if size > 0 && size+len(data) > maxLogTxnBytes {
				break // the next transaction's
			}
			key := s.store.LogKey(runID, chunk[0].GetSequence())
			// Lines past the count are new, so is their chunk: compared
			// absent, never read, never overwritten.
			if !ch.tx.AssumeAbsent(key) {
				return 0, 0, fmt.Errorf("log chunk %s is stored already although the run counts %d lines: %w", key, count.GetLines(), errdefs.ErrInternal)
			}
			ch.tx.PutRaw(key, data)
			size += len(data)
		}
		taken += n
		dropped += d
		count.Lines = lines[taken-1].GetSequence()
	}
	return taken, dropped, nil
}

// sortedBySequence returns lines sorted by sequence, each sequence once.
func sortedBySequence(in []*osvcv1.LogLine) []*osvcv1.LogLine {
	lines := slices.Clone(in)
	slices.SortStableFunc(lines, func(a, b *osvcv1.LogLine) int { return cmp.Compare(a.GetSequence(), b.GetSequence()) })
	return slices.CompactFunc(lines, func(a, b *osvcv1.LogLine) bool { return a.GetSequence() == b.GetSequence() })
}

// renumbered returns the lines of sorted (sorted by sequence, each once)
// numbered after base that come after stored, copied when renumbered.
func renumbered(sorted []*osvcv1.LogLine, base, stored int64) []*osvcv1.LogLine {
	i, _ := slices.BinarySearchFunc(sorted, stored-base+1, func(l *osvcv1.LogLine, seq int64) int { return cmp.Compare(l.GetSequence(), seq) })
	lines := sorted[i:]
	if base == 0 {
		return lines
	}
	out := make([]*osvcv1.LogLine, len(lines))
	for j, l := range lines {
		l = proto.Clone(l).(*osvcv1.LogLine)
		l.Sequence += base
		out[j] = l
	}
	return out
}

// nextChunk takes the lines at the start of lines that fit in one stored
// chunk: the chunk, how many lines past MaxLogLines it dropped, and how many
// lines it took in all.
func (s *Service) nextChunk(lines []*osvcv1.LogLine) (chunk []*osvcv1.LogLine, dropped int64, taken int) {
	size := 0
	for _, l := range lines {
		if l.GetSequence() > s.maxLogLines {
			dropped++
			taken++
			continue
		}
		l = normalizeLine(l, s.now)
		sz := proto.Size(l) + 8
		if size > 0 && size+sz > maxLogChunkBytes {
			break
		}
		size += sz
		chunk = append(chunk, l)
		taken++
	}
	return chunk, dropped, taken
}

func normalizeLine(l *osvcv1.LogLine, now func() time.Time) *osvcv1.LogLine {
	if l.Time != nil && len(l.GetMessage()) <= maxLogLineBytes {
		return l
	}
	l = proto.Clone(l).(*osvcv1.LogLine)
	if l.Time == nil {
		l.Time = timestamppb.New(now())
	}
	l.Message = truncateWith(l.Message, maxLogLineBytes, "…")
	return l
}

// logCountOf returns the lines a log count key's value counts.
func logCountOf(value []byte) (int64, error) {
	count, err := store.Unmarshal[*storev1.LogCount](value)
	if err != nil {
		return 0, err
	}
	return count.GetLines(), nil
}

// withLogCount returns run with the lines its log count key counts (value,
// nil when the key is absent): the key is ahead of the run while it goes.
func withLogCount(run *osvcv1.Run, value []byte) (*osvcv1.Run, error) {
	if value == nil {
		return run, nil
	}
	n, err := logCountOf(value)
	if err != nil {
		return nil, fmt.Errorf("log count of %s: %w", run.GetName(), err)
	}
	return countingLines(run, n), nil
}

// countingLines returns run counting n log lines unless it counts more
// itself, copied when that changes it.
func countingLines(run *osvcv1.Run, n int64) *osvcv1.Run {
	if n <= run.GetLogLineCount() {
		return run
	}
	run = proto.Clone(run).(*osvcv1.Run)
	run.LogLineCount = n
	return run
}

// fillLogCounts sets the log_line_count of the runs that have not ended from
// their log count keys, read in one round trip per hundred runs.
func (s *Service) fillLogCounts(ctx context.Context, runs []*osvcv1.Run) error {
	var keys []string
	var at []int
	for i, run := range runs {
		if IsFinal(run.GetState()) {
			continue
		}
		id, err := RunID(run.GetName())
		if err != nil {
			continue
		}
		keys = append(keys, s.store.LogCountKey(id))
		at = append(at, i)
	}
	if len(keys) == 0 {
		return nil
	}
	kvs, err := store.GetManyRaw(ctx, s.store, keys)
	if err != nil {
		return fmt.Errorf("log counts: %w", err)
	}
	for j, kv := range kvs {
		if kv == nil {
			continue
		}
		if runs[at[j]], err = withLogCount(runs[at[j]], kv.Value); err != nil {
			return err
		}
	}
	return nil
}

// moveLogCount puts the run's log count into the run and deletes its key,
// within ch's transaction: the run is ending, no line comes after.
func (s *Service) moveLogCount(ch *change, runID string) error {
	key := s.store.LogCountKey(runID)
	count, err := store.Load[*storev1.LogCount](ch.tx, key)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("log lines of %s: %w", ch.run.GetName(), err)
	}
	ch.run.LogLineCount = max(ch.run.GetLogLineCount(), count.GetLines())
	ch.tx.Delete(key)
	return nil
}
