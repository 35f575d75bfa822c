package agentsvc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	storev1 "github.com/osvc/osvc/gen/osvc/store/v1"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/agentsvc"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/scheduler"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	storetest.Close()
	os.Exit(code)
}

// harness is a server (agent stream, servicing API, scheduler) on bufconn.
type harness struct {
	*servicingtest.Env
	svc       *agentsvc.Service
	agents    osvcv1.AgentServiceClient
	servicing osvcv1.ServicingServiceClient
	image     *osvcv1.Image
}

// harnessConfig tunes a harness beyond the servicing options.
type harnessConfig struct {
	heartbeat time.Duration
	resync    time.Duration
	// setup runs on the agent service before it serves anything.
	setup func(*agentsvc.Service)
	// withoutRun leaves the agent service's Run unstarted: no watch and no
	// periodic resync push anything, as if every event were missed.
	withoutRun bool
}

func newHarness(t *testing.T, opts servicingtest.Options) *harness {
	t.Helper()
	return newHarnessWithHeartbeat(t, opts, 0)
}

func newHarnessWithHeartbeat(t *testing.T, opts servicingtest.Options, heartbeat time.Duration) *harness {
	t.Helper()
	return newHarnessWith(t, opts, harnessConfig{heartbeat: heartbeat})
}

func newHarnessWith(t *testing.T, opts servicingtest.Options, hc harnessConfig) *harness {
	t.Helper()
	env := servicingtest.New(t, opts)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC))
	env.Update(t, "ssu", osvcv1.Classification_CLASSIFICATION_SERVICING_STACK, time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC))
	agentSvc, err := agentsvc.New(agentsvc.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, Distribution: env.Distribution, Logger: env.Logger,
		HeartbeatInterval: hc.heartbeat, ResyncInterval: hc.resync})
	if err != nil {
		t.Fatalf("agentsvc.New: %v", err)
	}
	if hc.setup != nil {
		hc.setup(agentSvc)
	}
	sched, err := scheduler.New(scheduler.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, Logger: env.Logger, ServerID: "test", ElectionTTL: 2 * time.Second})
	if err != nil {
		t.Fatalf("scheduler.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if !hc.withoutRun {
		wg.Go(func() { _ = agentSvc.Run(ctx) })
	}
	wg.Go(func() { _ = sched.Run(ctx) })

	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	osvcv1.RegisterAgentServiceServer(srv, api.NewAgentServer(agentSvc, nil, env.Logger))
	osvcv1.RegisterServicingServiceServer(srv, api.NewServicingServer(env.Service, env.Logger))
	wg.Go(func() { _ = srv.Serve(lis) })
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		srv.Stop()
		wg.Wait()
	})
	return &harness{
		Env:       env,
		svc:       agentSvc,
		agents:    osvcv1.NewAgentServiceClient(conn),
		servicing: osvcv1.NewServicingServiceClient(conn),
		image:     env.Image(t, "win11", "PS1", 1),
	}
}

// replica starts another server replica's agent service on the same etcd
// and returns a client of it.
func (h *harness) replica(t *testing.T, serverID string) osvcv1.AgentServiceClient {
	t.Helper()
	reg, err := agents.New(agents.Config{Store: h.Store, Logger: h.Logger, ServerID: serverID})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := agentsvc.New(agentsvc.Config{Store: h.Store, Servicing: h.Service, Agents: reg, Distribution: h.Distribution, Logger: h.Logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = svc.Run(ctx) })
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	osvcv1.RegisterAgentServiceServer(srv, api.NewAgentServer(svc, nil, h.Logger))
	wg.Go(func() { _ = srv.Serve(lis) })
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		srv.Stop()
		wg.Wait()
	})
	return osvcv1.NewAgentServiceClient(conn)
}

func (h *harness) schedule(t *testing.T) *osvcv1.Run {
	t.Helper()
	resp, err := h.servicing.CreateSchedule(context.Background(), &osvcv1.CreateScheduleRequest{
		Parent: h.image.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{"updates/cu", "updates/ssu"}},
	})
	if err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	return resp.GetRun()
}

// agent is a hand-driven agent stream.
type agent struct {
	t       *testing.T
	stream  osvcv1.AgentService_ConnectClient
	cancel  context.CancelFunc
	nextID  uint64
	in      chan *osvcv1.ConnectResponse
	err     chan error
	pending []*osvcv1.ConnectResponse
}

func hello(name string, held ...*osvcv1.HeldRun) *osvcv1.Hello {
	return &osvcv1.Hello{Name: name, Site: "PS1", Host: name + ".contoso.com", Version: "test", Engines: []string{"wimlib"},
		Drives: []*osvcv1.Drive{{Path: "/srv", FreeBytes: 100 << 30, TotalBytes: 200 << 30}}, Capacity: 1, HeldRuns: held}
}

