package api_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/agentsvc"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// servicingAPI is the servicing and agent services on a bufconn, over real
// servicing and agentsvc on the shared embedded etcd.
type servicingAPI struct {
	*servicingtest.Env
	servicing osvcv1.ServicingServiceClient
	agents    osvcv1.AgentServiceClient
}

func newServicingAPI(t *testing.T) *servicingAPI {
	t.Helper()
	env := servicingtest.New(t, servicingtest.Options{})
	agents, err := agentsvc.New(agentsvc.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, Distribution: env.Distribution, Logger: env.Logger})
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	osvcv1.RegisterServicingServiceServer(gs, api.NewServicingServer(env.Service, env.Logger))
	osvcv1.RegisterAgentServiceServer(gs, api.NewAgentServer(agents, nil, env.Logger))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &servicingAPI{Env: env, servicing: osvcv1.NewServicingServiceClient(conn), agents: osvcv1.NewAgentServiceClient(conn)}
}

// schedule records images/win11 and updates/cu and schedules cu for win11.
func (s *servicingAPI) schedule(t *testing.T, ctx context.Context) *osvcv1.CreateScheduleResponse {
	t.Helper()
	img := s.Image(t, "win11", "PS1", 1)
	s.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC))
	resp, err := s.servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{"updates/cu"}}})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestServicingAPIAnswersWithTheCodeOfTheDomainError(t *testing.T) {
	t.Parallel()
	s := newServicingAPI(t)
	ctx := context.Background()
	img := s.Image(t, "win11", "PS1", 1)
	s.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC))
	first, err := s.servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{"updates/cu"}}})
	if err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	ended := s.Image(t, "ended", "PS1", 1)
	endedRun, err := s.servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: ended.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{"updates/cu"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.servicing.CancelRun(ctx, &osvcv1.CancelRunRequest{Name: endedRun.GetRun().GetName()}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"a schedule without its schedule", func() error {
			_, err := s.servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: img.GetName()})
			return err
		}, codes.InvalidArgument, "schedule"},
		{"a schedule selecting an update twice", func() error {
			_, err := s.servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: "images/ended", Schedule: &osvcv1.Schedule{Updates: []string{"updates/cu", "updates/cu"}}})
			return err
		}, codes.InvalidArgument, "schedule.updates[1]"},
		{"a schedule for an unknown image", func() error {
			_, err := s.servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: "images/nope", Schedule: &osvcv1.Schedule{Updates: []string{"updates/cu"}}})
			return err
		}, codes.NotFound, ""},
		{"a second schedule while a run is active", func() error {
			_, err := s.servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{Parent: img.GetName(), Schedule: &osvcv1.Schedule{Updates: []string{"updates/cu"}}})
			return err
		}, codes.FailedPrecondition, ""},
		{"a run that does not exist", func() error {
			_, err := s.servicing.GetRun(ctx, &osvcv1.GetRunRequest{Name: "runs/r-nope"})
			return err
		}, codes.NotFound, ""},
		{"a malformed run name", func() error {
			_, err := s.servicing.GetRun(ctx, &osvcv1.GetRunRequest{Name: first.GetRun().GetName()[len("runs/"):]})
			return err
		}, codes.InvalidArgument, "name"},
		{"a cancel of an ended run", func() error {
			_, err := s.servicing.CancelRun(ctx, &osvcv1.CancelRunRequest{Name: endedRun.GetRun().GetName()})
			return err
		}, codes.FailedPrecondition, ""},
		{"a negative page size", func() error {
			_, err := s.servicing.ListRuns(ctx, &osvcv1.ListRunsRequest{PageSize: -1})
			return err
		}, codes.InvalidArgument, "page_size"},
		{"a watch of an unknown run", func() error {
			w, err := s.servicing.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: "runs/r-nope"})
			if err != nil {
				return err
			}
			_, err = w.Recv()
			return err
		}, codes.NotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Fatalf("code = %s (%v), want %s", st.Code(), err, tt.code)
			}
			if tt.field == "" {
				return
			}
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 && br.GetFieldViolations()[0].GetField() == tt.field {
					return
				}
			}
			t.Errorf("no BadRequest naming %q in %v", tt.field, st.Details())
		})
	}
}

