package conn

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// fakeClock is the log flusher's time in tests: the linger's timers fire
// when the test advances it, and each one armed is announced on armed.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
	armed  chan time.Duration
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 1, 8, 0, 0, 0, time.UTC), armed: make(chan time.Duration, 100)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := make(chan time.Time, 1)
	f.timers = append(f.timers, fakeTimer{at: f.now.Add(d), c: c})
	f.armed <- d
	return c
}

// Advance moves the clock on by d and fires the timers due.
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.timers[:0]
	for _, t := range f.timers {
		if t.at.After(f.now) {
			kept = append(kept, t)
			continue
		}
		t.c <- f.now
	}
	f.timers = kept
}

// waitArmed waits until the flusher arms a linger timer and returns its duration.
func (f *fakeClock) waitArmed(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-f.armed:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("the flusher armed no linger timer")
		return 0
	}
}

// withClock runs the Conn's log flusher on clk.
func withClock(clk *fakeClock) func(*Conn) {
	return func(c *Conn) {
		c.logs.now = clk.Now
		c.after = clk.After
	}
}

func numbered(from, to int64) []*osvcv1.LogLine {
	var out []*osvcv1.LogLine
	for i := from; i <= to; i++ {
		out = append(out, &osvcv1.LogLine{Sequence: i, Message: fmt.Sprintf("line %d", i)})
	}
	return out
}

// nextBatch returns the next log batch that reached the server.
func nextBatch(t *testing.T, s *fakeServer) *osvcv1.ConnectRequest {
	t.Helper()
	for {
		if r := nextReq(t, s); r.GetLogBatch() != nil {
			return r
		}
	}
}

// noBatchYet fails when a log batch already reached the server.
func noBatchYet(t *testing.T, s *fakeServer, when string) {
	t.Helper()
	for {
		select {
		case r := <-s.reqs:
			if r.GetLogBatch() != nil {
				t.Fatalf("%s a batch of lines %s reached the server", when, span(r.GetLogBatch()))
			}
		default:
			return
		}
	}
}

func span(b *osvcv1.LogBatch) string {
	l := b.GetLines()
	if len(l) == 0 {
		return "(none)"
	}
	return fmt.Sprintf("%d..%d following %d", l[0].GetSequence(), l[len(l)-1].GetSequence(), b.GetFollowsSequence())
}

func TestALogBatchLingersUntilItIsFullOrItsFirstLineHasWaited(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := startConn(t, func(_ *fakeServer, cfg *Config) {
		cfg.LogQueueLines = 40 // batches of 10 lines
		cfg.LogLinger = time.Second
	}, withClock(clk))
	recvStream(t, h.srv)

	h.conn.SendLogs("runs/r1", 7, numbered(1, 1))
	if d := clk.waitArmed(t); d != time.Second {
		t.Errorf("the flusher lingers %s, want the configured second", d)
	}
	noBatchYet(t, h.srv, "while the first line lingers,")
	// Full: it goes at once, the clock untouched.
	h.conn.SendLogs("runs/r1", 7, numbered(2, 10))
	if b := nextBatch(t, h.srv).GetLogBatch(); span(b) != "1..10 following 0" {
		t.Errorf("the full batch holds lines %s, want 1..10 following 0", span(b))
	}
	h.conn.SendLogs("runs/r1", 7, numbered(11, 11))
	clk.waitArmed(t)
	noBatchYet(t, h.srv, "while line 11 lingers,")
	clk.Advance(time.Second)
	if b := nextBatch(t, h.srv).GetLogBatch(); span(b) != "11..11 following 10" {
		t.Errorf("the lingering batch holds lines %s, want 11..11 following 10", span(b))
	}
}

