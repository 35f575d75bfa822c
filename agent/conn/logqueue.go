package conn

import (
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// runKey names one lease of a run: lines travel with the token they were logged under.
type runKey struct {
	run   string
	token int64
}

// queuedLine is a log line waiting for its Ack.
type queuedLine struct {
	line *osvcv1.LogLine
	size int
	// at is when it was queued: a batch waits at most the linger for more.
	at time.Time
}

// runLines are the queued lines of one lease of a run, oldest first.
// lines[:sent] went out in batches not acknowledged yet.
type runLines struct {
	lines     []queuedLine
	bytes     int
	sent      int
	sentBytes int
	// lastSent is the sequence of the last line sent since the queue was
	// last rewound: the next batch follows it.
	lastSent int64
	// flush counts the FlushLogs calls waiting for these lines: they go
	// without lingering.
	flush int
}

// logQueue holds log lines until the server acknowledges them, per run in
// arrival order, bounded: beyond max lines the oldest are dropped, so a flood
// of log lines costs memory, never a stalled pipeline. It cuts them into
// batches: a batch goes when it is full (batchLines or batchBytes), when its
// first line has waited linger, or at once when FlushLogs waits for it.
type logQueue struct {
	max        int
	batchLines int
	batchBytes int
	linger     time.Duration
	now        func() time.Time
	logger     hclog.Logger
	// wake has room for one signal: adding lines never blocks on the flusher.
	wake chan struct{}

	mu sync.Mutex
	// changed is closed and replaced whenever lines leave the queue.
	changed chan struct{}
	// order is the leases in the order their lines came: the oldest lines
	// are dropped first.
	order []runKey
	runs  map[runKey]*runLines
	// turn is where next starts looking in order, so that every run gets
	// its batches in turn.
	turn    int
	total   int
	dropped int
}

func newLogQueue(maxLines int, linger time.Duration, now func() time.Time, logger hclog.Logger) *logQueue {
	return &logQueue{
		max: maxLines,
		// A few batches fit in the queue, to keep some in flight.
		batchLines: min(maxBatchLines, max(1, maxLines/4)),
		batchBytes: maxBatchBytes,
		linger:     linger,
		now:        now,
		logger:     logger,
		wake:       make(chan struct{}, 1),
		changed:    make(chan struct{}),
		runs:       make(map[runKey]*runLines),
	}
}

func (q *logQueue) add(run string, token int64, lines []*osvcv1.LogLine) {
	if len(lines) == 0 {
		return
	}
	k := runKey{run, token}
	at := q.now()
	q.mu.Lock()
	r, ok := q.runs[k]
	if !ok {
		r = &runLines{}
		q.runs[k] = r
		q.order = append(q.order, k)
	}
	for _, l := range lines {
		size := proto.Size(l)
		r.lines = append(r.lines, queuedLine{line: l, size: size, at: at})
		r.bytes += size
	}
	q.total += len(lines)
	dropped := 0
	for q.total > q.max && len(q.order) > 0 {
		oldest := q.order[0]
		n := q.removeLocked(oldest, q.total-q.max)
		dropped += n
	}
	if dropped > 0 {
		q.notifyLocked()
	}
	q.dropped += dropped
	q.mu.Unlock()
	if dropped > 0 {
		q.logger.Warn("log queue full, dropped the oldest lines", "dropped", dropped, "run", run)
	}
	q.signal()
}

// signal wakes the flusher without ever blocking.
func (q *logQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *logQueue) notifyLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// removeLocked removes up to n of the lease's oldest lines, sent or not,
// and the lease when none is left; it returns how many it removed.
func (q *logQueue) removeLocked(k runKey, n int) int {
	r := q.runs[k]
	n = min(n, len(r.lines))
	for i, l := range r.lines[:n] {
		r.bytes -= l.size
		if i < r.sent {
			r.sentBytes -= l.size
		}
	}
	r.sent = max(r.sent-n, 0)
	r.lines = r.lines[n:]
	q.total -= n
	if len(r.lines) == 0 {
		delete(q.runs, k)
		for i, o := range q.order {
			if o == k {
				q.order = append(q.order[:i], q.order[i+1:]...)
				break
			}
		}
	}
	return n
}

// pending tells whether lines of the run's lease are queued, and a channel
// closed when that may have changed.
func (q *logQueue) pending(k runKey) (bool, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	r := q.runs[k]
	return r != nil && len(r.lines) > 0, q.changed
}

// room tells whether n more lines fit without dropping any (or the queue is
// empty), and a channel closed when that may have changed.
func (q *logQueue) room(n int) (bool, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total == 0 || q.total+n <= q.max, q.changed
}

// flushing counts a FlushLogs call waiting for the lease's lines (delta 1)
// or done waiting (-1): while one waits, its lines go without lingering.
func (q *logQueue) flushing(k runKey, delta int) {
	q.mu.Lock()
	if r := q.runs[k]; r != nil {
		r.flush = max(r.flush+delta, 0)
	}
	q.mu.Unlock()
	q.signal()
}

// next cuts the next batch to send, marking its lines sent (they stay
// queued until acknowledged); nil when no batch is due, with when the first
// lingering one is (the zero time: none lingers).
func (q *logQueue) next() (*osvcv1.LogBatch, time.Time) {
	now := q.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	var first time.Time
	for i := range q.order {
		at := (q.turn + i) % len(q.order)
		k := q.order[at]
		r := q.runs[k]
		unsent := len(r.lines) - r.sent
		if unsent == 0 {
			continue
		}
		due := r.lines[r.sent].at.Add(q.linger)
		if r.flush == 0 && unsent < q.batchLines && r.bytes-r.sentBytes < q.batchBytes && due.After(now) {
			if first.IsZero() || due.Before(first) {
				first = due
			}
			continue
		}
		q.turn = at + 1
		return q.cutLocked(k, r), time.Time{}
	}
	return nil, first
}

// cutLocked makes a batch of the lease's first unsent lines, at most
// batchLines and batchBytes (at least one line).
func (q *logQueue) cutLocked(k runKey, r *runLines) *osvcv1.LogBatch {
	b := &osvcv1.LogBatch{Run: k.run, FencingToken: k.token, FollowsSequence: r.lastSent}
	size := 0
	for _, l := range r.lines[r.sent:] {
		if len(b.Lines) > 0 && (len(b.Lines) >= q.batchLines || size+l.size > q.batchBytes) {
			break
		}
		b.Lines = append(b.Lines, l.line)
		size += l.size
	}
	r.sent += len(b.Lines)
	r.sentBytes += size
	r.lastSent = b.Lines[len(b.Lines)-1].GetSequence()
	return b
}

// rewind makes every queued line unsent again: the batches in flight are
// lost (a new stream) or failed, and the lines go again from the oldest not
// acknowledged, each batch following nothing the server might lack.
func (q *logQueue) rewind() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, r := range q.runs {
		r.sent, r.sentBytes, r.lastSent = 0, 0, 0
	}
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
	if r := q.runs[k]; r != nil {
		n := 0
		for n < len(r.lines) && r.lines[n].line.GetSequence() <= last {
			n++
		}
		q.removeLocked(k, n)
	}
	q.notifyLocked()
}

// drop forgets every queued line of the run's lease.
func (q *logQueue) drop(run string, token int64) {
	k := runKey{run, token}
	q.mu.Lock()
	defer q.mu.Unlock()
	if r := q.runs[k]; r != nil {
		q.removeLocked(k, len(r.lines))
	}
	q.notifyLocked()
}

// len is the number of queued lines.
func (q *logQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total
}