// open opens a stream and sends first, without waiting for an answer.
func (h *harness) open(t *testing.T, first *osvcv1.ConnectRequest) *agent {
	t.Helper()
	return openOn(t, h.agents, first)
}

func openOn(t *testing.T, client osvcv1.AgentServiceClient, first *osvcv1.ConnectRequest) *agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := client.Connect(ctx)
	if err != nil {
		cancel()
		t.Fatalf("Connect: %v", err)
	}
	a := &agent{t: t, stream: stream, cancel: cancel, nextID: 1, in: make(chan *osvcv1.ConnectResponse, 100), err: make(chan error, 1)}
	t.Cleanup(cancel)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				a.err <- err
				return
			}
			a.in <- m
		}
	}()
	if err := stream.Send(first); err != nil {
		t.Fatalf("send: %v", err)
	}
	return a
}

// connect says hello and returns the Welcome.
func (h *harness) connect(t *testing.T, hi *osvcv1.Hello) (*agent, *osvcv1.Welcome) {
	t.Helper()
	return connectOn(t, h.agents, hi)
}

func connectOn(t *testing.T, client osvcv1.AgentServiceClient, hi *osvcv1.Hello) (*agent, *osvcv1.Welcome) {
	t.Helper()
	a := openOn(t, client, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: hi}})
	// Welcome comes first, before any Assign.
	first := a.expect("the first message", func(*osvcv1.ConnectResponse) bool { return true })
	if first.GetWelcome() == nil {
		t.Fatalf("first message is %T, want Welcome", first.GetMessage())
	}
	return a, first.GetWelcome()
}

// expect returns the next message that match accepts, keeping the others for later.
func (a *agent) expect(what string, match func(*osvcv1.ConnectResponse) bool) *osvcv1.ConnectResponse {
	a.t.Helper()
	for i, m := range a.pending {
		if match(m) {
			a.pending = append(a.pending[:i], a.pending[i+1:]...)
			return m
		}
	}
	timeout := time.NewTimer(20 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case m := <-a.in:
			if match(m) {
				return m
			}
			a.pending = append(a.pending, m)
		case err := <-a.err:
			a.t.Fatalf("waiting for %s: stream ended: %v", what, err)
		case <-timeout.C:
			a.t.Fatalf("waited 20s for %s", what)
		}
	}
}

// ended waits for the stream to end and returns its status.
func (a *agent) ended() error {
	a.t.Helper()
	timeout := time.NewTimer(20 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case m := <-a.in:
			a.pending = append(a.pending, m)
		case err := <-a.err:
			return err
		case <-timeout.C:
			a.t.Fatal("waited 20s for the stream to end")
		}
	}
}

// report sends an agent message and returns its Ack.
func (a *agent) report(m *osvcv1.ConnectRequest) *osvcv1.Ack {
	a.t.Helper()
	m.Id = a.nextID
	a.nextID++
	if err := a.stream.Send(m); err != nil {
		a.t.Fatalf("send: %v", err)
	}
	id := m.Id
	return a.expect(fmt.Sprintf("Ack %d", id), func(r *osvcv1.ConnectResponse) bool { return r.GetAck() != nil && r.GetAck().GetId() == id }).GetAck()
}

func (a *agent) accepted(m *osvcv1.ConnectRequest) {
	a.t.Helper()
	if ack := a.report(m); ack.GetCode() != 0 {
		a.t.Fatalf("report %T refused: code %d %s", m.GetMessage(), ack.GetCode(), ack.GetMessage())
	}
}

func (a *agent) assign(run string) *osvcv1.Assign {
	a.t.Helper()
	return a.expect("Assign of "+run, func(m *osvcv1.ConnectResponse) bool { return m.GetAssign().GetRun().GetName() == run }).GetAssign()
}

// inspectNext waits for the Assign of an inspection run and reports it
// succeeded with one index, as an agent that verified the file does.
func (a *agent) inspectNext() *osvcv1.Assign {
	a.t.Helper()
	as := a.expect("an inspection Assign", func(m *osvcv1.ConnectResponse) bool {
		return m.GetAssign().GetRun().GetKind() == osvcv1.RunKind_RUN_KIND_INSPECTION
	}).GetAssign()
	a.accepted(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_RunResult{RunResult: &osvcv1.RunResult{
		Run: as.GetRun().GetName(), FencingToken: as.GetRun().GetFencingToken(), State: osvcv1.RunState_RUN_STATE_SUCCEEDED,
		ResultSha256: as.GetSource().GetSha256(), Indexes: []*osvcv1.ImageIndex{{Index: 1, Name: "inspected", Build: 22631}}}}})
	return as
}

func step(run string, token int64, s osvcv1.Step, st osvcv1.StepState) *osvcv1.ConnectRequest {
	return &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_StepChanged{StepChanged: &osvcv1.StepChanged{
		Run: run, FencingToken: token, Step: &osvcv1.StepRecord{Step: s, State: st}}}}
}

