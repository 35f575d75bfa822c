package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

// reportSetupTimeout bounds starting the server and getting every fake agent
// its run, so a scheduler that never leases fails the benchmark.
const reportSetupTimeout = 2 * time.Minute

// pipelineWindow is how many reports a pipelining agent has in flight,
// well under the server's per-stream work queue.
const pipelineWindow = 32

// benchReport compares agent reports accepted per second over the real
// AgentService.Connect stream of osvc-server (server.New on loopback) with
// bare etcd transactions of one compare and one put of a run-sized value.
// Each of -c workers is a fake agent of its own site: it connects, the
// scheduler leases it its image's run, and it sends Progress reports carrying
// the fencing token, waiting for each Ack; a second variant keeps
// pipelineWindow reports in flight. The floor workers each CAS one key of
// their own. The server uses the benchmark's etcd as its external etcd, so
// both sides run on the same one (with short ticks under -fast, as the
// server's FastEtcd would run its embedded one). A report is a read and a
// fenced write plus the gRPC round trip; a ratio near 1/2 means it costs what
// its etcd round trips cost.
//
// It runs twice in the same run: over mutual TLS (agents with the
// certificates they enrolled for, etcd over TLS: osvc-server as deployed),
// the main figures, and in plaintext, on a bare server (the same agent
// service, servicing and scheduler, no TLS and no authorization), an extra
// figure whose ratio is mTLS ÷ plaintext reports/s: what security costs.
func benchReport(ctx context.Context, cfg benchConfig) (*Result, error) {
	plainSync, _, plainFloor, err := reportOn(ctx, cfg, false)
	if err != nil {
		return nil, fmt.Errorf("in plaintext: %w", err)
	}
	syncS, pipeS, floorS, err := reportOn(ctx, cfg, true)
	if err != nil {
		return nil, fmt.Errorf("over mutual TLS: %w", err)
	}
	res := &Result{Osvc: syncS.figure(), Floor: floorS.figure(), Extra: []Figure{pipeS.figure()}}
	return res, addPlaintext(res, plainSync, plainFloor)
}