func TestFlushLogsSendsALingeringBatchAtOnceAndReturnsOnceItIsAcked(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	h := startConn(t, func(s *fakeServer, cfg *Config) {
		cfg.LogLinger = time.Hour
		s.ack = func(r *osvcv1.ConnectRequest) (error, bool) { return nil, r.GetLogBatch() == nil }
	}, withClock(clk))
	fs := recvStream(t, h.srv)
	h.conn.SendLogs("runs/r1", 7, numbered(1, 3))
	clk.waitArmed(t)
	flushed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		flushed <- h.conn.FlushLogs(ctx, "runs/r1", 7)
	}()
	r := nextBatch(t, h.srv)
	if b := r.GetLogBatch(); span(b) != "1..3 following 0" {
		t.Errorf("the flushed batch holds lines %s, want 1..3", span(b))
	}
	select {
	case err := <-flushed:
		t.Fatalf("FlushLogs returned %v before the batch was acknowledged", err)
	default:
	}
	fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Ack{Ack: &osvcv1.Ack{Id: r.GetId()}}}
	if err := <-flushed; err != nil {
		t.Fatalf("FlushLogs = %v", err)
	}
}

func TestLogBatchesGoSeveralInFlightAndNoMore(t *testing.T) {
	t.Parallel()
	full := make(chan struct{}, 1)
	h := startConn(t, func(s *fakeServer, cfg *Config) {
		cfg.LogQueueLines = 1000
		// Log batches wait for the test's Acks.
		s.ack = func(r *osvcv1.ConnectRequest) (error, bool) { return nil, r.GetLogBatch() == nil }
	}, func(c *Conn) {
		c.logs.batchLines = 10
		c.logWindowFull = func() {
			select {
			case full <- struct{}{}:
			default:
			}
		}
	})
	fs := recvStream(t, h.srv)
	h.conn.SendLogs("runs/r1", 7, numbered(1, 60))
	select {
	case <-full:
	case <-time.After(10 * time.Second):
		t.Fatal("the flusher never waited on a full window")
	}
	// A report sent now reaches the server after every batch sent before.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.conn.Send(ctx, stepReport("runs/r1")); err != nil {
		t.Fatal(err)
	}
	var sent []*osvcv1.ConnectRequest
	for r := nextReq(t, h.srv); r.GetStepChanged() == nil; r = nextReq(t, h.srv) {
		sent = append(sent, r)
	}
	if len(sent) != logBatchesInFlight {
		t.Fatalf("%d batches went before any Ack, want %d", len(sent), logBatchesInFlight)
	}
	for i, r := range sent {
		if got, want := span(r.GetLogBatch()), fmt.Sprintf("%d..%d following %d", i*10+1, i*10+10, i*10); got != want {
			t.Errorf("batch %d holds lines %s, want %s", i+1, got, want)
		}
	}
	// Each Ack lets one more go.
	for i := range 2 {
		fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Ack{Ack: &osvcv1.Ack{Id: sent[i].GetId()}}}
		r := nextBatch(t, h.srv)
		if got, want := span(r.GetLogBatch()), fmt.Sprintf("%d..%d following %d", 41+i*10, 50+i*10, 40+i*10); got != want {
			t.Errorf("after Ack %d the batch holds lines %s, want %s", i+1, got, want)
		}
		sent = append(sent, r)
	}
	for _, r := range sent[2:] {
		fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Ack{Ack: &osvcv1.Ack{Id: r.GetId()}}}
	}
	flushLogs(t, h)
}

// flushLogs waits until the lines of runs/r1 under token 7 are acknowledged.
func flushLogs(t *testing.T, h *harness) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.conn.FlushLogs(ctx, "runs/r1", 7); err != nil {
		t.Fatalf("FlushLogs = %v", err)
	}
}

// storingServer acks log batches the way osvc-server stores them: it holds
// a run's lines up to stored, refuses a batch that follows a line it lacks,
// and fails the batches fail names once each, transiently.
type storingServer struct {
	mu      sync.Mutex
	stored  int64
	lines   []int64
	batches int
	fail    map[int]bool
	gaps    int
}