func logs(run string, token int64, from, to int64) *osvcv1.ConnectRequest {
	b := &osvcv1.LogBatch{Run: run, FencingToken: token}
	for i := from; i <= to; i++ {
		b.Lines = append(b.Lines, &osvcv1.LogLine{Sequence: i, Level: "info", Message: fmt.Sprintf("line %d", i)})
	}
	return &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_LogBatch{LogBatch: b}}
}

func result(run string, token int64, state osvcv1.RunState, sha string) *osvcv1.ConnectRequest {
	return &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_RunResult{RunResult: &osvcv1.RunResult{
		Run: run, FencingToken: token, State: state, ResultSha256: sha}}}
}

func (h *harness) leaseOf(t *testing.T, agentID string) clientv3.LeaseID {
	t.Helper()
	p, _, err := store.Get[*storev1.AgentPresence](context.Background(), h.Store, h.Store.PresenceKey(agentID))
	if err != nil {
		t.Fatalf("presence of %s: %v", agentID, err)
	}
	return clientv3.LeaseID(p.GetSessionLease())
}

func TestAnAgentServicesRunsOverItsStream(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	ctx := context.Background()
	a, welcome := h.connect(t, hello("ps1-a"))
	if welcome.GetAgent() != "agents/ps1-a" || welcome.GetHeartbeatInterval().AsDuration() != 10*time.Second {
		t.Errorf("welcome = %v", welcome)
	}
	v1 := h.image.GetVersions()[0]

	run := h.schedule(t)
	as := a.assign(run.GetName())
	token := as.GetRun().GetFencingToken()
	if token == 0 || token != h.AssignmentRevision(t, run.GetName()) {
		t.Fatalf("Assign token %d, want the assignment key's ModRevision %d", token, h.AssignmentRevision(t, run.GetName()))
	}
	if as.GetImage().GetName() != h.image.GetName() || as.GetSource().GetSha256() != v1.GetSha256() ||
		len(as.GetUpdates()) != 2 || as.GetUpdates()[0].GetName() != "updates/ssu" || len(as.GetUpdates()[0].GetFiles()) != 1 {
		t.Errorf("Assign = %v", as)
	}

	name := run.GetName()
	a.accepted(step(name, token, osvcv1.Step_STEP_DRIVE, osvcv1.StepState_STEP_STATE_RUNNING))
	if r := h.Run(t, name); r.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS {
		t.Errorf("after StepChanged the run is %s, want IN_PROCESS", r.GetState())
	}
	// Heartbeats get no Ack and may come between reports.
	if err := a.stream.Send(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Heartbeat{Heartbeat: &osvcv1.Heartbeat{}}}); err != nil {
		t.Fatal(err)
	}
	a.accepted(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Progress{Progress: &osvcv1.Progress{Run: name, FencingToken: token, Percent: 30,
		Update: &osvcv1.UpdateResult{Update: "updates/ssu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, Percent: 60}}}})
	a.accepted(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_UpdateResult{UpdateResult: &osvcv1.UpdateResultReport{Run: name, FencingToken: token,
		Result: &osvcv1.UpdateResult{Update: "updates/ssu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_APPLIED}}}})
	a.accepted(logs(name, token, 1, 3))
	a.accepted(logs(name, token, 1, 3)) // resent: stored once
	a.accepted(logs(name, token, 4, 4))
	v2 := h.Blob(t, "wim of win11 version 2")
	a.accepted(result(name, token, osvcv1.RunState_RUN_STATE_SUCCEEDED, v2.GetSha256()))

	r := h.Run(t, name)
	if r.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || r.GetResultVersion() != 2 || r.GetLogLineCount() != 4 ||
		r.GetUpdateResults()[0].GetState() != osvcv1.UpdateState_UPDATE_STATE_APPLIED {
		t.Errorf("run = %v", r)
	}
	img := h.GetImage(t, h.image.GetName())
	if img.GetCurrentVersion() != 2 || len(img.GetVersions()) != 2 || img.GetVersions()[0].GetVersion() != 1 {
		t.Errorf("image versions %v current %d, want 1 kept and 2 current", img.GetVersions(), img.GetCurrentVersion())
	}

	// WatchRun of the ended run: its final snapshot with every line once, then the end.
	watch, err := h.servicing.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	var last *osvcv1.Run
	for {
		m, err := watch.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("WatchRun: %v", err)
		}
		last = m.GetRun()
		for _, l := range m.GetLogLines() {
			seqs = append(seqs, l.GetSequence())
		}
	}
	if last.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || fmt.Sprint(seqs) != "[1 2 3 4]" {
		t.Errorf("WatchRun: last state %s, lines %v; want SUCCEEDED and 1..4", last.GetState(), seqs)
	}

	// Version 2 is serviced once an agent inspected it.
	if v := img.GetVersions()[1]; v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_PENDING || v.GetInspectionRun() == "" {
		t.Errorf("version 2 inspection = %s by %q, want PENDING by a run", v.GetInspection(), v.GetInspectionRun())
	}
	run3 := h.schedule(t)
	inspection := a.inspectNext()
	if inspection.GetSource().GetVersion() != 2 || len(inspection.GetUpdates()) != 0 {
		t.Errorf("inspection Assign = %v, want version 2 and no updates", inspection)
	}
	// A third version drops the first.
	as3 := a.assign(run3.GetName())
	if as3.GetSource().GetVersion() != 2 {
		t.Errorf("next Assign's source version = %d, want 2", as3.GetSource().GetVersion())
	}
	v3 := h.Blob(t, "wim of win11 version 3")
	a.accepted(result(run3.GetName(), as3.GetRun().GetFencingToken(), osvcv1.RunState_RUN_STATE_SUCCEEDED, v3.GetSha256()))
	img = h.GetImage(t, h.image.GetName())
	if img.GetCurrentVersion() != 3 || len(img.GetVersions()) != 2 || img.GetVersions()[0].GetVersion() != 2 {
		t.Errorf("image versions %v current %d, want 2 and 3", img.GetVersions(), img.GetCurrentVersion())
	}

	a.inspectNext()
	if v := h.GetImage(t, h.image.GetName()).GetVersions()[1]; v.GetInspection() != osvcv1.InspectionState_INSPECTION_STATE_INSPECTED {
		t.Errorf("version 3 inspection = %s, want INSPECTED", v.GetInspection())
	}

	list, err := h.agents.ListAgents(ctx, &osvcv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetAgents()) != 1 || list.GetAgents()[0].GetState() != osvcv1.AgentState_AGENT_STATE_CONNECTED ||
		list.GetAgents()[0].GetSite() != "PS1" || len(list.GetAgents()[0].GetRuns()) != 0 {
		t.Errorf("ListAgents = %v", list.GetAgents())
	}
}

func TestRevokingTheAgentsLeaseRequeuesItsRunAndAbortsTheOldToken(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)
	token := a.assign(run.GetName()).GetRun().GetFencingToken()
	a.accepted(step(run.GetName(), token, osvcv1.Step_STEP_DRIVE, osvcv1.StepState_STEP_STATE_RUNNING))

	if _, err := h.Store.Client().Revoke(context.Background(), h.leaseOf(t, "ps1-a")); err != nil {
		t.Fatal(err)
	}
	if err := a.ended(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream ended with %v, want Unavailable", err)
	}
	h.WaitRun(t, run.GetName(), "a requeue after the revoke", func(r *osvcv1.Run) bool {
		return r.GetAttempt() == 1 && r.GetState() == osvcv1.RunState_RUN_STATE_PENDING
	})

	// The agent reconnects still holding the run: it is told to discard it,
	// and its reports with the old token are refused with ABORTED.
	b, welcome := h.connect(t, hello("ps1-a", &osvcv1.HeldRun{Run: run.GetName(), FencingToken: token}))
	if len(welcome.GetDiscardRuns()) != 1 || welcome.GetDiscardRuns()[0] != run.GetName() || len(welcome.GetResumeRuns()) != 0 {
		t.Errorf("welcome = %v, want the run to discard", welcome)
	}
	if ack := b.report(step(run.GetName(), token, osvcv1.Step_STEP_STAGE, osvcv1.StepState_STEP_STATE_RUNNING)); ack.GetCode() != int32(codes.Aborted) {
		t.Errorf("report with the old token: Ack code %d (%s), want 10 ABORTED", ack.GetCode(), ack.GetMessage())
	}
	// The run comes back to the agent under a new lease.
	again := b.assign(run.GetName())
	if again.GetRun().GetAttempt() != 2 || again.GetRun().GetFencingToken() == token {
		t.Errorf("second Assign: attempt %d token %d (old %d)", again.GetRun().GetAttempt(), again.GetRun().GetFencingToken(), token)
	}
}

func TestALostLeaseOnTheLastAttemptFailsTheRun(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{MaxAttempts: 1})
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)
	a.assign(run.GetName())
	if _, err := h.Store.Client().Revoke(context.Background(), h.leaseOf(t, "ps1-a")); err != nil {
		t.Fatal(err)
	}
	r := h.WaitRun(t, run.GetName(), "FAILED", func(r *osvcv1.Run) bool { return r.GetState() == osvcv1.RunState_RUN_STATE_FAILED })
	if r.GetAttempt() != 1 || r.GetError() == "" {
		t.Errorf("failed run = %v", r)
	}
}

func TestCancelReachesTheAgentAndLeavesTheImageUntouched(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	ctx := context.Background()
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)
	token := a.assign(run.GetName()).GetRun().GetFencingToken()
	a.accepted(step(run.GetName(), token, osvcv1.Step_STEP_APPLY, osvcv1.StepState_STEP_STATE_RUNNING))

	if _, err := h.servicing.CancelRun(ctx, &osvcv1.CancelRunRequest{Name: run.GetName(), Reason: "wrong updates"}); err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	c := a.expect("Cancel", func(m *osvcv1.ConnectResponse) bool { return m.GetCancel() != nil }).GetCancel()
	if c.GetRun() != run.GetName() || c.GetFencingToken() != token || c.GetReason() != "wrong updates" {
		t.Errorf("Cancel = %v", c)
	}
	a.accepted(result(run.GetName(), token, osvcv1.RunState_RUN_STATE_CANCELED, ""))
	if r := h.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_CANCELED {
		t.Errorf("run = %s, want CANCELED", r.GetState())
	}
	if img := h.GetImage(t, h.image.GetName()); img.GetCurrentVersion() != 1 || len(img.GetVersions()) != 1 {
		t.Errorf("image after a cancel: versions %v current %d, want version 1 only", img.GetVersions(), img.GetCurrentVersion())
	}

	// A PENDING run is canceled at once, without an agent.
	a.cancel()
	run2 := h.schedule(t)
	resp, err := h.servicing.CancelRun(ctx, &osvcv1.CancelRunRequest{Name: run2.GetName()})
	if err != nil {
		t.Fatalf("CancelRun of a pending run: %v", err)
	}
	if st := resp.GetRun().GetState(); st != osvcv1.RunState_RUN_STATE_CANCELED && st != osvcv1.RunState_RUN_STATE_LEASED {
		t.Errorf("canceled pending run is %s", st)
	}
}

func TestABadHelloEndsTheStreamWithInvalidArgument(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	tests := []struct {
		name  string
		first *osvcv1.ConnectRequest
	}{
		{"without Hello", &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Heartbeat{Heartbeat: &osvcv1.Heartbeat{}}}},
		{"without a name", &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: &osvcv1.Hello{Site: "PS1"}}}},
		{"with a name holding a slash", &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: &osvcv1.Hello{Name: "a/b", Site: "PS1"}}}},
		{"without a site", &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: &osvcv1.Hello{Name: "ps1-a"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := h.open(t, tt.first)
			if err := a.ended(); status.Code(err) != codes.InvalidArgument {
				t.Errorf("stream ended with %v, want InvalidArgument", err)
			}
		})
	}
}

