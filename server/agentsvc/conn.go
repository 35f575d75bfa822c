package agentsvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
)

// Why a stream ended, as the agent sees it.
var (
	errSessionEnded = status.Error(codes.Unavailable, "the agent's session ended; reconnect and discard the runs the server names")
	errReplaced     = status.Error(codes.Aborted, "a newer stream of the same agent replaced this one")
	errSilent       = status.Error(codes.Unavailable, "no message from the agent for three heartbeat intervals; reconnect")
	errShutdown     = status.Error(codes.Unavailable, "the server is shutting down; reconnect")
)

// conn is one agent's stream on this replica.
type conn struct {
	s      *Service
	id     string // agent name without "agents/"
	name   string // agents/{id}
	site   string // the site its Hello named
	ctx    context.Context
	cancel context.CancelCauseFunc

	session *agents.Session

	out outbox

	mu sync.Mutex
	// queued: run → fencing token whose Assign is queued, sent or resumed;
	// a failed build takes its run out so a resync queues it again.
	queued map[string]int64
	// Written by the writer only (and by Connect before it starts).
	delivered  map[string]int64 // run → fencing token the agent holds (sent or resumed)
	sentCancel map[string]int64 // run → fencing token a Cancel was sent for
	drives     []*osvcv1.Drive
	beatDirty  bool
	// distributing: image → file whose Distribute was queued on this
	// stream; made at the first (most agents are no distribution point).
	distributing map[string]string

	lastRecv atomic.Int64 // unix nanos
	blocked  atomic.Bool  // the reader waits for room in the work queue

	// work holds the reports waiting for the worker, which runs only
	// while there are some (workMu guards working, stopped and workers).
	work    chan *osvcv1.ConnectRequest
	workMu  sync.Mutex
	working bool
	stopped bool
	workers sync.WaitGroup
}

func (c *conn) end(cause error) { c.cancel(cause) }

// Connect serves one agent stream until the agent leaves, its lease ends, a
// newer stream replaces it or the server stops. The returned error is a gRPC
// status error.
func (s *Service) Connect(stream osvcv1.AgentService_ConnectServer) error {
	first, err := s.recvHello(stream)
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if err := agents.ValidateHello(hello); err != nil {
		return errdefs.ToGRPC(err)
	}
	release, err := s.claim(hello.GetName())
	if err != nil {
		return err
	}
	defer release()
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	c := &conn{
		s:          s,
		id:         hello.GetName(),
		name:       agents.Name(hello.GetName()),
		site:       hello.GetSite(),
		ctx:        ctx,
		cancel:     cancel,
		queued:     map[string]int64{},
		delivered:  map[string]int64{},
		sentCancel: map[string]int64{},
		drives:     hello.GetDrives(),
	}
	c.out.init()
	c.lastRecv.Store(s.now().UnixNano())
	logger := s.logger.With("agent", c.name)

	session, err := s.agents.Open(ctx, hello)
	if errors.Is(err, errdefs.ErrConflict) {
		return errdefs.ToGRPC(err)
	}
	if errors.Is(err, errdefs.ErrFailedPrecondition) {
		return errdefs.ToGRPC(err)
	}
	if err != nil {
		return status.Error(codes.Unavailable, fmt.Sprintf("cannot open the agent's session: %v", err))
	}
	c.session = session
	defer s.closeSession(c)
	kaCtx, kaCancel := context.WithCancel(ctx)
	defer kaCancel()
	keepalive, err := s.client.KeepAlive(kaCtx, session.Lease)
	if err != nil {
		return status.Error(codes.Unavailable, fmt.Sprintf("cannot keep the agent's session alive: %v", err))
	}
	logger.Info("agent connected", "site", hello.GetSite(), "session", int64(session.Lease), "resumed_session", session.Resumed,
		"held_runs", len(hello.GetHeldRuns()))

	resume, discard, resumed, err := s.agents.Held(ctx, session, hello.GetHeldRuns())
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	// The agent holds its resumed runs: no Assign for them, a Cancel if asked.
	for run, token := range resumed {
		c.queued[run], c.delivered[run] = token, token
	}
	c.out.push(&osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Welcome{Welcome: &osvcv1.Welcome{
		Agent:             c.name,
		HeartbeatInterval: durationpb.New(s.heartbeat),
		ResumeRuns:        resume,
		DiscardRuns:       discard,
	}}})

	// Registered once its presence is written, so the presence watch tells
	// this stream's own write (at presenceRev) from later ones, and once
	// Welcome is queued, so it goes first. pushAssigned below lists what
	// the watches saw before.
	s.register(c)
	defer s.unregister(c)

	// Two goroutines serve a stream, whatever it does: this handler is its
	// one sender and drains the session's keepalive responses, and the
	// reader takes heartbeats inline. Reports start a worker that ends when
	// they are handled, so an idle agent costs no third one. The reader is
	// not waited for: Recv returns only once this handler has returned.
	defer c.stopWorkers()
	defer cancel(nil)
	if err := s.pushAssigned(ctx, c); err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	// What it serves and is no longer to hold: withdrawn while it was away.
	stale, err := s.dist.Stale(ctx, c.id, hello.GetDistributedImages())
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	for _, image := range stale {
		c.withdraw(image)
	}
	c.work = make(chan *osvcv1.ConnectRequest, workQueue)
	go func() {
		err := c.read(stream)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		c.end(err)
	}()
	if err := c.write(stream, keepalive); err != nil {
		c.end(err)
	}
	<-ctx.Done()
	cause := context.Cause(ctx)
	if errors.Is(cause, context.Canceled) || stream.Context().Err() != nil {
		logger.Info("agent disconnected")
		return nil
	}
	if _, ok := status.FromError(cause); !ok {
		logger.Warn("agent stream failed", "error", cause)
		return status.Error(codes.Unavailable, cause.Error())
	}
	logger.Info("agent stream ended", "reason", cause)
	return cause
}