func (s *storingServer) ack(r *osvcv1.ConnectRequest) (error, bool) {
	b := r.GetLogBatch()
	if b == nil {
		return nil, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches++
	if s.fail[s.batches] {
		return fmt.Errorf("etcd is slow: %w", errdefs.ErrUnavailable), true
	}
	if b.GetFollowsSequence() > s.stored {
		s.gaps++
		return fmt.Errorf("holds lines up to %d: %w", s.stored, errdefs.ErrOutOfRange), true
	}
	for _, l := range b.GetLines() {
		if l.GetSequence() > s.stored {
			s.stored = l.GetSequence()
			s.lines = append(s.lines, l.GetSequence())
		}
	}
	return nil, true
}

func TestABatchThatFailsGoesAgainWithTheBatchesSentAfterItAndNoLineIsLost(t *testing.T) {
	t.Parallel()
	store := &storingServer{fail: map[int]bool{2: true}}
	h := startConn(t, func(s *fakeServer, cfg *Config) {
		cfg.LogQueueLines = 1000
		s.ack = store.ack
	}, func(c *Conn) { c.logs.batchLines = 10 })
	recvStream(t, h.srv)
	h.conn.SendLogs("runs/r1", 7, numbered(1, 60))
	flushLogs(t, h)
	store.mu.Lock()
	defer store.mu.Unlock()
	var want []int64
	for i := int64(1); i <= 60; i++ {
		want = append(want, i)
	}
	if fmt.Sprint(store.lines) != fmt.Sprint(want) {
		t.Errorf("the server stored %v, want 1..60 in order", store.lines)
	}
	// Batches 3 to 5 went with batch 2 in flight (5 once batch 1's Ack
	// freed its place) and were refused.
	if store.gaps != 3 {
		t.Errorf("%d batches were refused as following a missing line, want 3", store.gaps)
	}
}

func TestALogBatchCutByADisconnectionGoesAgainFromItsFirstLine(t *testing.T) {
	t.Parallel()
	store := &storingServer{}
	var mu sync.Mutex
	seen := 0
	h := startConn(t, func(s *fakeServer, cfg *Config) {
		cfg.LogQueueLines = 1000
		// The second batch is never answered: the stream is then cut.
		s.ack = func(r *osvcv1.ConnectRequest) (error, bool) {
			if r.GetLogBatch() != nil {
				mu.Lock()
				seen++
				second := seen == 2
				mu.Unlock()
				if second {
					return nil, false
				}
			}
			return store.ack(r)
		}
	}, func(c *Conn) { c.logs.batchLines = 10 })
	first := recvStream(t, h.srv)
	h.conn.SendLogs("runs/r1", 7, numbered(1, 30))
	for range 3 {
		nextBatch(t, h.srv)
	}
	first.end <- status.Error(codes.Unavailable, "gone")
	recvStream(t, h.srv)
	flushLogs(t, h)
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.lines) != 30 || store.lines[29] != 30 {
		t.Errorf("the server stored %v, want 1..30", store.lines)
	}
}

func TestWaitLogRoomWaitsForAcksInsteadOfDroppingLines(t *testing.T) {
	t.Parallel()
	h := start(t, func(s *fakeServer, cfg *Config) {
		cfg.LogQueueLines = 10
		s.ack = func(r *osvcv1.ConnectRequest) (error, bool) { return nil, r.GetLogBatch() == nil }
	})
	fs := recvStream(t, h.srv)
	h.conn.SendLogs("runs/r1", 7, numbered(1, 8))
	roomy := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		roomy <- h.conn.WaitLogRoom(ctx, 5)
	}()
	// Batches of 2 lines, a quarter of the queue: all 8 go.
	var sent []*osvcv1.ConnectRequest
	for range 4 {
		sent = append(sent, nextBatch(t, h.srv))
	}
	select {
	case err := <-roomy:
		t.Fatalf("WaitLogRoom returned %v with 8 of 10 lines queued and none acknowledged", err)
	default:
	}
	for _, r := range sent {
		fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Ack{Ack: &osvcv1.Ack{Id: r.GetId()}}}
	}
	if err := <-roomy; err != nil {
		t.Fatalf("WaitLogRoom = %v once lines were acknowledged", err)
	}
}