func TestAHelloOfASiteThatDoesNotExistEndsTheStreamSayingHowToCreateIt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	hi := hello("ps2-a")
	hi.Site = "PS2"
	a := h.open(t, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: hi}})
	err := a.ended()
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "create it with: osvcctl site create PS2") {
		t.Errorf("stream ended with %v, want FailedPrecondition saying how to create PS2", err)
	}
}

func TestAnAssignCarriesTheSitesDriveAsItIsWhenSent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	ctx := context.Background()
	if _, err := h.Sites.Update(ctx, &osvcv1.Site{Name: "sites/PS1", OfflineServicingDrive: `D:\osvc`}, nil); err != nil {
		t.Fatal(err)
	}
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)
	if got := a.assign(run.GetName()).GetOfflineServicingDrive(); got != `D:\osvc` {
		t.Errorf("the Assign's drive = %q, want the site's D:\\osvc", got)
	}
}

func TestASecondStreamOfALiveAgentIsRefusedAndTheFirstGoesOn(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	first, _ := h.connect(t, hello("ps1-a"))
	// Whoever holds the agent's identity cannot take over its stream (and
	// the fencing tokens of its runs) while it lives.
	second := h.open(t, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: hello("ps1-a")}})
	if err := second.ended(); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second stream ended with %v, want AlreadyExists", err)
	}
	run := h.schedule(t)
	token := first.assign(run.GetName()).GetRun().GetFencingToken()
	first.accepted(step(run.GetName(), token, osvcv1.Step_STEP_DRIVE, osvcv1.StepState_STEP_STATE_RUNNING))
	agent, _, err := store.Get[*osvcv1.Agent](context.Background(), h.Store, h.Store.AgentKey("ps1-a"))
	if err != nil || agent.GetState() != osvcv1.AgentState_AGENT_STATE_CONNECTED {
		t.Errorf("agent = %v, %v; want CONNECTED", agent, err)
	}
}

