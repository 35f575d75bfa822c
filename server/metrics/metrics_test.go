package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/store"
	"github.com/osvc/osvc/server/store/storetest"
)

var t0 = time.Date(2026, 11, 10, 8, 0, 0, 0, time.UTC)

func putRun(t *testing.T, st *store.Store, id string, run *osvcv1.Run) {
	t.Helper()
	data, err := st.Marshal(run)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Client().Put(context.Background(), st.RunKey(id), string(data)); err != nil {
		t.Fatal(err)
	}
}

// follow makes the follower tell each change it applied, and returns
// what waits until cond holds, woken by those changes.
func follow(t *testing.T, m *Metrics) func(what string, cond func() bool) {
	changed := make(chan struct{}, 1)
	m.followed = func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	return func(what string, cond func() bool) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for !cond() {
			select {
			case <-changed:
			case <-timeout:
				t.Fatalf("never: %s", what)
			}
		}
	}
}

func TestTheElectedReplicaCountsRunsAndRecordsThoseThatEnd(t *testing.T) {
	t.Parallel()
	st := storetest.New(t)
	// One run ended before the follower started: counted, not recorded.
	putRun(t, st, "old", &osvcv1.Run{Name: "runs/old", State: osvcv1.RunState_RUN_STATE_SUCCEEDED})
	putRun(t, st, "r1", &osvcv1.Run{Name: "runs/r1", State: osvcv1.RunState_RUN_STATE_PENDING})

	m := New()
	eventually := follow(t, m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.FollowRuns(ctx, st, "replica-a", hclog.NewNullLogger()) }()
	gauge := func(state, kind string) float64 { return testutil.ToFloat64(m.runs.WithLabelValues(state, kind)) }
	eventually("the runs listed", func() bool { return gauge("PENDING", "SERVICING") == 1 && gauge("SUCCEEDED", "SERVICING") == 1 })

	leased := &osvcv1.Run{Name: "runs/r1", State: osvcv1.RunState_RUN_STATE_IN_PROCESS, StartTime: timestamppb.New(t0)}
	putRun(t, st, "r1", leased)
	eventually("r1 in process", func() bool { return gauge("PENDING", "SERVICING") == 0 && gauge("IN_PROCESS", "SERVICING") == 1 })

	ended := proto.Clone(leased).(*osvcv1.Run)
	ended.State, ended.EndTime = osvcv1.RunState_RUN_STATE_SUCCEEDED, timestamppb.New(t0.Add(90*time.Second))
	ended.Steps = []*osvcv1.StepRecord{
		{Step: osvcv1.Step_STEP_APPLY, StartTime: timestamppb.New(t0.Add(10 * time.Second)), EndTime: timestamppb.New(t0.Add(70 * time.Second))},
		{Step: osvcv1.Step_STEP_EXPORT, StartTime: timestamppb.New(t0.Add(70 * time.Second))}, // never ended: not recorded
	}
	ended.UpdateResults = []*osvcv1.UpdateResult{
		{Update: "updates/a", State: osvcv1.UpdateState_UPDATE_STATE_APPLIED},
		{Update: "updates/b", State: osvcv1.UpdateState_UPDATE_STATE_APPLIED},
		{Update: "updates/c", State: osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE},
	}
	putRun(t, st, "r1", ended)
	eventually("r1 succeeded", func() bool { return gauge("SUCCEEDED", "SERVICING") == 2 && gauge("IN_PROCESS", "SERVICING") == 0 })
	// Written again once ended (a late artifact): recorded once.
	ended.Error = "a note"
	putRun(t, st, "r1", ended)
	inspection := &osvcv1.Run{Name: "runs/i1", Kind: osvcv1.RunKind_RUN_KIND_INSPECTION, State: osvcv1.RunState_RUN_STATE_PENDING}
	putRun(t, st, "i1", inspection)
	eventually("the inspection counted", func() bool { return gauge("PENDING", "INSPECTION") == 1 })

	if n := testutil.CollectAndCount(m.runDuration); n != 1 {
		t.Errorf("%d run duration series, want one (the old run and the repeat are not recorded)", n)
	}
	if got := testutil.ToFloat64(m.updates.WithLabelValues("APPLIED")); got != 2 {
		t.Errorf("APPLIED updates = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.updates.WithLabelValues("NOT_APPLICABLE")); got != 1 {
		t.Errorf("NOT_APPLICABLE updates = %v, want 1", got)
	}
	want := `
# HELP osvc_step_duration_seconds How long the pipeline steps of ended runs took, by step.
# TYPE osvc_step_duration_seconds histogram
osvc_step_duration_seconds_bucket{step="APPLY",le="1"} 0
osvc_step_duration_seconds_bucket{step="APPLY",le="5"} 0
osvc_step_duration_seconds_bucket{step="APPLY",le="15"} 0
osvc_step_duration_seconds_bucket{step="APPLY",le="30"} 0
osvc_step_duration_seconds_bucket{step="APPLY",le="60"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="120"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="300"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="600"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="1200"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="1800"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="3600"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="7200"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="14400"} 1
osvc_step_duration_seconds_bucket{step="APPLY",le="+Inf"} 1
osvc_step_duration_seconds_sum{step="APPLY"} 60
osvc_step_duration_seconds_count{step="APPLY"} 1
`
	if err := testutil.CollectAndCompare(m.stepDuration, strings.NewReader(want)); err != nil {
		t.Error(err)
	}

	// Deleted runs leave the count; a replica that stops leading exports none.
	if _, err := st.Client().Delete(context.Background(), st.RunKey("old")); err != nil {
		t.Fatal(err)
	}
	eventually("the deleted run uncounted", func() bool { return gauge("SUCCEEDED", "SERVICING") == 1 })
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.runs); n != 0 {
		t.Errorf("%d run gauges after the replica stopped leading, want none", n)
	}
}

func TestTheListenerServesTheMetricsInPrometheusFormat(t *testing.T) {
	t.Parallel()
	m := New()
	m.LeaseLost()
	m.FencedReport()
	m.AgentsConnected(func() map[string]int { return map[string]int{"PS1": 2, "SS1": 1} })
	var nilMetrics *Metrics
	nilMetrics.LeaseLost() // a component without metrics records nothing
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = m.Serve(ctx, lis) }()
	resp, err := http.Get("http://" + lis.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range []string{
		"osvc_leases_lost_total 1", "osvc_fenced_reports_total 1",
		`osvc_agents_connected{site="PS1"} 2`, `osvc_agents_connected{site="SS1"} 1`, "go_goroutines",
	} {
		if !strings.Contains(string(body), line) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}