// recvHello waits for the agent's first message, for as long as the agent
// may stay silent: a stream that never says Hello does not hold a handler.
func (s *Service) recvHello(stream osvcv1.AgentService_ConnectServer) (*osvcv1.ConnectRequest, error) {
	type received struct {
		m   *osvcv1.ConnectRequest
		err error
	}
	ch := make(chan received, 1)
	// Recv returns at the latest when this handler returns.
	go func() {
		m, err := stream.Recv()
		ch <- received{m, err}
	}()
	timer := time.NewTimer(missedHeartbeats * s.heartbeat)
	defer timer.Stop()
	select {
	case r := <-ch:
		if errors.Is(r.err, io.EOF) {
			// The agent closed its side without a word: its mistake, not
			// an internal error of the server.
			return nil, status.Error(codes.InvalidArgument, "the stream closed before Hello; open the stream with Hello")
		}
		return r.m, r.err
	case <-timer.C:
		return nil, status.Error(codes.DeadlineExceeded, "no Hello from the agent in time; open the stream with Hello")
	}
}

// closeSession records that the stream dropped; the session's lease is
// left to expire, so a reconnect within its TTL keeps the agent's runs.
func (s *Service) closeSession(c *conn) {
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	if err := s.agents.Close(ctx, c.session, time.Unix(0, c.lastRecv.Load())); err != nil {
		s.logger.Warn("cannot mark agent disconnected", "agent", c.name, "error", err)
	}
}

// read receives the agent's messages: heartbeats are taken inline and cheaply
// (in memory), everything else goes to the worker, so a flood of log batches
// never delays a heartbeat behind etcd.
func (c *conn) read(stream osvcv1.AgentService_ConnectServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		c.lastRecv.Store(c.s.now().UnixNano())
		switch m := req.GetMessage().(type) {
		case *osvcv1.ConnectRequest_Heartbeat:
			c.mu.Lock()
			if d := m.Heartbeat.GetDrives(); len(d) > 0 {
				c.drives = d
			}
			c.beatDirty = true
			c.mu.Unlock()
			c.ack(req.GetId(), nil)
			continue
		case nil:
			c.ack(req.GetId(), errdefs.InvalidArgument("message", "empty message; send one of the agent messages"))
			continue
		}
		c.blocked.Store(true)
		select {
		case c.work <- req:
		case <-c.ctx.Done():
			return nil
		}
		c.blocked.Store(false)
		c.lastRecv.Store(c.s.now().UnixNano())
		c.startWorker()
	}
}

// startWorker starts the worker unless it runs, or the stream ended.
func (c *conn) startWorker() {
	c.workMu.Lock()
	defer c.workMu.Unlock()
	if c.working || c.stopped {
		return
	}
	c.working = true
	c.workers.Add(1)
	go func() {
		defer c.workers.Done()
		c.handleQueued()
	}()
}

// stopWorkers lets no further worker start and waits for the running one.
func (c *conn) stopWorkers() {
	c.workMu.Lock()
	c.stopped = true
	c.workMu.Unlock()
	c.workers.Wait()
}