func TestAReconnectWithinTheLeaseResumesTheAgentsRuns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)
	token := a.assign(run.GetName()).GetRun().GetFencingToken()
	lease := h.leaseOf(t, "ps1-a")

	a.cancel()
	waitAgent(t, h, "ps1-a", osvcv1.AgentState_AGENT_STATE_DISCONNECTED)

	b, welcome := h.connect(t, hello("ps1-a", &osvcv1.HeldRun{Run: run.GetName(), FencingToken: token}))
	if len(welcome.GetResumeRuns()) != 1 || welcome.GetResumeRuns()[0] != run.GetName() || len(welcome.GetDiscardRuns()) != 0 {
		t.Errorf("welcome = %v, want the run resumed", welcome)
	}
	if got := h.leaseOf(t, "ps1-a"); got != lease {
		t.Errorf("lease after reconnect = %x, want the same lease %x", got, lease)
	}
	b.accepted(step(run.GetName(), token, osvcv1.Step_STEP_DRIVE, osvcv1.StepState_STEP_STATE_RUNNING))
	if r := h.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS || r.GetAttempt() != 1 {
		t.Errorf("run = %s attempt %d, want IN_PROCESS on its first attempt", r.GetState(), r.GetAttempt())
	}

	// A cancel requested while the agent is away reaches it when it is back.
	b.cancel()
	waitAgent(t, h, "ps1-a", osvcv1.AgentState_AGENT_STATE_DISCONNECTED)
	if _, err := h.servicing.CancelRun(context.Background(), &osvcv1.CancelRunRequest{Name: run.GetName(), Reason: "not today"}); err != nil {
		t.Fatal(err)
	}
	c, welcome := h.connect(t, hello("ps1-a", &osvcv1.HeldRun{Run: run.GetName(), FencingToken: token}))
	if len(welcome.GetResumeRuns()) != 1 {
		t.Errorf("welcome = %v, want the run resumed", welcome)
	}
	cancel := c.expect("Cancel", func(m *osvcv1.ConnectResponse) bool { return m.GetCancel() != nil }).GetCancel()
	if cancel.GetRun() != run.GetName() || cancel.GetFencingToken() != token || cancel.GetReason() != "not today" {
		t.Errorf("Cancel = %v", cancel)
	}
	c.accepted(result(run.GetName(), token, osvcv1.RunState_RUN_STATE_CANCELED, ""))
	if r := h.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_CANCELED {
		t.Errorf("run = %s, want CANCELED", r.GetState())
	}
}