// reportOn measures reports and their floor on a fresh etcd and server:
// osvc-server over mutual TLS when secure, else the bare server in plaintext.
func reportOn(ctx context.Context, cfg benchConfig, secure bool) (syncS, pipeS, floorS series, err error) {
	fail := func(err error) (series, series, series, error) { return series{}, series{}, series{}, err }
	e, err := startBenchEtcdTLS(ctx, cfg, secure)
	if err != nil {
		return fail(err)
	}
	defer e.close()
	st, err := store.New(store.Config{Client: e.client, Logger: cfg.Logger})
	if err != nil {
		return fail(err)
	}
	var (
		srv  target
		stop func()
	)
	if secure {
		srv, stop, err = startServer(ctx, cfg, e.etcd.Endpoints(), server.EtcdAuth{CAFile: e.tls.TrustedCAFile, CertFile: e.tls.CertFile, KeyFile: e.tls.KeyFile})
	} else {
		srv, stop, err = startBareServer(ctx, cfg, e)
	}
	if err != nil {
		return fail(err)
	}
	defer stop()

	setupCtx, cancel := context.WithTimeout(ctx, reportSetupTimeout)
	defer cancel()
	if err := putUpdate(setupCtx, st); err != nil {
		return fail(err)
	}
	conn, err := srv.dial()
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	servicingClient := osvcv1.NewServicingServiceClient(conn)

	// Agents are closed (deferred below) before the server stops.
	agents := make([]*fakeAgent, cfg.Workers)
	for w := range agents {
		if err := putSite(setupCtx, st, siteCode(w)); err != nil {
			return fail(err)
		}
		a, err := connectAgent(ctx, setupCtx, srv, w)
		if err != nil {
			return fail(err)
		}
		defer a.close()
		agents[w] = a
		img, err := putImage(setupCtx, st, fmt.Sprintf("bench-%d", w), siteCode(w))
		if err != nil {
			return fail(err)
		}
		if _, err := servicingClient.CreateSchedule(setupCtx, &osvcv1.CreateScheduleRequest{
			Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{catalog.UpdateName(benchUpdate)}},
		}); err != nil {
			return fail(fmt.Errorf("schedule %s: %w", img.GetName(), err))
		}
	}
	for _, a := range agents {
		if err := a.awaitAssign(setupCtx); err != nil {
			return fail(err)
		}
	}
	// One report each moves the runs IN_PROCESS (which writes the image too)
	// and warms the streams up.
	syncReports := func(ctx context.Context, w, ops int) ([]time.Duration, error) { return agents[w].reportEach(ctx, ops) }
	if _, err := measure(setupCtx, cfg.Workers, cfg.Workers, syncReports); err != nil {
		return fail(fmt.Errorf("warm up: %w", err))
	}
	runSize, err := storedRunSize(setupCtx, st, agents[0].run)
	if err != nil {
		return fail(err)
	}

	// The floor: each worker compares its key's revision and puts a
	// run-sized value, as a fenced report's write does.
	floorValue := string(make([]byte, runSize))
	floorRev := make([]int64, cfg.Workers)
	for w := range floorRev {
		resp, err := e.client.Put(ctx, fmt.Sprintf("%sbench-floor/%d", st.Prefix(), w), floorValue)
		if err != nil {
			return fail(fmt.Errorf("floor key: %w", err))
		}
		floorRev[w] = resp.Header.Revision
	}
	floor := perOp(func(ctx context.Context, w, _ int) error {
		key := fmt.Sprintf("%sbench-floor/%d", st.Prefix(), w)
		resp, err := e.client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", floorRev[w])).
			Then(clientv3.OpPut(key, floorValue)).
			Commit()
		if err != nil {
			return fmt.Errorf("floor txn: %w", err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("floor txn on %s: the compare failed", key)
		}
		floorRev[w] = resp.Header.Revision
		return nil
	})
	pipelined := func(ctx context.Context, w, ops int) ([]time.Duration, error) {
		return agents[w].reportPipelined(ctx, ops)
	}

	floorS = series{name: fmt.Sprintf("bare etcd Txn (1 compare, put of %d bytes)", runSize), unit: "txn/s"}
	syncS = series{name: "osvc Progress reports, each awaiting its Ack", unit: "reports/s"}
	pipeS = series{name: fmt.Sprintf("osvc Progress reports, %d in flight per agent", pipelineWindow), unit: "reports/s"}
	rounds := roundSizes(cfg.N)
	for r, ops := range rounds {
		for _, side := range []struct {
			s    *series
			work workFunc
		}{{&floorS, floor}, {&syncS, syncReports}, {&pipeS, pipelined}} {
			l, err := measure(ctx, cfg.Workers, ops, side.work)
			if err != nil {
				return fail(fmt.Errorf("round %d of %s: %w", r+1, side.s.name, err))
			}
			side.s.add(l)
			roundLine(cfg, "report", r, len(rounds), side.s, l)
		}
	}
	return syncS, pipeS, floorS, nil
}

