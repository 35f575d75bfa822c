package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/osvc/osvc/agent/conn"
	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server"
	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

// maxLinesPerRound is what one run stores (the server's cap per run): each
// round of the logs benchmark is a run of its own.
const maxLinesPerRound = 100000

// logSlab is how many lines the busy agent makes room for at a time.
const logSlab = 256

// benchLogs compares the log lines per second one busy agent gets persisted
// through osvc-server with the same bytes written straight to etcd. The
// agent is the real agent/conn code path (its log queue, linger and batches
// in flight) over a real AgentService.Connect stream, enrolled and over
// mutual TLS, to osvc-server on an etcd over mutual TLS, as deployed. It
// logs agent-like lines one SendLogs call each, as fast as the queue takes
// them without dropping any (it waits for room rather than lose lines), and
// the clock stops when FlushLogs says the server acknowledged the last one:
// each line is then in etcd. Each round is a run of its own, ended after.
//
// The floor writes what osvc stored, straight: the run's chunk values as
// etcd holds them, under keys of the same length, in as many transactions
// as osvc wrote them in (grouped by the revision that wrote them), each
// with a put of a log count, from one client, one after the other. It is
// what etcd itself costs to hold those bytes in that many durable writes,
// so the ratio is what osvc adds: the agent's queue, the gRPC stream, the
// fence's read, compression and the compares. (A bare gRPC stream of the
// lines would leave out durability, the thing measured; a put per chunk
// would charge the floor writes osvc saves.)
//
// Writes per 1,000 lines are etcd's own count: the store's revision before
// and after the lines went in, so anything else written meanwhile (an
// agent's heartbeat record, the run going IN_PROCESS) counts too.
func benchLogs(ctx context.Context, cfg benchConfig) (*Result, error) {
	rounds := roundSizes(cfg.N)
	if rounds[0] > maxLinesPerRound {
		return nil, fmt.Errorf("-n %d: at most %d, in %d runs of at most %d lines, the server's cap per run", cfg.N, throughputRounds*maxLinesPerRound, throughputRounds, maxLinesPerRound)
	}
	e, err := startBenchEtcdTLS(ctx, cfg, true)
	if err != nil {
		return nil, err
	}
	defer e.close()
	st, err := store.New(store.Config{Client: e.client, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	srv, stop, err := startServer(ctx, cfg, e.etcd.Endpoints(), server.EtcdAuth{CAFile: e.tls.TrustedCAFile, CertFile: e.tls.CertFile, KeyFile: e.tls.KeyFile})
	if err != nil {
		return nil, err
	}
	defer stop()
	setupCtx, cancel := context.WithTimeout(ctx, reportSetupTimeout)
	defer cancel()
	if err := putUpdate(setupCtx, st); err != nil {
		return nil, err
	}
	if err := putSite(setupCtx, st, siteCode(0)); err != nil {
		return nil, err
	}
	admin, err := srv.dial()
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	a, err := startLogAgent(ctx, setupCtx, cfg, srv)
	if err != nil {
		return nil, err
	}
	defer a.stop()

	osvcS := series{name: "osvc log lines persisted from one busy agent (agent/conn over Connect, mTLS)", unit: "lines/s"}
	floorS := series{name: "bare etcd Txn of the stored chunks, as osvc grouped them", unit: "lines/s"}
	var osvcWrites, floorWrites []float64
	for r, lines := range rounds {
		run, token, err := a.newRun(setupCtx, st, osvcv1.NewServicingServiceClient(admin), r)
		if err != nil {
			return nil, err
		}
		before, err := revision(ctx, e.client)
		if err != nil {
			return nil, err
		}
		elapsed, err := a.busy(ctx, run, token, lines)
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", r+1, err)
		}
		after, err := revision(ctx, e.client)
		if err != nil {
			return nil, err
		}
		if err := checkPersisted(ctx, osvcv1.NewServicingServiceClient(admin), run, lines); err != nil {
			return nil, err
		}
		osvcLoad := load{ops: lines, elapsed: elapsed}
		osvcS.add(osvcLoad)
		osvcWrites = append(osvcWrites, perKiloLine(after-before, lines))
		logsLine(cfg, r, len(rounds), &osvcS, osvcLoad)

		floorLoad, txns, err := replayChunks(ctx, e.client, st, run, lines, r)
		if err != nil {
			return nil, fmt.Errorf("round %d of the floor: %w", r+1, err)
		}
		floorS.add(floorLoad)
		floorWrites = append(floorWrites, perKiloLine(int64(txns), lines))
		logsLine(cfg, r, len(rounds), &floorS, floorLoad)
		fmt.Fprintf(cfg.Out, "logs %d/%d: etcd writes per 1,000 lines: osvc %.3g (%d revisions), floor %.3g (%d transactions)\n",
			r+1, len(rounds), osvcWrites[r], after-before, floorWrites[r], txns)

		if err := a.end(ctx, run, token); err != nil {
			return nil, err
		}
	}
	writes := Figure{Name: "osvc etcd writes per 1,000 lines (store revisions; ratio: ÷ the floor's transactions per 1,000 lines)",
		Unit: "writes/1k lines", Value: median(osvcWrites), Samples: osvcWrites}
	floorW := Figure{Name: "floor etcd writes per 1,000 lines", Unit: "writes/1k lines", Value: median(floorWrites), Samples: floorWrites}
	if floorW.Value > 0 {
		writes.Ratio = writes.Value / floorW.Value
	}
	floorW.Ratio = 1
	return &Result{Osvc: osvcS.figure(), Floor: floorS.figure(), Extra: []Figure{writes, floorW}}, nil
}

// logsLine prints one round of one figure to the summary; the lines are
// not timed one by one.
func logsLine(cfg benchConfig, round, rounds int, s *series, l load) {
	fmt.Fprintf(cfg.Out, "logs %d/%d: %s %.0f %s (%d lines in %s)\n", round+1, rounds, s.name, l.rate(), s.unit, l.ops, l.elapsed.Round(time.Millisecond))
}

// perKiloLine is writes per 1,000 of lines.
func perKiloLine(writes int64, lines int) float64 { return float64(writes) * 1000 / float64(lines) }

// revision is etcd's current revision: one more for each write.
func revision(ctx context.Context, client *clientv3.Client) (int64, error) {
	resp, err := client.Get(ctx, "osvc-bench-revision", clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("read etcd's revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// logAgent is a busy agent made of the real agent/conn.Conn: it takes the
// runs it is assigned and logs on them.
type logAgent struct {
	conn    *conn.Conn
	assigns chan *osvcv1.Assign
	done    chan error
	cancel  context.CancelFunc
}

func (a *logAgent) Assign(_ context.Context, as *osvcv1.Assign)    { a.assigns <- as }
func (a *logAgent) Cancel(*osvcv1.Cancel)                          {}
func (a *logAgent) Welcome(*osvcv1.Welcome)                        {}
func (a *logAgent) Distribute(context.Context, *osvcv1.Distribute) {}
func (a *logAgent) Withdraw(*osvcv1.Withdraw)                      {}

// startLogAgent enrolls agent 0 of its site and runs its Conn until stop,
// or until parent ends; it waits for the connection under ctx.
func startLogAgent(parent, ctx context.Context, cfg benchConfig, srv target) (*logAgent, error) {
	name, site := agentID(0), siteCode(0)
	creds, err := srv.agentCredentials(ctx, name, site)
	if err != nil {
		return nil, err
	}
	a := &logAgent{assigns: make(chan *osvcv1.Assign, 1), done: make(chan error, 1)}
	c, err := conn.New(conn.Config{
		Server:      srv.addr,
		DialOptions: []grpc.DialOption{creds},
		Logger:      cfg.Logger,
		Handler:     a,
		Hello: func() *osvcv1.Hello {
			return &osvcv1.Hello{Name: name, Site: site, Host: name, Version: "osvc-bench", Engines: []string{"wimlib"}, Capacity: 1}
		},
	})
	if err != nil {
		return nil, err
	}
	a.conn = c
	runCtx, cancel := context.WithCancel(parent)
	a.cancel = cancel
	go func() { a.done <- c.Run(runCtx) }()
	select {
	case <-c.Connected():
		return a, nil
	case err := <-a.done:
		cancel()
		return nil, fmt.Errorf("agent %s: %w", name, err)
	case <-ctx.Done():
		a.stop()
		return nil, fmt.Errorf("agent %s did not connect: %w", name, ctx.Err())
	}
}

func (a *logAgent) stop() {
	a.cancel()
	<-a.done
}

// newRun schedules a run of a fresh image of the agent's site and waits for
// its Assign: the run's name and fencing token.
func (a *logAgent) newRun(ctx context.Context, st *store.Store, client osvcv1.ServicingServiceClient, round int) (string, int64, error) {
	img, err := putImage(ctx, st, fmt.Sprintf("bench-logs-%d", round), siteCode(0))
	if err != nil {
		return "", 0, err
	}
	if _, err := client.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{
		Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{catalog.UpdateName(benchUpdate)}},
	}); err != nil {
		return "", 0, fmt.Errorf("schedule %s: %w", img.GetName(), err)
	}
	select {
	case as := <-a.assigns:
		return as.GetRun().GetName(), as.GetRun().GetFencingToken(), nil
	case <-ctx.Done():
		return "", 0, fmt.Errorf("waiting for the run of %s: %w", img.GetName(), ctx.Err())
	}
}

// busy logs lines 1..n on run and returns how long until the server
// acknowledged the last.
func (a *logAgent) busy(ctx context.Context, run string, token int64, n int) (time.Duration, error) {
	start := time.Now()
	for seq := 1; seq <= n; {
		slab := min(logSlab, n-seq+1)
		if err := a.conn.WaitLogRoom(ctx, slab); err != nil {
			return 0, err
		}
		for range slab {
			a.conn.SendLogs(run, token, []*osvcv1.LogLine{benchLine(seq)})
			seq++
		}
	}
	if err := a.conn.FlushLogs(ctx, run, token); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// end reports the run FAILED, so the next round's run can be leased.
func (a *logAgent) end(ctx context.Context, run string, token int64) error {
	err := a.conn.Send(ctx, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_RunResult{RunResult: &osvcv1.RunResult{
		Run: run, FencingToken: token, State: osvcv1.RunState_RUN_STATE_FAILED, Error: "osvc-bench: the round is over"}}})
	if err != nil {
		return fmt.Errorf("end %s: %w", run, err)
	}
	return nil
}

// benchLine is line seq of a busy run, shaped like the wimlib engine's
// lines: a few kinds of message with changing numbers and names.
func benchLine(seq int) *osvcv1.LogLine {
	var msg string
	switch seq % 4 {
	case 0:
		msg = fmt.Sprintf("run.wimlib: wimlib-imagex: applying Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.%d.1.9 to index 1: %d%% (%d of 3000 files)",
			4300+seq%40, seq%100, seq%3000)
	case 1:
		msg = fmt.Sprintf("run.wimlib: installed component amd64_microsoft-windows-os-kernel_31bf3856ad364e35_10.0.22621.%d_none_%08x into Windows/WinSxS",
			seq%5000, uint32(seq)*2654435761)
	case 2:
		msg = fmt.Sprintf("run: step APPLY: update updates/kb50%05d index=1 percent=%d elapsed=%dms", seq%100000, seq%100, seq%9000)
	default:
		msg = fmt.Sprintf("run.wimlib: wimlib-imagex: extracting file Windows/System32/drivers/%c%c%c%04d.sys (%d bytes)",
			'a'+rune(seq%26), 'a'+rune(seq/26%26), 'a'+rune(seq/676%26), seq%10000, 4096+seq%65536)
	}
	return &osvcv1.LogLine{Sequence: int64(seq), Time: timestamppb.Now(), Level: "INFO", Message: msg}
}

// checkPersisted fails unless the server counts n lines for run.
func checkPersisted(ctx context.Context, client osvcv1.ServicingServiceClient, run string, n int) error {
	resp, err := client.GetRun(ctx, &osvcv1.GetRunRequest{Name: run})
	if err != nil {
		return fmt.Errorf("get %s: %w", run, err)
	}
	if got := resp.GetRun().GetLogLineCount(); got != int64(n) {
		return fmt.Errorf("%s counts %d log lines, the agent sent %d: the benchmark measured lines that were not stored", run, got, n)
	}
	return nil
}

// replayChunks writes run's stored chunk values again under a prefix of the
// floor's, in one transaction per revision osvc wrote them at, each with a
// log count put; it returns the time taken for the run's n lines and how
// many transactions it made.
func replayChunks(ctx context.Context, client *clientv3.Client, st *store.Store, run string, n, round int) (load, int, error) {
	id, err := servicing.RunID(run)
	if err != nil {
		return load{}, 0, err
	}
	resp, err := client.Get(ctx, st.LogsPrefix(id), clientv3.WithPrefix())
	if err != nil {
		return load{}, 0, fmt.Errorf("read the chunks of %s: %w", run, err)
	}
	count, err := st.Marshal(&storev1.LogCount{Lines: int64(n), FencingToken: resp.Header.Revision, Base: int64(n)})
	if err != nil {
		return load{}, 0, err
	}
	// Keys of the same length as osvc's: the run id swapped for one of the floor.
	floorID := strings.Repeat("f", len(id)-len(fmt.Sprint(round))) + fmt.Sprint(round)
	var txns [][]clientv3.Op
	last := int64(-1)
	for _, kv := range resp.Kvs {
		if kv.ModRevision != last {
			txns = append(txns, []clientv3.Op{clientv3.OpPut(st.LogCountKey(floorID), string(count))})
			last = kv.ModRevision
		}
		key := st.LogsPrefix(floorID) + strings.TrimPrefix(string(kv.Key), st.LogsPrefix(id))
		txns[len(txns)-1] = append(txns[len(txns)-1], clientv3.OpPut(key, string(kv.Value)))
	}
	if len(txns) == 0 {
		return load{}, 0, fmt.Errorf("%s has no stored chunks", run)
	}
	start := time.Now()
	for _, ops := range txns {
		if _, err := client.Txn(ctx).Then(slices.Clip(ops)...).Commit(); err != nil {
			return load{}, 0, fmt.Errorf("floor txn: %w", err)
		}
	}
	return load{ops: n, elapsed: time.Since(start)}, len(txns), nil
}