// waitAgent watches the agent's record until it is in state.
func waitAgent(t *testing.T, h *harness, id string, state osvcv1.AgentState) {
	t.Helper()
	waitAgentRecord(t, h, id, state.String(), func(a *osvcv1.Agent) bool { return a.GetState() == state })
}

// waitAgentRecord watches the agent's record until ok holds.
func waitAgentRecord(t *testing.T, h *harness, id, what string, ok func(*osvcv1.Agent) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	agent, rev, err := store.Get[*osvcv1.Agent](ctx, h.Store, h.Store.AgentKey(id))
	if err != nil {
		t.Fatal(err)
	}
	if ok(agent) {
		return
	}
	for wresp := range h.Store.Client().Watch(ctx, h.Store.AgentKey(id), clientv3.WithRev(rev+1)) {
		for _, ev := range wresp.Events {
			if a, err := store.Unmarshal[*osvcv1.Agent](ev.Kv.Value); err == nil && ok(a) {
				return
			}
		}
	}
	t.Fatalf("agent %s: no %s within 20s", id, what)
}

func TestHeartbeatsRefreshTheAgentAndASilentAgentIsDisconnected(t *testing.T) {
	t.Parallel()
	h := newHarnessWithHeartbeat(t, servicingtest.Options{}, 100*time.Millisecond)
	a, welcome := h.connect(t, hello("ps1-a"))
	if welcome.GetHeartbeatInterval().AsDuration() != 100*time.Millisecond {
		t.Errorf("heartbeat interval %v, want the configured 100ms", welcome.GetHeartbeatInterval().AsDuration())
	}
	drives := []*osvcv1.Drive{{Path: "/srv", FreeBytes: 1 << 30, TotalBytes: 200 << 30}}
	// The server acknowledges a heartbeat at once, like any message.
	a.accepted(&osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Heartbeat{Heartbeat: &osvcv1.Heartbeat{Drives: drives}}})
	waitAgentRecord(t, h, "ps1-a", "the heartbeat's drives", func(ag *osvcv1.Agent) bool {
		return len(ag.GetDrives()) == 1 && ag.GetDrives()[0].GetFreeBytes() == 1<<30
	})
	// No more heartbeats: after three intervals the server ends the stream.
	if err := a.ended(); status.Code(err) != codes.Unavailable {
		t.Errorf("silent stream ended with %v, want Unavailable", err)
	}
	waitAgent(t, h, "ps1-a", osvcv1.AgentState_AGENT_STATE_DISCONNECTED)
}

