// Package conn keeps the agent's stream to the server: Hello/Welcome,
// heartbeats, acknowledged reports, batched log lines and reconnection with
// backoff.
package conn

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/pki"
)

// Handler receives what the server sends.
type Handler interface {
	// Assign starts a run; it must return quickly (work goes in its own
	// goroutine). ctx is Run's context: it outlives one stream.
	Assign(ctx context.Context, a *osvcv1.Assign)
	// Cancel stops a run.
	Cancel(c *osvcv1.Cancel)
	// Welcome answers each Hello: it names the held runs to resume or discard.
	Welcome(w *osvcv1.Welcome)
	// Distribute asks the agent, as a distribution point, to fetch a
	// version of an image; it must return quickly. ctx is Run's context.
	Distribute(ctx context.Context, d *osvcv1.Distribute)
	// Withdraw tells the distribution point to drop an image.
	Withdraw(w *osvcv1.Withdraw)
}

// Defaults for the zero values of Config.
const (
	DefaultInitialBackoff    = time.Second
	DefaultMaxBackoff        = 30 * time.Second
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultLogQueueLines     = 10000
	// DefaultLogLinger is how long a log batch waits for more lines before
	// it goes less than full.
	DefaultLogLinger = 100 * time.Millisecond
	// DefaultWelcomeTimeout bounds the wait for the server's answer to Hello.
	DefaultWelcomeTimeout = 30 * time.Second
)

// Bounds of one LogBatch: well under gRPC's 4 MiB message limit, and small
// enough that a batch never holds up a report or a heartbeat for long, yet
// thousands of lines, which the server stores in one etcd write.
const (
	maxBatchLines = 4096
	maxBatchBytes = 512 << 10
)

// logBatchesInFlight is how many log batches go out before the first is
// acknowledged, so that a busy run's lines do not wait for each round trip.
const logBatchesInFlight = 4

// keepaliveTime is the client's gRPC keepalive; the server allows pings every 10s.
const keepaliveTime = 30 * time.Second

// ErrClosed is returned by Send once Run has returned.
var ErrClosed = errors.New("connection to the server is closed")

// Config configures a Conn.
type Config struct {
	// Server is the server's address, host:port.
	Server string
	// DialOptions are added to the connection's options (credentials, bufconn
	// dialer...). Without transport credentials among them the connection is
	// insecure.
	DialOptions []grpc.DialOption
	Logger      hclog.Logger
	// Hello is called on each (re)connect for the Hello to send.
	Hello func() *osvcv1.Hello
	// Heartbeat, when set, fills each heartbeat (drives); nil sends empty heartbeats.
	Heartbeat func() *osvcv1.Heartbeat
	Handler   Handler
	// InitialBackoff and MaxBackoff bound the jittered reconnect delay; default 1s and 30s.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// LogQueueLines bounds the log lines waiting to be sent or acknowledged;
	// the oldest are dropped beyond it. Default 10000.
	LogQueueLines int
	// LogLinger is how long a log batch waits for more lines before it goes
	// less than full; FlushLogs sends at once. Default 100ms.
	LogLinger time.Duration
	// WelcomeTimeout bounds the wait for Welcome after Hello; default 30s.
	WelcomeTimeout time.Duration
}

// Conn is the agent's stream to the server. Send and SendLogs are safe for
// concurrent use; Run must be called once.
type Conn struct {
	cfg    Config
	logger hclog.Logger
	nextID atomic.Uint64
	logs   *logQueue
	// after is the log flusher's timer: tests drive the linger with it.
	after func(time.Duration) <-chan time.Time
	// logWindowFull, when set, is called each time the log flusher waits
	// with logBatchesInFlight batches unacknowledged: tests see it bounded.
	logWindowFull func()

	mu  sync.Mutex
	cur *session
	// up is closed while a session is established; replaced by an open
	// channel when it ends.
	up      chan struct{}
	stopped chan struct{}
	started bool
}

// session is one established stream.
type session struct {
	out  chan *osvcv1.ConnectRequest
	done chan struct{}

	mu      sync.Mutex
	pending map[uint64]chan *osvcv1.Ack
}

