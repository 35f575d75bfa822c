package conn

import (
	"sync"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// runKey names one lease of a run: lines travel with the token they were logged under.
type runKey struct {
	run   string
	token int64
}

// logQueue holds log lines until the server acknowledges them, per run in
// arrival order, bounded: beyond max lines the oldest are dropped, so a flood
// of log lines costs memory, never a stalled pipeline.
type logQueue struct {
	max    int
	logger hclog.Logger
	// wake has room for one signal: adding lines never blocks on the flusher.
	wake chan struct{}

	mu sync.Mutex
	// changed is closed and replaced whenever lines leave the queue.
	changed chan struct{}
	order   []runKey
	lines   map[runKey][]*osvcv1.LogLine
	total   int
	dropped int
}

func newLogQueue(max int, logger hclog.Logger) *logQueue {
	return &logQueue{
		max:     max,
		logger:  logger,
		wake:    make(chan struct{}, 1),
		changed: make(chan struct{}),
		lines:   make(map[runKey][]*osvcv1.LogLine),
	}
}

func (q *logQueue) add(run string, token int64, lines []*osvcv1.LogLine) {
	if len(lines) == 0 {
		return
	}
	k := runKey{run, token}
	q.mu.Lock()
	if _, ok := q.lines[k]; !ok {
		q.order = append(q.order, k)
	}
	q.lines[k] = append(q.lines[k], lines...)
	q.total += len(lines)
	dropped := 0
	for q.total > q.max && len(q.order) > 0 {
		oldest := q.order[0]
		n := min(q.total-q.max, len(q.lines[oldest]))
		q.lines[oldest] = q.lines[oldest][n:]
		q.total -= n
		dropped += n
		if len(q.lines[oldest]) == 0 {
			q.removeLocked(oldest)
		}
	}
	if dropped > 0 {
		q.notifyLocked()
	}
	q.dropped += dropped
	q.mu.Unlock()
	if dropped > 0 {
		q.logger.Warn("log queue full, dropped the oldest lines", "dropped", dropped, "run", run)
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *logQueue) notifyLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// pending tells whether lines of the run's lease are queued, and a channel
// closed when that may have changed.
func (q *logQueue) pending(k runKey) (bool, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.lines[k]) > 0, q.changed
}

func (q *logQueue) removeLocked(k runKey) {
	delete(q.lines, k)
	for i, o := range q.order {
		if o == k {
			q.order = append(q.order[:i], q.order[i+1:]...)
			break
		}
	}
}

// next returns the next batch to send, nil when the queue is empty. The lines
// stay queued until acked.
func (q *logQueue) next() *osvcv1.LogBatch {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.order) == 0 {
		return nil
	}
	k := q.order[0]
	var batch []*osvcv1.LogLine
	size := 0
	for _, l := range q.lines[k] {
		s := proto.Size(l)
		if len(batch) > 0 && (len(batch) >= maxBatchLines || size+s > maxBatchBytes) {
			break
		}
		batch = append(batch, l)
		size += s
	}
	return &osvcv1.LogBatch{Run: k.run, FencingToken: k.token, Lines: batch}
}

// acked removes the batch's lines: those of its run up to its last sequence
// (lines dropped meanwhile are simply gone).
func (q *logQueue) acked(b *osvcv1.LogBatch) {
	if len(b.GetLines()) == 0 {
		return
	}
	last := b.GetLines()[len(b.GetLines())-1].GetSequence()
	k := runKey{b.GetRun(), b.GetFencingToken()}
	q.mu.Lock()
	defer q.mu.Unlock()
	lines := q.lines[k]
	n := 0
	for n < len(lines) && lines[n].GetSequence() <= last {
		n++
	}
	q.lines[k] = lines[n:]
	q.total -= n
	if len(q.lines[k]) == 0 {
		q.removeLocked(k)
	}
	q.notifyLocked()
}

// drop forgets every queued line of the run's lease.
func (q *logQueue) drop(run string, token int64) {
	k := runKey{run, token}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.total -= len(q.lines[k])
	q.removeLocked(k)
	q.notifyLocked()
}

// len is the number of queued lines.
func (q *logQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total
}