func TestAStreamMovesToAnotherReplicaOnceTheFirstClosedAndGetsTheAssigns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	other := h.replica(t, "test-2")
	first, _ := h.connect(t, hello("ps1-a"))
	// While the first stream is open, another replica refuses a second.
	refused := openOn(t, other, &osvcv1.ConnectRequest{Message: &osvcv1.ConnectRequest_Hello{Hello: hello("ps1-a")}})
	if err := refused.ended(); status.Code(err) != codes.AlreadyExists {
		t.Errorf("a second stream on another replica ended with %v, want AlreadyExists", err)
	}
	first.cancel()
	waitAgent(t, h, "ps1-a", osvcv1.AgentState_AGENT_STATE_DISCONNECTED)
	second, _ := connectOn(t, other, hello("ps1-a"))
	run := h.schedule(t)
	as := second.assign(run.GetName())
	if as.GetRun().GetFencingToken() != h.AssignmentRevision(t, run.GetName()) {
		t.Errorf("Assign token %d, want %d", as.GetRun().GetFencingToken(), h.AssignmentRevision(t, run.GetName()))
	}
	second.accepted(step(run.GetName(), as.GetRun().GetFencingToken(), osvcv1.Step_STEP_DRIVE, osvcv1.StepState_STEP_STATE_RUNNING))
	p, _, err := store.Get[*storev1.AgentPresence](context.Background(), h.Store, h.Store.PresenceKey("ps1-a"))
	if err != nil || p.GetServer() != "test-2" {
		t.Errorf("presence = %v, %v; want held by test-2", p, err)
	}
}

func TestAStreamWithoutHelloEndsWhenTheAgentStaysSilent(t *testing.T) {
	t.Parallel()
	h := newHarnessWithHeartbeat(t, servicingtest.Options{}, 50*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := h.agents.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("silent stream ended with %v, want DeadlineExceeded", err)
	}
}

func TestAStreamClosedBeforeHelloIsRefusedAsTheAgentsMistake(t *testing.T) {
	t.Parallel()
	h := newHarness(t, servicingtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := h.agents.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	// Not Internal: nothing failed on the server, which would log it as its own error.
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("stream closed before Hello ended with %v, want InvalidArgument", err)
	}
}

func TestAnAssignThatCouldNotBeBuiltIsSentAtALaterResync(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		attempts = map[string]int{}
	)
	h := newHarnessWith(t, servicingtest.Options{}, harnessConfig{
		resync: 10 * time.Millisecond,
		setup: func(s *agentsvc.Service) {
			build := agentsvc.Assignment(s)
			agentsvc.SetAssignment(s, func(ctx context.Context, run string, token int64) (*osvcv1.Assign, error) {
				mu.Lock()
				attempts[run]++
				n := attempts[run]
				mu.Unlock()
				// Twice: the first retry must not be the last one.
				if n <= 2 {
					return nil, fmt.Errorf("assign %s: etcd unavailable (injected, attempt %d)", run, n)
				}
				return build(ctx, run, token)
			})
		},
	})
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)

	as := a.assign(run.GetName())
	if as.GetRun().GetFencingToken() != h.AssignmentRevision(t, run.GetName()) {
		t.Errorf("Assign token %d, want %d", as.GetRun().GetFencingToken(), h.AssignmentRevision(t, run.GetName()))
	}
	mu.Lock()
	n := attempts[run.GetName()]
	mu.Unlock()
	if n != 3 {
		t.Errorf("the Assign was built %d times, want 3 (two failures, then once)", n)
	}
	// Later resyncs do not send it again: the next message after an Ack
	// sent now is no second Assign.
	agentsvc.Resync(context.Background(), h.svc)
	a.accepted(step(run.GetName(), as.GetRun().GetFencingToken(), osvcv1.Step_STEP_DRIVE, osvcv1.StepState_STEP_STATE_RUNNING))
	for _, m := range a.pending {
		if m.GetAssign() != nil {
			t.Errorf("a second Assign came: %v", m.GetAssign().GetRun().GetName())
		}
	}
	if r := h.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS {
		t.Errorf("run = %s, want IN_PROCESS", r.GetState())
	}
}

func TestAnAssignWhoseTokenWentStaleIsNotTriedAgain(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		attempts int
	)
	stale := make(chan struct{})
	h := newHarnessWith(t, servicingtest.Options{}, harnessConfig{
		withoutRun: true,
		setup: func(s *agentsvc.Service) {
			agentsvc.SetAssignment(s, func(ctx context.Context, run string, token int64) (*osvcv1.Assign, error) {
				mu.Lock()
				attempts++
				mu.Unlock()
				defer close(stale)
				return nil, fmt.Errorf("assign %s: token %d (injected): %w", run, token, errdefs.ErrStaleLease)
			})
		},
	})
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)
	h.WaitRun(t, run.GetName(), "LEASED", func(r *osvcv1.Run) bool { return r.GetState() == osvcv1.RunState_RUN_STATE_LEASED })
	ctx := context.Background()
	agentsvc.Resync(ctx, h.svc)
	<-stale
	// Resyncs after the refusal build nothing more (a second build would
	// close stale twice and panic); an Ack queued after them comes first.
	agentsvc.Resync(ctx, h.svc)
	agentsvc.Resync(ctx, h.svc)
	if ack := a.report(logs(run.GetName(), 1, 1, 1)); ack.GetCode() == 0 {
		t.Errorf("report with a made-up token accepted")
	}
	mu.Lock()
	defer mu.Unlock()
	if attempts != 1 || len(a.pending) != 0 {
		t.Errorf("built %d times, other messages %v; want one build and nothing sent", attempts, a.pending)
	}
}