// New validates cfg.
func New(cfg Config) (*Conn, error) {
	if cfg.Server == "" {
		return nil, errors.New("conn: Server is required: set the server address (host:port)")
	}
	if cfg.Hello == nil {
		return nil, errors.New("conn: Hello is required")
	}
	if cfg.Handler == nil {
		return nil, errors.New("conn: Handler is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = DefaultInitialBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.InitialBackoff {
		return nil, fmt.Errorf("conn: MaxBackoff %s is below InitialBackoff %s", cfg.MaxBackoff, cfg.InitialBackoff)
	}
	if cfg.LogQueueLines <= 0 {
		cfg.LogQueueLines = DefaultLogQueueLines
	}
	if cfg.LogLinger <= 0 {
		cfg.LogLinger = DefaultLogLinger
	}
	if cfg.WelcomeTimeout <= 0 {
		cfg.WelcomeTimeout = DefaultWelcomeTimeout
	}
	logger := cfg.Logger.Named("conn")
	return &Conn{
		cfg:     cfg,
		logger:  logger,
		logs:    newLogQueue(cfg.LogQueueLines, cfg.LogLinger, time.Now, logger),
		after:   time.After,
		up:      make(chan struct{}),
		stopped: make(chan struct{}),
	}, nil
}

// Run connects, says Hello, heartbeats and reconnects with backoff until ctx
// ends. It returns nil when ctx ends, or an error the agent cannot fix by
// retrying (the server refused its Hello as invalid).
func (c *Conn) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return errors.New("conn: Run called twice")
	}
	c.started = true
	c.mu.Unlock()
	defer close(c.stopped)

	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: 10 * time.Second}),
	}
	// Later options win: the caller's credentials replace the insecure default.
	opts = append(opts, c.cfg.DialOptions...)
	cc, err := pki.NewClient(c.cfg.Server, opts...)
	if err != nil {
		return fmt.Errorf("conn: server address %q: %w", c.cfg.Server, err)
	}
	defer cc.Close()
	client := osvcv1.NewAgentServiceClient(cc)

	var wg sync.WaitGroup
	defer wg.Wait()
	flushCtx, stopFlush := context.WithCancel(ctx)
	defer stopFlush()
	wg.Go(func() { c.flushLogs(flushCtx) })

	bo := &backoff.ExponentialBackOff{
		InitialInterval:     c.cfg.InitialBackoff,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         c.cfg.MaxBackoff,
	}
	bo.Reset()
	for {
		welcomed, err := c.session(ctx, client)
		if ctx.Err() != nil {
			return nil
		}
		if !welcomed && errors.Is(errdefs.ToNative(err), errdefs.ErrInvalidArgument) {
			return fmt.Errorf("conn: the server refused the agent's Hello: %w", err)
		}
		// Refused credentials do not mend by retrying: revoked, not enrolled,
		// or a Hello naming another agent than the certificate.
		if kind := errdefs.Kind(errdefs.ToNative(err)); !welcomed && (kind == errdefs.ErrUnauthenticated || kind == errdefs.ErrPermissionDenied) {
			return fmt.Errorf("conn: the server refused the agent: %w", err)
		}
		if welcomed {
			bo.Reset()
		}
		delay := retryIn(err, bo, c.cfg.MaxBackoff)
		c.logger.Warn("stream to the server ended, reconnecting", "server", c.cfg.Server, "error", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// retryIn is how long to wait before the next stream: when the server's
// refusal says when it ends (a dead replica's hold on the agent's stream
// lasts until its liveness expires), that, at most maxDelay, spread by up
// to a quarter of it (a second at most) so that the agents of a dead
// replica do not all come back at once; else the backoff's next delay.
func retryIn(err error, bo backoff.BackOff, maxDelay time.Duration) time.Duration {
	if d, ok := errdefs.RetryDelay(err); ok && d > 0 {
		d = min(d, maxDelay)
		return d + rand.N(min(d/4, time.Second)+1)
	}
	return bo.NextBackOff()
}

// session runs one stream from Hello to its end. welcomed tells whether the
// server answered Hello.
func (c *Conn) session(ctx context.Context, client osvcv1.AgentServiceClient) (welcomed bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Connect(sctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	hello := c.cfg.Hello()
	if err := stream.Send(&osvcv1.ConnectRequest{Id: c.nextID.Add(1), Message: &osvcv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		return false, fmt.Errorf("send hello: %w", recvErr(stream, err))
	}
	// Welcome must come in time: a server that accepts the stream and says
	// nothing would otherwise hold the agent forever.
	timer := time.AfterFunc(c.cfg.WelcomeTimeout, cancel)
	first, err := stream.Recv()
	if !timer.Stop() {
		return false, fmt.Errorf("no Welcome from the server within %s", c.cfg.WelcomeTimeout)
	}
	if err != nil {
		return false, fmt.Errorf("wait for welcome: %w", err)
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return false, fmt.Errorf("the server answered Hello with %T instead of Welcome", first.GetMessage())
	}
	interval := welcome.GetHeartbeatInterval().AsDuration()
	if interval <= 0 {
		interval = DefaultHeartbeatInterval
	}
	c.logger.Info("connected", "server", c.cfg.Server, "agent", welcome.GetAgent(),
		"heartbeat_interval", interval, "resume_runs", welcome.GetResumeRuns(), "discard_runs", welcome.GetDiscardRuns())
	c.cfg.Handler.Welcome(welcome)

	s := &session{
		out:     make(chan *osvcv1.ConnectRequest),
		done:    make(chan struct{}),
		pending: make(map[uint64]chan *osvcv1.Ack),
	}
	var wg sync.WaitGroup
	sendErr := make(chan error, 1)
	wg.Go(func() { sendErr <- c.sendLoop(sctx, stream, s, interval) })

	c.mu.Lock()
	c.cur = s
	close(c.up)
	c.mu.Unlock()

	defer func() {
		c.mu.Lock()
		c.cur = nil
		c.up = make(chan struct{})
		c.mu.Unlock()
		cancel()
		wg.Wait()
		// Senders waiting on this session retry on the next one.
		close(s.done)
		select {
		case serr := <-sendErr:
			if serr != nil && err == nil {
				err = serr
			}
		default:
		}
	}()

	for {
		msg, rerr := stream.Recv()
		if rerr != nil {
			return true, rerr
		}
		switch m := msg.GetMessage().(type) {
		case *osvcv1.ConnectResponse_Ack:
			s.deliver(m.Ack)
		case *osvcv1.ConnectResponse_Assign:
			c.logger.Info("assigned", "run", m.Assign.GetRun().GetName(), "fencing_token", m.Assign.GetRun().GetFencingToken())
			c.cfg.Handler.Assign(ctx, m.Assign)
		case *osvcv1.ConnectResponse_Cancel:
			c.logger.Info("cancel", "run", m.Cancel.GetRun(), "reason", m.Cancel.GetReason())
			c.cfg.Handler.Cancel(m.Cancel)
		case *osvcv1.ConnectResponse_Welcome:
			c.cfg.Handler.Welcome(m.Welcome)
		case *osvcv1.ConnectResponse_Distribute:
			c.logger.Info("distribute", "image", m.Distribute.GetImage(), "version", m.Distribute.GetVersion())
			c.cfg.Handler.Distribute(ctx, m.Distribute)
		case *osvcv1.ConnectResponse_Withdraw:
			c.logger.Info("withdraw", "image", m.Withdraw.GetImage())
			c.cfg.Handler.Withdraw(m.Withdraw)
		default:
			c.logger.Warn("ignoring an unknown message from the server", "type", fmt.Sprintf("%T", m))
		}
	}
}

// recvErr returns the stream's real status when Send failed with io.EOF.
func recvErr(stream grpc.BidiStreamingClient[osvcv1.ConnectRequest, osvcv1.ConnectResponse], err error) error {
	if _, rerr := stream.Recv(); rerr != nil {
		return rerr
	}
	return err
}

// sendLoop is the only goroutine calling stream.Send: heartbeats on a ticker,
// reports as they come.
func (c *Conn) sendLoop(ctx context.Context, stream grpc.BidiStreamingClient[osvcv1.ConnectRequest, osvcv1.ConnectResponse], s *session, interval time.Duration) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		// A due heartbeat goes first, whatever reports are queued.
		select {
		case <-ticker.C:
			if err := c.sendHeartbeat(stream); err != nil {
				return err
			}
			continue
		default:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			if err := c.sendHeartbeat(stream); err != nil {
				return err
			}
		case r := <-s.out:
			if err := stream.Send(r); err != nil {
				return fmt.Errorf("send %T: %w", r.GetMessage(), err)
			}
		}
	}
}

func (c *Conn) sendHeartbeat(stream grpc.BidiStreamingClient[osvcv1.ConnectRequest, osvcv1.ConnectResponse]) error {
	hb := &osvcv1.Heartbeat{}
	if c.cfg.Heartbeat != nil {
		hb = c.cfg.Heartbeat()
	}
	if err := stream.Send(&osvcv1.ConnectRequest{Id: c.nextID.Add(1), Message: &osvcv1.ConnectRequest_Heartbeat{Heartbeat: hb}}); err != nil {
		return fmt.Errorf("send heartbeat: %w", err)
	}
	return nil
}

func (s *session) register(id uint64) chan *osvcv1.Ack {
	ch := make(chan *osvcv1.Ack, 1)
	s.mu.Lock()
	s.pending[id] = ch
	s.mu.Unlock()
	return ch
}

func (s *session) forget(id uint64) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

func (s *session) deliver(a *osvcv1.Ack) {
	s.mu.Lock()
	ch, ok := s.pending[a.GetId()]
	delete(s.pending, a.GetId())
	s.mu.Unlock()
	if ok {
		ch <- a
	}
}

// current waits for an established session.
func (c *Conn) current(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		s, up := c.cur, c.up
		c.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-up:
		case <-c.stopped:
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for the connection to %s: %w", c.cfg.Server, context.Cause(ctx))
		}
	}
}

