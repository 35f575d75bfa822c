package conn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// fakeServer speaks the agent protocol's server side: Welcome to each Hello,
// an Ack to each report (code chosen by ack), everything recorded.
type fakeServer struct {
	osvcv1.UnimplementedAgentServiceServer
	interval time.Duration
	// ack returns the error to acknowledge a report with (nil: accepted),
	// and false to leave it unanswered.
	ack     func(r *osvcv1.ConnectRequest) (error, bool)
	streams chan *fakeStream
	reqs    chan *osvcv1.ConnectRequest
	// refuse makes Connect fail with Unavailable, as a server going down.
	refuse atomic.Bool
}

// fakeStream is one agent stream on the fake server.
type fakeStream struct {
	hello *osvcv1.Hello
	out   chan *osvcv1.ConnectResponse
	end   chan error
}

func newFakeServer(t *testing.T) (*fakeServer, string, []grpc.DialOption) {
	t.Helper()
	s := &fakeServer{
		interval: time.Hour,
		ack:      func(*osvcv1.ConnectRequest) (error, bool) { return nil, true },
		streams:  make(chan *fakeStream, 16),
		reqs:     make(chan *osvcv1.ConnectRequest, 10000),
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	osvcv1.RegisterAgentServiceServer(srv, s)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	t.Cleanup(func() { srv.Stop(); wg.Wait() })
	dial := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
	return s, "passthrough:///bufnet", []grpc.DialOption{dial}
}

func (s *fakeServer) Connect(stream grpc.BidiStreamingServer[osvcv1.ConnectRequest, osvcv1.ConnectResponse]) error {
	if s.refuse.Load() {
		return status.Error(codes.Unavailable, "server going down")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHello()
	if h.GetName() == "" || h.GetSite() == "" {
		return status.Error(codes.InvalidArgument, "hello: name and site are required")
	}
	fs := &fakeStream{hello: h, out: make(chan *osvcv1.ConnectResponse, 64), end: make(chan error, 1)}
	if err := stream.Send(&osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Welcome{Welcome: &osvcv1.Welcome{
		Agent: "agents/" + h.GetName(), HeartbeatInterval: durationpb.New(s.interval)}}}); err != nil {
		return err
	}
	s.streams <- fs
	ctx := stream.Context()
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			s.reqs <- r
			if r.GetHeartbeat() != nil {
				continue
			}
			if err, ok := s.ack(r); ok {
				ack := &osvcv1.Ack{Id: r.GetId()}
				if err != nil {
					ack.Code, ack.Reason, ack.Message = int32(errdefs.Code(err)), errdefs.Reason(err), err.Error()
				}
				select {
				case fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Ack{Ack: ack}}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	for {
		select {
		case m := <-fs.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-fs.end:
			return err
		case err := <-recvErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// recordingHandler records what the server sends.
type recordingHandler struct {
	assigns  chan *osvcv1.Assign
	cancels  chan *osvcv1.Cancel
	welcomes chan *osvcv1.Welcome
}

func newRecordingHandler() *recordingHandler {
	return &recordingHandler{
		assigns:  make(chan *osvcv1.Assign, 16),
		cancels:  make(chan *osvcv1.Cancel, 16),
		welcomes: make(chan *osvcv1.Welcome, 16),
	}
}

func (h *recordingHandler) Assign(_ context.Context, a *osvcv1.Assign)     { h.assigns <- a }
func (h *recordingHandler) Cancel(c *osvcv1.Cancel)                        { h.cancels <- c }
func (h *recordingHandler) Welcome(w *osvcv1.Welcome)                      { h.welcomes <- w }
func (h *recordingHandler) Distribute(context.Context, *osvcv1.Distribute) {}
func (h *recordingHandler) Withdraw(*osvcv1.Withdraw)                      {}

type harness struct {
	srv     *fakeServer
	conn    *Conn
	handler *recordingHandler
	hellos  chan struct{}
	done    chan error
}

// start runs a Conn against a fake server; the Conn stops at test cleanup.
func start(t *testing.T, tweak func(*fakeServer, *Config)) *harness {
	t.Helper()
	return startConn(t, tweak, nil)
}

// startConn is start with tweakConn applied to the Conn before it runs.
func startConn(t *testing.T, tweak func(*fakeServer, *Config), tweakConn func(*Conn)) *harness {
	t.Helper()
	srv, addr, dial := newFakeServer(t)
	h := &harness{srv: srv, handler: newRecordingHandler(), hellos: make(chan struct{}, 16), done: make(chan error, 1)}
	cfg := Config{
		Server:         addr,
		DialOptions:    dial,
		Logger:         hclog.NewNullLogger(),
		Handler:        h.handler,
		InitialBackoff: 10 * time.Millisecond,
		MaxBackoff:     50 * time.Millisecond,
		Hello: func() *osvcv1.Hello {
			h.hellos <- struct{}{}
			return &osvcv1.Hello{Name: "agent-1", Site: "PS1"}
		},
	}
	if tweak != nil {
		tweak(srv, &cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.conn = c
	if tweakConn != nil {
		tweakConn(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { h.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

func recvStream(t *testing.T, s *fakeServer) *fakeStream {
	t.Helper()
	select {
	case fs := <-s.streams:
		return fs
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not connect")
		return nil
	}
}

// nextReq returns the next recorded request that is not a heartbeat.
func nextReq(t *testing.T, s *fakeServer) *osvcv1.ConnectRequest {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-s.reqs:
			if r.GetHeartbeat() == nil {
				return r
			}
		case <-deadline:
			t.Fatal("no request reached the server")
			return nil
		}
	}
}

func stepReport(run string) *osvcv1.ConnectRequest {
	return &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_StepChanged{StepChanged: &osvcv1.StepChanged{
		Run: run, FencingToken: 7, Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_DRIVE, State: osvcv1.StepState_STEP_STATE_RUNNING}}}}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	t.Parallel()
	hello := func() *osvcv1.Hello { return &osvcv1.Hello{} }
	tests := []struct {
		name string
		cfg  Config
	}{
		{"without a server", Config{Hello: hello, Handler: newRecordingHandler()}},
		{"without a hello", Config{Server: "x:1", Handler: newRecordingHandler()}},
		{"without a handler", Config{Server: "x:1", Hello: hello}},
		{"with a max backoff below the initial one", Config{Server: "x:1", Hello: hello, Handler: newRecordingHandler(), InitialBackoff: time.Minute, MaxBackoff: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := New(tt.cfg); err == nil {
				t.Error("New succeeded, want an error")
			}
		})
	}
}

func TestSendReturnsTheAckAsADomainError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ack  error
		want error
	}{
		{"an accepted report returns nil", nil, nil},
		{"a stale fencing token returns ErrStaleLease", fmt.Errorf("run is no longer leased: %w", errdefs.ErrStaleLease), errdefs.ErrStaleLease},
		{"an unknown run returns ErrNotFound", fmt.Errorf("run: %w", errdefs.ErrNotFound), errdefs.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := start(t, func(s *fakeServer, _ *Config) {
				s.ack = func(*osvcv1.ConnectRequest) (error, bool) { return tt.ack, true }
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := h.conn.Send(ctx, stepReport("runs/r1"))
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Send = %v, want %v", err, tt.want)
			}
			if errors.Is(err, errdefs.ErrStaleLease) && errors.Is(err, errdefs.ErrContended) {
				t.Errorf("Send = %v matches both a stale lease and a contended report", err)
			}
			if got := nextReq(t, h.srv); got.GetStepChanged().GetRun() != "runs/r1" || got.GetId() == 0 {
				t.Errorf("server got %v, want the step report with an id", got)
			}
		})
	}
}

func TestAContendedReportIsSentAgain(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := 0
	h := start(t, func(s *fakeServer, _ *Config) {
		s.ack = func(*osvcv1.ConnectRequest) (error, bool) {
			mu.Lock()
			defer mu.Unlock()
			seen++
			if seen < 3 {
				return fmt.Errorf("the run kept changing: %w", errdefs.ErrContended), true
			}
			return nil, true
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.conn.Send(ctx, stepReport("runs/r1")); err != nil {
		t.Fatalf("Send = %v, want nil after two contended answers", err)
	}
	for i := 0; i < 3; i++ {
		if got := nextReq(t, h.srv); got.GetStepChanged().GetRun() != "runs/r1" {
			t.Fatalf("request %d = %v, want the step report again", i, got)
		}
	}
}

func TestAReportUnderAnEndedContextNeverReachesTheServer(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case <-h.conn.Connected():
	case <-ctx.Done():
		t.Fatal("the agent did not connect")
	}
	ended, end := context.WithCancel(context.Background())
	end()
	// Each Send races its ended context against a ready stream: many tries
	// make a report that slips through show.
	for range 32 {
		if err := h.conn.Send(ended, stepReport("runs/canceled")); !errors.Is(err, context.Canceled) {
			t.Fatalf("Send under an ended context = %v, want context.Canceled", err)
		}
	}
	if err := h.conn.Send(ctx, stepReport("runs/live")); err != nil {
		t.Fatal(err)
	}
	if got := nextReq(t, h.srv).GetStepChanged().GetRun(); got != "runs/live" {
		t.Fatalf("the server received a report of %s, sent under an ended context", got)
	}
}

func TestServerMessagesReachTheHandler(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	fs := recvStream(t, h.srv)
	select {
	case w := <-h.handler.welcomes:
		if w.GetAgent() != "agents/agent-1" {
			t.Errorf("welcome agent = %q", w.GetAgent())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no welcome")
	}
	fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Assign{Assign: &osvcv1.Assign{Run: &osvcv1.Run{Name: "runs/r1", FencingToken: 3}}}}
	fs.out <- &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Cancel{Cancel: &osvcv1.Cancel{Run: "runs/r1", FencingToken: 3}}}
	select {
	case a := <-h.handler.assigns:
		if a.GetRun().GetFencingToken() != 3 {
			t.Errorf("assign token = %d, want 3", a.GetRun().GetFencingToken())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no assign")
	}
	select {
	case c := <-h.handler.cancels:
		if c.GetRun() != "runs/r1" {
			t.Errorf("cancel run = %q", c.GetRun())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no cancel")
	}
}

func TestHeartbeatsFollowTheWelcomeInterval(t *testing.T) {
	t.Parallel()
	h := start(t, func(s *fakeServer, c *Config) {
		s.interval = 20 * time.Millisecond
		c.Heartbeat = func() *osvcv1.Heartbeat {
			return &osvcv1.Heartbeat{Drives: []*osvcv1.Drive{{Path: "/data", FreeBytes: 42}}}
		}
	})
	deadline := time.After(10 * time.Second)
	for n := 0; n < 3; {
		select {
		case r := <-h.srv.reqs:
			if hb := r.GetHeartbeat(); hb != nil {
				if hb.GetDrives()[0].GetFreeBytes() != 42 {
					t.Fatalf("heartbeat drives = %v", hb.GetDrives())
				}
				n++
			}
		case <-deadline:
			t.Fatalf("got %d heartbeats, want 3", n)
		}
	}
}

func TestTheAgentReconnectsWithANewHelloAfterTheStreamEnds(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	first := recvStream(t, h.srv)
	<-h.hellos
	first.end <- status.Error(codes.Unavailable, "lease revoked")
	recvStream(t, h.srv)
	select {
	case <-h.hellos:
	default:
		t.Fatal("no second Hello")
	}
	<-h.conn.Connected()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.conn.Send(ctx, stepReport("runs/r1")); err != nil {
		t.Fatalf("Send after reconnect: %v", err)
	}
}

func TestAReportCutByADisconnectionIsSentAgain(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := 0
	h := start(t, func(s *fakeServer, _ *Config) {
		// The first copy of the report is never acknowledged.
		s.ack = func(r *osvcv1.ConnectRequest) (error, bool) {
			mu.Lock()
			defer mu.Unlock()
			seen++
			return nil, seen > 1
		}
	})
	first := recvStream(t, h.srv)
	sent := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sent <- h.conn.Send(ctx, stepReport("runs/r1"))
	}()
	nextReq(t, h.srv)
	first.end <- status.Error(codes.Unavailable, "gone")
	recvStream(t, h.srv)
	if again := nextReq(t, h.srv); again.GetStepChanged().GetRun() != "runs/r1" {
		t.Fatalf("after reconnect the server got %v, want the report again", again)
	}
	if err := <-sent; err != nil {
		t.Fatalf("Send = %v, want nil once the resent report is acked", err)
	}
}

func TestSendWaitsForAConnectionWithinItsContext(t *testing.T) {
	t.Parallel()
	h := start(t, nil)
	fs := recvStream(t, h.srv)
	h.srv.refuse.Store(true)
	fs.end <- status.Error(codes.Unavailable, "gone")
	// Wait (with a deadline) until the Conn saw the stream end.
	deadline := time.Now().Add(10 * time.Second)
	for isClosed(h.conn.Connected()) {
		if time.Now().After(deadline) {
			t.Fatal("the Conn still reports a connection")
		}
		runtime.Gosched()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := h.conn.Send(ctx, stepReport("runs/r1"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send while disconnected = %v, want the context's deadline", err)
	}
	h.srv.refuse.Store(false)
	recvStream(t, h.srv)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := h.conn.Send(ctx2, stepReport("runs/r1")); err != nil {
		t.Fatalf("Send once reconnected = %v", err)
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestRunReturnsAnErrorWhenTheServerRefusesTheHello(t *testing.T) {
	t.Parallel()
	srv, addr, dial := newFakeServer(t)
	_ = srv
	c, err := New(Config{
		Server: addr, DialOptions: dial, Handler: newRecordingHandler(),
		InitialBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		Hello: func() *osvcv1.Hello { return &osvcv1.Hello{Name: "agent-1"} },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.Run(ctx)
	if status.Code(errors.Unwrap(err)) != codes.InvalidArgument {
		t.Fatalf("Run = %v, want the InvalidArgument refusal", err)
	}
}

func TestLogLinesArriveInBatchesNumberedOnceEach(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	batches := 0
	h := start(t, func(s *fakeServer, _ *Config) {
		// The first batch is left unanswered: the stream is then cut and
		// the batch must come again.
		s.ack = func(r *osvcv1.ConnectRequest) (error, bool) {
			if r.GetLogBatch() == nil {
				return nil, true
			}
			mu.Lock()
			defer mu.Unlock()
			batches++
			return nil, batches > 1
		}
	})
	first := recvStream(t, h.srv)
	const n = 1200
	lines := make([]*osvcv1.LogLine, n)
	for i := range lines {
		lines[i] = &osvcv1.LogLine{Sequence: int64(i + 1), Message: fmt.Sprintf("line %d", i+1)}
	}
	h.conn.SendLogs("runs/r1", 7, lines)
	got := nextReq(t, h.srv)
	if got.GetLogBatch() == nil || len(got.GetLogBatch().GetLines()) > maxBatchLines {
		t.Fatalf("first request = %v, want a batch of at most %d lines", got, maxBatchLines)
	}
	first.end <- status.Error(codes.Unavailable, "gone")
	recvStream(t, h.srv)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.conn.FlushLogs(ctx, "runs/r1", 7); err != nil {
		t.Fatalf("FlushLogs: %v", err)
	}
	seqs := map[int64]bool{}
	for {
		var r *osvcv1.ConnectRequest
		select {
		case r = <-h.srv.reqs:
		default:
		}
		if r == nil {
			break
		}
		for _, l := range r.GetLogBatch().GetLines() {
			seqs[l.GetSequence()] = true
		}
	}
	for _, l := range got.GetLogBatch().GetLines() {
		seqs[l.GetSequence()] = true
	}
	if len(seqs) != n {
		t.Fatalf("server saw %d distinct lines, want %d", len(seqs), n)
	}
}

func TestTheLogQueueDropsTheOldestLinesBeyondItsBound(t *testing.T) {
	t.Parallel()
	q := newLogQueue(10, time.Hour, time.Now, hclog.NewNullLogger())
	for i := 1; i <= 25; i++ {
		q.add("runs/r1", 1, []*osvcv1.LogLine{{Sequence: int64(i)}})
	}
	if q.len() != 10 {
		t.Fatalf("queued %d lines, want 10", q.len())
	}
	var got []int64
	for b, _ := q.next(); b != nil; b, _ = q.next() {
		for _, l := range b.GetLines() {
			got = append(got, l.GetSequence())
		}
		q.acked(b)
	}
	if fmt.Sprint(got) != "[16 17 18 19 20 21 22 23 24 25]" {
		t.Errorf("batches hold %v, want the newest 10 lines, 16..25", got)
	}
	if q.len() != 0 {
		t.Errorf("after the acks %d lines are queued, want 0", q.len())
	}
}

func TestAServersRetryDelayReplacesTheBackoff(t *testing.T) {
	t.Parallel()
	bo := backoff.NewConstantBackOff(7 * time.Millisecond)
	refusal := func(d time.Duration) error {
		st, err := status.New(codes.AlreadyExists, "live on replica a").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Errorf("stream: %w", st.Err())
	}
	for _, c := range []struct {
		name     string
		err      error
		min, max time.Duration
	}{
		{"a refusal that says when it ends", refusal(4 * time.Second), 4 * time.Second, 5 * time.Second},
		{"one past the longest wait", refusal(time.Hour), 30 * time.Second, 31 * time.Second},
		{"a short one, spread by a quarter", refusal(400 * time.Millisecond), 400 * time.Millisecond, 500 * time.Millisecond},
		{"an error that does not", status.Error(codes.Unavailable, "down"), 7 * time.Millisecond, 7 * time.Millisecond},
	} {
		for range 20 {
			if d := retryIn(c.err, bo, 30*time.Second); d < c.min || d > c.max {
				t.Errorf("%s: retry in %s, want %s to %s", c.name, d, c.min, c.max)
				break
			}
		}
	}
}