func TestAResyncPushesACancelTheWatchMissedOncePerToken(t *testing.T) {
	t.Parallel()
	// Without Run nothing watches: every push comes from a resync, as after
	// a compacted watch.
	h := newHarnessWith(t, servicingtest.Options{}, harnessConfig{withoutRun: true})
	ctx := context.Background()
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)
	h.WaitRun(t, run.GetName(), "LEASED", func(r *osvcv1.Run) bool { return r.GetState() == osvcv1.RunState_RUN_STATE_LEASED })
	agentsvc.Resync(ctx, h.svc)
	token := a.assign(run.GetName()).GetRun().GetFencingToken()
	a.accepted(step(run.GetName(), token, osvcv1.Step_STEP_APPLY, osvcv1.StepState_STEP_STATE_RUNNING))

	if _, err := h.servicing.CancelRun(ctx, &osvcv1.CancelRunRequest{Name: run.GetName(), Reason: "wrong updates"}); err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	agentsvc.Resync(ctx, h.svc)
	c := a.expect("Cancel", func(m *osvcv1.ConnectResponse) bool { return m.GetCancel() != nil }).GetCancel()
	if c.GetRun() != run.GetName() || c.GetFencingToken() != token || c.GetReason() != "wrong updates" {
		t.Errorf("Cancel = %v", c)
	}

	// Further resyncs send no second Cancel: an Ack queued after them comes
	// with nothing before it.
	agentsvc.Resync(ctx, h.svc)
	agentsvc.Resync(ctx, h.svc)
	a.accepted(logs(run.GetName(), token, 1, 1))
	if len(a.pending) != 0 {
		t.Errorf("after the Cancel the agent got %v, want nothing more", a.pending)
	}
	a.accepted(result(run.GetName(), token, osvcv1.RunState_RUN_STATE_CANCELED, ""))
	if r := h.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_CANCELED {
		t.Errorf("run = %s, want CANCELED", r.GetState())
	}
}

func TestAResyncSendsARunCanceledBeforeItsAssignWithItsCancel(t *testing.T) {
	t.Parallel()
	h := newHarnessWith(t, servicingtest.Options{}, harnessConfig{withoutRun: true})
	ctx := context.Background()
	a, _ := h.connect(t, hello("ps1-a"))
	run := h.schedule(t)
	h.WaitRun(t, run.GetName(), "LEASED", func(r *osvcv1.Run) bool { return r.GetState() == osvcv1.RunState_RUN_STATE_LEASED })
	if _, err := h.servicing.CancelRun(ctx, &osvcv1.CancelRunRequest{Name: run.GetName(), Reason: "not today"}); err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	agentsvc.Resync(ctx, h.svc)
	// The Assign first, then its Cancel, once.
	first := a.expect("the Assign", func(*osvcv1.ConnectResponse) bool { return true })
	second := a.expect("the Cancel", func(*osvcv1.ConnectResponse) bool { return true })
	token := first.GetAssign().GetRun().GetFencingToken()
	if first.GetAssign().GetRun().GetName() != run.GetName() || second.GetCancel().GetRun() != run.GetName() ||
		second.GetCancel().GetFencingToken() != token || token == 0 {
		t.Fatalf("got %v then %v, want the run's Assign then its Cancel", first, second)
	}
	agentsvc.Resync(ctx, h.svc)
	a.accepted(logs(run.GetName(), token, 1, 1))
	if len(a.pending) != 0 {
		t.Errorf("after the Cancel the agent got %v, want nothing more", a.pending)
	}
}

// Without the presence watch (Run not started), the session's keepalive
// closing is what tells the stream that its session is gone.
func TestAStreamEndsWhenItsSessionEndsEvenWithoutThePresenceWatch(t *testing.T) {
	t.Parallel()
	h := newHarnessWith(t, servicingtest.Options{}, harnessConfig{withoutRun: true})
	a, _ := h.connect(t, hello("ps1-a"))
	if _, err := h.Store.Client().Revoke(context.Background(), h.leaseOf(t, "ps1-a")); err != nil {
		t.Fatal(err)
	}
	if err := a.ended(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "session ended") {
		t.Errorf("stream ended with %v, want Unavailable: the agent's session ended", err)
	}
}