// Send sends one report and waits for its Ack: nil for code 0, else the
// domain error errdefs makes of the Ack's code, reason and message (match it
// with errors.Is: errdefs.ErrStaleLease means the run is no longer this
// agent's). While disconnected it waits for the next connection; a report
// whose stream ended before its Ack, or that the server found contended, is
// sent again (the server's handling of reports is idempotent). ctx bounds the
// whole wait. r.Id is set by Send.
func (c *Conn) Send(ctx context.Context, r *osvcv1.ConnectRequest) error {
	contended := 0
	for {
		s, err := c.current(ctx)
		if err != nil {
			return err
		}
		// A select below picks at random among ready cases: without this
		// check, a report of a run canceled or lost a moment ago would still
		// go out half of the time.
		if ctx.Err() != nil {
			return fmt.Errorf("send %T: %w", r.GetMessage(), context.Cause(ctx))
		}
		ackc, err := c.post(ctx, s, r)
		if errors.Is(err, errSessionEnded) {
			continue
		}
		if err != nil {
			return err
		}
		select {
		case a := <-ackc:
			err := ackError(a)
			if errors.Is(err, errdefs.ErrContended) && contended < maxContendedResends {
				contended++
				if werr := c.pause(ctx, contended); werr != nil {
					return fmt.Errorf("resend %T: %w", r.GetMessage(), werr)
				}
				continue
			}
			return err
		case <-s.done:
			s.forget(r.GetId())
			continue
		case <-ctx.Done():
			s.forget(r.GetId())
			return fmt.Errorf("wait for ack of %T: %w", r.GetMessage(), context.Cause(ctx))
		}
	}
}