func TestWatchRunStreamsTheRunUntilItEnds(t *testing.T) {
	t.Parallel()
	s := newServicingAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp := s.schedule(t, ctx)
	w, err := s.servicing.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: resp.GetRun().GetName()})
	if err != nil {
		t.Fatal(err)
	}
	m, err := w.Recv()
	if err != nil || m.GetRun().GetState() != osvcv1.RunState_RUN_STATE_PENDING {
		t.Fatalf("first message = %v, %v; want the PENDING run", m, err)
	}
	if _, err := s.servicing.CancelRun(ctx, &osvcv1.CancelRunRequest{Name: resp.GetRun().GetName()}); err != nil {
		t.Fatal(err)
	}
	m, err = w.Recv()
	if err != nil || m.GetRun().GetState() != osvcv1.RunState_RUN_STATE_CANCELED {
		t.Fatalf("second message = %v, %v; want the CANCELED run", m, err)
	}
	if _, err := w.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after the final state: %v, want the end of the stream", err)
	}
}

func TestWatchRunWithSnapshotOnlySendsTheRunAsItIsAndEnds(t *testing.T) {
	t.Parallel()
	s := newServicingAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	name := s.schedule(t, ctx).GetRun().GetName()
	lease := s.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	run, err := s.Service.Lease(ctx, name, 0, "agents/ps1-a", int64(lease))
	if err != nil {
		t.Fatal(err)
	}
	// More lines than one message carries: the snapshot comes in several.
	const n = 1500
	var lines []*osvcv1.LogLine
	for i := int64(1); i <= n; i++ {
		lines = append(lines, &osvcv1.LogLine{Sequence: i, Level: "INFO", Message: "line"})
	}
	if err := s.Service.ReportLogs(ctx, "agents/ps1-a", &osvcv1.LogBatch{Run: name, FencingToken: run.GetFencingToken(), Lines: lines}); err != nil {
		t.Fatal(err)
	}
	for _, after := range []int64{0, 1200} {
		w, err := s.servicing.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: name, AfterSequence: after, SnapshotOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		var last int64
		messages := 0
		for {
			m, err := w.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("after %d: Recv: %v (a snapshot of a run in process must end on its own)", after, err)
			}
			messages++
			if m.GetRun().GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS {
				t.Errorf("after %d: run %s, want IN_PROCESS", after, m.GetRun().GetState())
			}
			for _, l := range m.GetLogLines() {
				if l.GetSequence() != last+1 && !(last == 0 && l.GetSequence() == after+1) {
					t.Fatalf("after %d: line %d follows %d", after, l.GetSequence(), last)
				}
				last = l.GetSequence()
			}
		}
		if last != n || messages == 0 {
			t.Errorf("after %d: lines up to %d in %d messages, want every line up to %d", after, last, messages, n)
		}
	}
	w, err := s.servicing.WatchRun(ctx, &osvcv1.WatchRunRequest{Name: "runs/r-unknown", SnapshotOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("snapshot of an unknown run: %v, want NotFound", err)
	}
}

func TestListAgentsPages(t *testing.T) {
	t.Parallel()
	s := newServicingAPI(t)
	ctx := context.Background()
	for _, name := range []string{"ps1-a", "ps1-b", "ps1-c"} {
		s.Connect(t, name, "PS1", 1, 30*time.Second)
	}
	var got []string
	token := ""
	for {
		resp, err := s.agents.ListAgents(ctx, &osvcv1.ListAgentsRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatalf("ListAgents: %v", err)
		}
		if len(resp.GetAgents()) > 2 {
			t.Fatalf("page of %d agents, want at most 2", len(resp.GetAgents()))
		}
		for _, a := range resp.GetAgents() {
			got = append(got, a.GetName())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(got) != 3 || got[0] != "agents/ps1-a" || got[2] != "agents/ps1-c" {
		t.Errorf("agents = %v, want the three in name order", got)
	}
}