// startServer runs osvc-server on loopback with the etcd at endpoints (none:
// embedded, with short ticks under -fast) until stop is called, and returns
// its address once it serves.
func startServer(ctx context.Context, cfg benchConfig, endpoints []string, etcdAuth server.EtcdAuth) (_ target, stop func(), err error) {
	dir, err := os.MkdirTemp("", "osvc-bench-server-*")
	if err != nil {
		return target{}, nil, fmt.Errorf("server data directory: %w", err)
	}
	srv, err := server.New(server.Config{
		DataDir: dir, Listen: "127.0.0.1:0", EtcdEndpoints: endpoints, EtcdAuth: etcdAuth, Logger: cfg.Logger, FastEtcd: cfg.Fast,
	})
	if err != nil {
		os.RemoveAll(dir)
		return target{}, nil, fmt.Errorf("configure osvc-server: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(runCtx) }()
	stop = func() {
		cancel()
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
			cfg.Logger.Warn("osvc-server did not stop cleanly", "error", err)
		}
		os.RemoveAll(dir)
	}
	readyCtx, cancelReady := context.WithTimeout(ctx, startupTimeout)
	defer cancelReady()
	select {
	case <-srv.Ready():
		return target{addr: srv.Addr(), caFile: srv.CAFile(), tokenFile: srv.AdminTokenFile()}, stop, nil
	case err := <-errc:
		cancel()
		os.RemoveAll(dir)
		return target{}, nil, fmt.Errorf("osvc-server stopped before it was ready: %w", err)
	case <-readyCtx.Done():
		stop()
		return target{}, nil, fmt.Errorf("osvc-server not ready: %w", readyCtx.Err())
	}
}

// fakeAgent is one agent stream driven by the benchmark: it reports on the
// run it was assigned and nothing else.
type fakeAgent struct {
	name   string
	conn   *grpc.ClientConn
	stream osvcv1.AgentService_ConnectClient
	end    context.CancelFunc
	// sendMu serializes Sends: the heartbeats go on the same stream.
	sendMu sync.Mutex
	// in receives what the server sends, until the stream ends with recvErr.
	in      chan *osvcv1.ConnectResponse
	recvErr error
	done    chan struct{}
	// beating ends when the heartbeat goroutine has.
	beating sync.WaitGroup
	// run and token are the assigned run and its fencing token.
	run    string
	token  int64
	nextID uint64
	seq    int
}

// connectAgent opens worker w's stream, which lives until close or until
// parent ends, and says Hello; it waits for Welcome under ctx.
func connectAgent(parent, ctx context.Context, srv target, w int) (*fakeAgent, error) {
	a := &fakeAgent{name: agents.Name(agentID(w)), in: make(chan *osvcv1.ConnectResponse, pipelineWindow), done: make(chan struct{})}
	conn, err := srv.dialAgent(ctx, agentID(w), siteCode(w))
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", a.name, err)
	}
	a.conn = conn
	streamCtx, end := context.WithCancel(parent)
	a.end = end
	stream, err := osvcv1.NewAgentServiceClient(conn).Connect(streamCtx)
	if err != nil {
		end()
		conn.Close()
		return nil, fmt.Errorf("open the stream of %s: %w", a.name, err)
	}
	a.stream = stream
	go a.receive()
	if err := a.send(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: &osvcv1.Hello{
		Name: agentID(w), Site: siteCode(w), Host: agentID(w), Version: "osvc-bench", Engines: []string{"wimlib"}, Capacity: 1,
	}}}); err != nil {
		a.close()
		return nil, err
	}
	m, err := a.recv(ctx)
	if err != nil {
		a.close()
		return nil, err
	}
	welcome := m.GetWelcome()
	if welcome == nil {
		a.close()
		return nil, fmt.Errorf("%s: the server answered Hello with %T, want Welcome", a.name, m.GetMessage())
	}
	interval := welcome.GetHeartbeatInterval().AsDuration()
	if interval <= 0 {
		a.close()
		return nil, fmt.Errorf("%s: Welcome has heartbeat interval %s, want a positive one", a.name, interval)
	}
	a.beating.Go(func() { a.beat(streamCtx, interval) })
	return a, nil
}

// beat sends heartbeats as a real agent does, so a stream left idle while
// the floor is measured is not ended as silent.
func (a *fakeAgent) beat(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Heartbeats are not acknowledged, so they take no id.
		if err := a.sendRaw(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Heartbeat{Heartbeat: &osvcv1.Heartbeat{}}}); err != nil {
			return
		}
	}
}

// receive is the stream's one receiver; it ends with the stream.
func (a *fakeAgent) receive() {
	defer close(a.done)
	defer close(a.in)
	for {
		m, err := a.stream.Recv()
		if err != nil {
			a.recvErr = err
			return
		}
		a.in <- m
	}
}

// close ends the stream and waits for its receiver.
func (a *fakeAgent) close() {
	a.end()
	// Drain until the receiver, its Recv ended, closes in.
	for range a.in {
	}
	<-a.done
	a.beating.Wait()
	a.conn.Close()
}

// send numbers m and sends it.
func (a *fakeAgent) send(m *osvcv1.ConnectRequest) error {
	a.nextID++
	m.Id = a.nextID
	return a.sendRaw(m)
}

func (a *fakeAgent) sendRaw(m *osvcv1.ConnectRequest) error {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	if err := a.stream.Send(m); err != nil {
		return fmt.Errorf("%s: send: %w", a.name, err)
	}
	return nil
}

// recv returns the next message from the server, giving up when ctx ends.
func (a *fakeAgent) recv(ctx context.Context) (*osvcv1.ConnectResponse, error) {
	select {
	case m, ok := <-a.in:
		if !ok {
			// recvErr is written before in is closed.
			return nil, fmt.Errorf("%s: the stream ended: %w", a.name, a.recvErr)
		}
		return m, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: waiting for the server: %w", a.name, ctx.Err())
	}
}