// errSessionEnded is post's answer when the stream ended first.
var errSessionEnded = errors.New("the stream to the server ended")

// post numbers r and hands it to the session's sender; its Ack comes on
// the returned channel, unless the session ends first (s.done).
func (c *Conn) post(ctx context.Context, s *session, r *osvcv1.ConnectRequest) (<-chan *osvcv1.Ack, error) {
	id := c.nextID.Add(1)
	r.Id = id
	ackc := s.register(id)
	select {
	case s.out <- r:
		return ackc, nil
	case <-s.done:
		s.forget(id)
		return nil, errSessionEnded
	case <-ctx.Done():
		s.forget(id)
		return nil, fmt.Errorf("send %T: %w", r.GetMessage(), context.Cause(ctx))
	}
}

// ackError is the domain error errdefs makes of an Ack's code, reason and
// message; nil for code 0.
func ackError(a *osvcv1.Ack) error {
	return errdefs.FromCode(codes.Code(a.GetCode()), a.GetReason(), a.GetMessage())
}

// SendLogs queues log lines of a run; a background flusher sends them in
// LogBatch messages. It never blocks on the network.
func (c *Conn) SendLogs(run string, token int64, lines []*osvcv1.LogLine) {
	c.logs.add(run, token, lines)
}

// FlushLogs sends the run's queued log lines without lingering and waits
// until they are acknowledged (or dropped), so that a run's last lines reach
// the server before its result. ctx bounds the wait.
func (c *Conn) FlushLogs(ctx context.Context, run string, token int64) error {
	k := runKey{run, token}
	c.logs.flushing(k, 1)
	defer c.logs.flushing(k, -1)
	return c.awaitLogs(ctx, func() (bool, <-chan struct{}) {
		pending, changed := c.logs.pending(k)
		return !pending, changed
	}, "flush the log lines of "+run)
}

// maxContendedResends bounds how often Send sends a report again that the
// server found contended (the run changed under it) before it gives up.
const maxContendedResends = 8

// pause waits before the attempt-th resend of a contended report: a jittered
// InitialBackoff/16 doubled per attempt, at most InitialBackoff.
func (c *Conn) pause(ctx context.Context, attempt int) error {
	d := min(c.cfg.InitialBackoff/16<<min(attempt, 16), c.cfg.InitialBackoff)
	d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Connected returns a channel that is closed while the stream is established
// (Welcome received); it stays open while disconnected. Call it again after a
// disconnection for the next connection's channel.
func (c *Conn) Connected() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}