// handleQueued hands the queued reports to servicing in the order they
// came and acks each, and returns once the queue is empty: a report queued
// after that starts a worker again (startWorker), so one runs at a time.
func (c *conn) handleQueued() {
	for {
		var req *osvcv1.ConnectRequest
		select {
		case <-c.ctx.Done():
			c.workMu.Lock()
			c.working = false
			c.workMu.Unlock()
			return
		case req = <-c.work:
		default:
			c.workMu.Lock()
			if len(c.work) == 0 {
				c.working = false
				c.workMu.Unlock()
				return
			}
			c.workMu.Unlock()
			continue
		}
		err := c.handle(req)
		if err != nil {
			if code := errdefs.Code(err); code == codes.Internal || code == codes.Unavailable {
				c.s.logger.Warn("report not accepted", "agent", c.name, "error", err)
			} else {
				c.s.logger.Debug("report refused", "agent", c.name, "code", code, "error", err)
			}
		}
		c.ack(req.GetId(), err)
	}
}

func (c *conn) handle(req *osvcv1.ConnectRequest) error {
	sv := c.s.servicing
	switch m := req.GetMessage().(type) {
	case *osvcv1.ConnectRequest_StepChanged:
		return sv.ReportStep(c.ctx, c.name, m.StepChanged)
	case *osvcv1.ConnectRequest_Progress:
		return sv.ReportProgress(c.ctx, c.name, m.Progress)
	case *osvcv1.ConnectRequest_UpdateResult:
		return sv.ReportUpdateResult(c.ctx, c.name, m.UpdateResult)
	case *osvcv1.ConnectRequest_LogBatch:
		return sv.ReportLogs(c.ctx, c.name, m.LogBatch)
	case *osvcv1.ConnectRequest_RunResult:
		return sv.ReportRunResult(c.ctx, c.name, m.RunResult)
	case *osvcv1.ConnectRequest_DistributionReport:
		return c.s.dist.Report(c.ctx, c.id, m.DistributionReport)
	case *osvcv1.ConnectRequest_Hello:
		return fmt.Errorf("hello was already received on this stream; reconnect to say hello again: %w", errdefs.ErrFailedPrecondition)
	}
	return fmt.Errorf("unknown agent message %T; upgrade the server: %w", req.GetMessage(), errdefs.ErrInvalidArgument)
}

// ack answers report id with err as errdefs translates it: its code, its
// reason when the code is shared, and its message.
func (c *conn) ack(id uint64, err error) {
	ack := &osvcv1.Ack{Id: id}
	if errors.Is(err, errdefs.ErrStaleLease) {
		c.s.metrics.FencedReport()
	}
	if err != nil {
		public, incident := errdefs.Conceal(err)
		if incident != "" {
			c.s.logger.Error("internal error answering a report", "agent", c.name, "incident", incident, "error", err)
		}
		ack.Code, ack.Reason, ack.Message = int32(errdefs.Code(public)), errdefs.Reason(public), public.Error()
	}
	c.out.push(&osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Ack{Ack: ack}})
}

// beat ends a stream that stayed silent too long and otherwise hands the
// registry what the agent's heartbeats said since the last beat. The
// Service's beat loop calls it once per heartbeat interval.
func (c *conn) beat() {
	silent := c.s.now().Sub(time.Unix(0, c.lastRecv.Load()))
	if silent > missedHeartbeats*c.s.heartbeat && !c.blocked.Load() {
		c.end(errSilent)
		return
	}
	c.mu.Lock()
	dirty, drives := c.beatDirty, c.drives
	c.beatDirty = false
	c.mu.Unlock()
	if dirty {
		c.s.agents.Heartbeat(c.session, time.Unix(0, c.lastRecv.Load()), drives)
	}
}

// assign queues an Assign of run under token, once per token.
func (c *conn) assign(run string, token int64) {
	c.mu.Lock()
	if c.queued[run] == token {
		c.mu.Unlock()
		return
	}
	c.queued[run] = token
	c.mu.Unlock()
	c.out.add(outItem{assign: run, token: token})
}

// distribute queues a Distribute, once per file and stream unless again
// (a record made PENDING anew: a retry).
func (c *conn) distribute(m *osvcv1.Distribute, again bool) {
	c.mu.Lock()
	if !again && c.distributing[m.GetImage()] == m.GetSha256() {
		c.mu.Unlock()
		return
	}
	if c.distributing == nil {
		c.distributing = map[string]string{}
	}
	c.distributing[m.GetImage()] = m.GetSha256()
	c.mu.Unlock()
	c.out.push(&osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Distribute{Distribute: m}})
}

// withdraw queues a Withdraw of image.
func (c *conn) withdraw(image string) {
	c.mu.Lock()
	delete(c.distributing, image)
	c.mu.Unlock()
	c.out.push(&osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Withdraw{Withdraw: &osvcv1.Withdraw{Image: image}}})
}

// cancelRun queues a Cancel of run. It is sent at its turn once per token,
// and only for a run the agent holds: a run whose Assign is still to come
// gets its Cancel with it, since the Assign is built from the run as it is then.
func (c *conn) cancelRun(run, reason string) {
	c.out.add(outItem{cancel: run, reason: reason})
}