// awaitAssign waits for the scheduler to lease the agent its run.
func (a *fakeAgent) awaitAssign(ctx context.Context) error {
	for {
		m, err := a.recv(ctx)
		if err != nil {
			return fmt.Errorf("waiting for an Assign: %w", err)
		}
		if as := m.GetAssign(); as != nil {
			a.run, a.token = as.GetRun().GetName(), as.GetRun().GetFencingToken()
			return nil
		}
	}
}

// progress is the agent's next Progress report.
func (a *fakeAgent) progress() *osvcv1.ConnectRequest {
	a.seq++
	pct := int32(a.seq % 100)
	return &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Progress{Progress: &osvcv1.Progress{
		Run: a.run, FencingToken: a.token, Percent: pct,
		Update: &osvcv1.UpdateResult{Update: catalog.UpdateName(benchUpdate), Index: 1, Percent: pct, Message: "installing"},
	}}}
}

// checkAck fails unless m acknowledges report id as accepted.
func (a *fakeAgent) checkAck(m *osvcv1.ConnectResponse, id uint64) error {
	ack := m.GetAck()
	switch {
	case ack == nil:
		return fmt.Errorf("%s: got %T while waiting for the Ack of report %d", a.name, m.GetMessage(), id)
	case ack.GetId() != id:
		return fmt.Errorf("%s: got the Ack of report %d, want %d (acks come in order)", a.name, ack.GetId(), id)
	case ack.GetCode() != int32(codes.OK):
		return fmt.Errorf("%s: report %d refused with %s: %s", a.name, id, codes.Code(ack.GetCode()), ack.GetMessage())
	}
	return nil
}

// reportEach sends ops Progress reports, each after the previous one's Ack.
func (a *fakeAgent) reportEach(ctx context.Context, ops int) ([]time.Duration, error) {
	lats := make([]time.Duration, 0, ops)
	for range ops {
		start := time.Now()
		if err := a.send(a.progress()); err != nil {
			return nil, err
		}
		m, err := a.recv(ctx)
		if err != nil {
			return nil, err
		}
		if err := a.checkAck(m, a.nextID); err != nil {
			return nil, err
		}
		lats = append(lats, time.Since(start))
	}
	return lats, nil
}

// reportPipelined sends ops Progress reports keeping up to pipelineWindow
// of them unacknowledged; the latency of each is from its send to its Ack.
func (a *fakeAgent) reportPipelined(ctx context.Context, ops int) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	firstID := a.nextID + 1
	// inflight holds the send times of the unacknowledged reports, in
	// order; its capacity is the window.
	inflight := make(chan time.Time, pipelineWindow)
	sendErr := make(chan error, 1)
	msgs := make([]*osvcv1.ConnectRequest, ops)
	for i := range msgs {
		msgs[i] = a.progress()
	}
	go func() {
		for i, m := range msgs {
			select {
			case inflight <- time.Now():
			case <-ctx.Done():
				sendErr <- nil
				return
			}
			m.Id = firstID + uint64(i)
			if err := a.sendRaw(m); err != nil {
				sendErr <- err
				cancel()
				return
			}
		}
		sendErr <- nil
	}()
	lats := make([]time.Duration, 0, ops)
	var err error
	for i := range ops {
		var m *osvcv1.ConnectResponse
		if m, err = a.recv(ctx); err != nil {
			break
		}
		if err = a.checkAck(m, firstID+uint64(i)); err != nil {
			break
		}
		lats = append(lats, time.Since(<-inflight))
	}
	cancel()
	if sErr := <-sendErr; sErr != nil {
		return nil, sErr
	}
	a.nextID += uint64(ops)
	if err != nil {
		return nil, err
	}
	return lats, nil
}

// storedRunSize is the size of run's value in etcd.
func storedRunSize(ctx context.Context, st *store.Store, run string) (int, error) {
	id, err := servicing.RunID(run)
	if err != nil {
		return 0, err
	}
	resp, err := st.Client().Get(ctx, st.RunKey(id))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", run, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, fmt.Errorf("read %s: not found", run)
	}
	return len(resp.Kvs[0].Value), nil
}