// cancelOnce returns a Cancel of run under token unless one was sent already.
func (c *conn) cancelOnce(run string, token int64, reason string) (*osvcv1.ConnectResponse, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sentCancel[run] == token {
		return nil, false
	}
	c.sentCancel[run] = token
	return cancelMsg(run, token, reason), true
}

func cancelMsg(run string, token int64, reason string) *osvcv1.ConnectResponse {
	return &osvcv1.ConnectResponse{Message: &osvcv1.ConnectResponse_Cancel{Cancel: &osvcv1.Cancel{Run: run, FencingToken: token, Reason: reason}}}
}

// write is the stream's one sender: it sends the outbox in order, building
// Assigns (which read etcd) as their turn comes. While it waits it drains
// the session's keepalive responses; their channel closing means the
// session is gone.
func (c *conn) write(stream osvcv1.AgentService_ConnectServer, keepalive <-chan *clientv3.LeaseKeepAliveResponse) error {
	for {
		items, err := c.out.take(c.ctx, keepalive)
		if err != nil || items == nil {
			return err
		}
		for _, it := range items {
			var msgs []*osvcv1.ConnectResponse
			switch {
			case it.assign != "":
				built, err := c.buildAssign(it.assign, it.token)
				if err != nil {
					if c.ctx.Err() != nil {
						return nil
					}
					c.assignFailed(it.assign, it.token, err)
					continue
				}
				msgs = built
			case it.cancel != "":
				c.mu.Lock()
				token, held := c.delivered[it.cancel]
				c.mu.Unlock()
				if !held {
					continue
				}
				if m, ok := c.cancelOnce(it.cancel, token, it.reason); ok {
					msgs = append(msgs, m)
				}
			default:
				msgs = append(msgs, it.msg)
			}
			for _, m := range msgs {
				if err := stream.Send(m); err != nil {
					return err
				}
			}
		}
	}
}

// buildAssign returns the Assign of run under token, followed by its Cancel
// when one was requested, and records the run as the agent's.
func (c *conn) buildAssign(run string, token int64) ([]*osvcv1.ConnectResponse, error) {
	a, err := c.s.assignment(c.ctx, run, token)
	if err != nil {
		return nil, err
	}
	msgs := []*osvcv1.ConnectResponse{{Message: &osvcv1.ConnectResponse_Assign{Assign: a}}}
	c.mu.Lock()
	c.delivered[run] = token
	c.mu.Unlock()
	if a.GetRun().GetCancelRequested() {
		if m, ok := c.cancelOnce(run, token, a.GetRun().GetError()); ok {
			msgs = append(msgs, m)
		}
	}
	return msgs, nil
}

// assignFailed drops an Assign whose token went stale and otherwise leaves
// it for the next resync to queue again: a run leased to a connected agent
// that never got its Assign would stay LEASED for good.
func (c *conn) assignFailed(run string, token int64, err error) {
	if errors.Is(err, errdefs.ErrStaleLease) {
		// The run ended or moved on before its turn came.
		c.s.logger.Debug("Assign no longer current", "agent", c.name, "run", run, "error", err)
		return
	}
	c.mu.Lock()
	if c.queued[run] == token {
		delete(c.queued, run)
	}
	c.mu.Unlock()
	c.s.logger.Warn("cannot build the Assign; the next resync tries again", "agent", c.name, "run", run,
		"retry_in", c.s.resync, "error", err)
}

// outbox is an unbounded, ordered queue of messages for one stream: pushes
// from watches never block on a slow agent.
type outbox struct {
	mu     sync.Mutex
	items  []outItem
	notify chan struct{}
}

// outItem is a message, or the Assign of a run under token to build at
// its turn, or a Cancel of a run to check at its turn.
type outItem struct {
	msg    *osvcv1.ConnectResponse
	assign string
	token  int64
	cancel string
	reason string
}

func (o *outbox) init() { o.notify = make(chan struct{}, 1) }

func (o *outbox) push(m *osvcv1.ConnectResponse) { o.add(outItem{msg: m}) }

func (o *outbox) add(it outItem) {
	o.mu.Lock()
	o.items = append(o.items, it)
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

// take waits for items, draining keepalive meanwhile; nil once ctx ended,
// errSessionEnded once keepalive closed.
func (o *outbox) take(ctx context.Context, keepalive <-chan *clientv3.LeaseKeepAliveResponse) ([]outItem, error) {
	for {
		o.mu.Lock()
		items := o.items
		o.items = nil
		o.mu.Unlock()
		if len(items) > 0 {
			return items, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-o.notify:
		case _, open := <-keepalive:
			if !open {
				if ctx.Err() != nil {
					return nil, nil
				}
				return nil, errSessionEnded
			}
		}
	}
}
