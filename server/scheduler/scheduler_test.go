package scheduler_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
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

// clock is a settable clock for the scheduler's not_before decisions.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.now = t }

func newScheduler(t *testing.T, env *servicingtest.Env, now func() time.Time) *scheduler.Scheduler {
	t.Helper()
	s, err := scheduler.New(scheduler.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, Logger: env.Logger, ServerID: "test", Now: now, ElectionTTL: 2 * time.Second})
	if err != nil {
		t.Fatalf("scheduler.New: %v", err)
	}
	return s
}

func schedule(t *testing.T, env *servicingtest.Env, image string, start time.Time) *osvcv1.Run {
	t.Helper()
	sched := &osvcv1.Schedule{Updates: []string{"updates/cu"}}
	if !start.IsZero() {
		sched.StartTime = timestamppb.New(start)
	}
	_, run, err := env.Service.CreateSchedule(context.Background(), image, sched, false)
	if err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	return run
}

func newEnv(t *testing.T) *servicingtest.Env {
	env := servicingtest.New(t, servicingtest.Options{})
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC))
	return env
}

func TestPassLeasesRunsToTheLeastLoadedAgentsOfTheImageSite(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	ctx := context.Background()
	a := env.Image(t, "a", "PS1", 1)
	b := env.Image(t, "b", "PS1", 1)
	c := env.Image(t, "c", "PS1", 1)
	env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	env.Connect(t, "ps1-b", "PS1", 1, 30*time.Second)
	env.Connect(t, "ps2-x", "PS2", 4, 30*time.Second)
	runA, runB, runC := schedule(t, env, a.Name, time.Time{}), schedule(t, env, b.Name, time.Time{}), schedule(t, env, c.Name, time.Time{})

	if _, err := newScheduler(t, env, nil).Pass(ctx); err != nil {
		t.Fatalf("Pass: %v", err)
	}
	agents := map[string]bool{}
	for _, name := range []string{runA.GetName(), runB.GetName()} {
		r := env.Run(t, name)
		if r.GetState() != osvcv1.RunState_RUN_STATE_LEASED || r.GetAttempt() != 1 || r.GetFencingToken() != env.AssignmentRevision(t, name) {
			t.Errorf("run %s = %s attempt %d token %d, want LEASED with the assignment's revision as token", name, r.GetState(), r.GetAttempt(), r.GetFencingToken())
		}
		agents[r.GetAgent()] = true
	}
	if !agents["agents/ps1-a"] || !agents["agents/ps1-b"] {
		t.Errorf("runs went to %v, want one to each PS1 agent", agents)
	}
	// Both PS1 agents are full; the PS2 agent is not for PS1 images.
	if r := env.Run(t, runC.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING {
		t.Errorf("third run %s on %q, want PENDING until a PS1 agent is free", r.GetState(), r.GetAgent())
	}
}

func TestPassWaitsForTheStartTime(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	ctx := context.Background()
	img := env.Image(t, "a", "PS1", 1)
	env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	clk := &clock{now: time.Now().Add(24 * time.Hour).Truncate(time.Second)}
	start := clk.Now().Add(time.Hour)
	sched, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}, StartTime: timestamppb.New(start)}, false)
	if err != nil || run != nil {
		t.Fatalf("CreateSchedule = %v, %v; want a schedule and no run before its time", run, err)
	}
	s := newScheduler(t, env, clk.Now)

	next, err := s.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !next.Equal(start) {
		t.Errorf("Pass wants to run again at %v, want the start time %v", next, start)
	}
	if runs, _, err := env.Service.ListRuns(ctx, img.Name, 0, ""); err != nil || len(runs) != 0 {
		t.Errorf("before its start time the image has runs %v (%v), want none: a future run does not hold it", runs, err)
	}
	clk.Set(start.Add(time.Second))
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := env.Service.GetSchedule(ctx, sched.GetName())
	if err != nil {
		t.Fatal(err)
	}
	if got.GetLastRun() == "" || got.GetNextRunTime() != nil {
		t.Fatalf("after its start time the schedule is %v, want its run started and no occurrence left", got)
	}
	if r := env.Run(t, got.GetLastRun()); r.GetState() != osvcv1.RunState_RUN_STATE_LEASED || r.GetSchedule() != sched.GetName() {
		t.Errorf("after its start time the run is %s of %s, want LEASED, of the schedule", r.GetState(), r.GetSchedule())
	}
}

func TestPassRequeuesTheRunsOfALostAgentAndMarksItLost(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	ctx := context.Background()
	img := env.Image(t, "a", "PS1", 1)
	lease := env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	run := schedule(t, env, img.Name, time.Time{})
	s := newScheduler(t, env, nil)
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING || r.GetAttempt() != 1 || r.GetAgent() != "" {
		t.Errorf("run after its agent was lost = %v, want PENDING with attempt 1 counted", r)
	}
	agent, _, err := store.Get[*osvcv1.Agent](ctx, env.Store, env.Store.AgentKey("ps1-a"))
	if err != nil || agent.GetState() != osvcv1.AgentState_AGENT_STATE_LOST {
		t.Errorf("agent = %v, %v; want LOST", agent, err)
	}
}

func TestRunLeasesOnEventsAndRequeuesWhenTheLeaseEnds(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	s := newScheduler(t, env, nil)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// A second replica campaigns too; only one of them schedules at a time.
	s2 := newScheduler(t, env, nil)
	done2 := make(chan error, 1)
	go func() { done2 <- s2.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done2 })

	img := env.Image(t, "a", "PS1", 1)
	lease := env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	run := schedule(t, env, img.Name, time.Time{})
	env.WaitRun(t, run.GetName(), "a lease", func(r *osvcv1.Run) bool {
		return r.GetState() == osvcv1.RunState_RUN_STATE_LEASED
	})
	leased := env.Run(t, run.GetName())
	if leased.GetAgent() != "agents/ps1-a" || leased.GetAttempt() != 1 || leased.GetFencingToken() != env.AssignmentRevision(t, run.GetName()) {
		t.Errorf("leased run = %v", leased)
	}
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	env.WaitRun(t, run.GetName(), "a requeue", func(r *osvcv1.Run) bool {
		return r.GetState() == osvcv1.RunState_RUN_STATE_PENDING && r.GetAttempt() == 1
	})
	// An agent showing up is an event too: the run is leased again.
	env.Connect(t, "ps1-b", "PS1", 1, 30*time.Second)
	env.WaitRun(t, run.GetName(), "a second lease", func(r *osvcv1.Run) bool {
		return r.GetState() == osvcv1.RunState_RUN_STATE_LEASED && r.GetAttempt() == 2
	})
	again := env.Run(t, run.GetName())
	if again.GetAgent() != "agents/ps1-b" || again.GetAttempt() != 2 || again.GetFencingToken() == leased.GetFencingToken() {
		t.Errorf("second lease = agent %s attempt %d token %d", again.GetAgent(), again.GetAttempt(), again.GetFencingToken())
	}
}

func TestPassFlagsARunWithoutProgressAsStalledAndAReportClearsIt(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Now().Add(24 * time.Hour).Truncate(time.Second)}
	env := servicingtest.New(t, servicingtest.Options{Now: clk.Now})
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC))
	ctx := context.Background()
	img := env.Image(t, "a", "PS1", 1)
	env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	run := schedule(t, env, img.Name, time.Time{})
	s, err := scheduler.New(scheduler.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, Logger: env.Logger, ServerID: "test",
		Now: clk.Now, StallAfter: 15 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	leased := env.Run(t, run.GetName())
	step := func(st osvcv1.Step) {
		t.Helper()
		if err := env.Service.ReportStep(ctx, "agents/ps1-a", &osvcv1.StepChanged{Run: run.GetName(), FencingToken: leased.GetFencingToken(),
			Step: &osvcv1.StepRecord{Step: st, State: osvcv1.StepState_STEP_STATE_RUNNING}}); err != nil {
			t.Fatal(err)
		}
	}
	pass := func() time.Time {
		t.Helper()
		next, err := s.Pass(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return next
	}
	started := clk.Now()
	step(osvcv1.Step_STEP_DRIVE)

	clk.Set(started.Add(14 * time.Minute))
	if next := pass(); !next.Equal(started.Add(15 * time.Minute)) {
		t.Errorf("Pass wants to look again at %v, want when the run would stall, %v", next, started.Add(15*time.Minute))
	}
	if r := env.Run(t, run.GetName()); r.GetStalled() {
		t.Error("a run 14m without progress is stalled, want 15m")
	}

	clk.Set(started.Add(15 * time.Minute))
	if next := pass(); !next.IsZero() {
		t.Errorf("Pass wants to look again at %v for a stalled run, want no timer", next)
	}
	r := env.Run(t, run.GetName())
	if !r.GetStalled() || r.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS || r.GetAgent() != "agents/ps1-a" || r.GetFencingToken() != leased.GetFencingToken() {
		t.Errorf("run 15m without progress = %s stalled %v agent %s; want IN_PROCESS, stalled, same lease", r.GetState(), r.GetStalled(), r.GetAgent())
	}

	clk.Set(started.Add(20 * time.Minute))
	step(osvcv1.Step_STEP_STAGE)
	if next := pass(); !next.Equal(started.Add(35 * time.Minute)) {
		t.Errorf("after progress Pass wants to look again at %v, want %v", next, started.Add(35*time.Minute))
	}
	if r := env.Run(t, run.GetName()); r.GetStalled() {
		t.Error("the run is still stalled after a report")
	}
}

func TestPassLeasesARequeuedRunOnlyAfterItsBackoff(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Now().Add(24 * time.Hour).Truncate(time.Second)}
	env := servicingtest.New(t, servicingtest.Options{Now: clk.Now, RetryBackoff: time.Minute})
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, time.Date(2024, 10, 8, 0, 0, 0, 0, time.UTC))
	ctx := context.Background()
	img := env.Image(t, "a", "PS1", 1)
	lease := env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	run := schedule(t, env, img.Name, time.Time{})
	s := newScheduler(t, env, clk.Now)
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	env.Connect(t, "ps1-b", "PS1", 1, 30*time.Second)
	next, err := s.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING || r.GetAttempt() != 1 {
		t.Errorf("run right after its agent was lost = %s attempt %d, want PENDING though ps1-b is free", r.GetState(), r.GetAttempt())
	}
	if want := clk.Now().Add(time.Minute); !next.Equal(want) {
		t.Errorf("Pass wants to look again at %v, want at the end of the backoff %v", next, want)
	}
	clk.Set(next)
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_LEASED || r.GetAttempt() != 2 || r.GetAgent() != "agents/ps1-b" {
		t.Errorf("run after its backoff = %s attempt %d on %q, want LEASED to ps1-b on attempt 2", r.GetState(), r.GetAttempt(), r.GetAgent())
	}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	tests := []struct {
		name string
		cfg  scheduler.Config
	}{
		{"without a store", scheduler.Config{Servicing: env.Service, Agents: env.Agents, ServerID: "x"}},
		{"without servicing", scheduler.Config{Store: env.Store, Agents: env.Agents, ServerID: "x"}},
		{"without the agent registry", scheduler.Config{Store: env.Store, Servicing: env.Service, ServerID: "x"}},
		{"without a server id", scheduler.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents}},
		{"with an election TTL under a second", scheduler.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, ServerID: "x", ElectionTTL: time.Millisecond}},
		{"with a negative stall time", scheduler.Config{Store: env.Store, Servicing: env.Service, Agents: env.Agents, ServerID: "x", StallAfter: -time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := scheduler.New(tt.cfg); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

func TestAServicingRunWaitsForTheInspectionOfItsSourceAndFailsWhenItFailed(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	ctx := context.Background()
	s := newScheduler(t, env, nil)
	// Two agents: the inspection takes one, the servicing run could take the other.
	env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	env.Connect(t, "ps1-b", "PS1", 1, 30*time.Second)
	img, inspection := env.ImportWIM(t, "win11", "PS1")
	run := schedule(t, env, img.Name, time.Time{})
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	insp := env.Run(t, inspection.GetName())
	if insp.GetState() != osvcv1.RunState_RUN_STATE_LEASED {
		t.Fatalf("inspection %s, want LEASED", insp.GetState())
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING {
		t.Fatalf("servicing run %s before the inspection ended, want PENDING", r.GetState())
	}
	// The inspection finds the file damaged: the waiting run fails with why.
	if err := env.Service.ReportRunResult(ctx, insp.GetAgent(), &osvcv1.RunResult{Run: insp.GetName(), FencingToken: insp.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: "image images/win11 version 1 is damaged"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	r := env.Run(t, run.GetName())
	if r.GetState() != osvcv1.RunState_RUN_STATE_FAILED || !strings.Contains(r.GetError(), "failed its inspection") || r.GetAttempt() != 0 {
		t.Fatalf("servicing run = %s (%q) attempt %d, want FAILED before any lease because its source failed inspection", r.GetState(), r.GetError(), r.GetAttempt())
	}
}

func TestAServicingRunIsLeasedOnceItsSourceIsInspected(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	ctx := context.Background()
	s := newScheduler(t, env, nil)
	env.Connect(t, "ps1-a", "PS1", 2, 30*time.Second)
	img, inspection := env.ImportWIM(t, "win11", "PS1")
	run := schedule(t, env, img.Name, time.Time{})
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	insp := env.Run(t, inspection.GetName())
	if err := env.Service.ReportRunResult(ctx, insp.GetAgent(), &osvcv1.RunResult{Run: insp.GetName(), FencingToken: insp.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: img.GetVersions()[0].GetSha256(),
		Indexes: []*osvcv1.ImageIndex{{Index: 1, Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Build: 22631}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_LEASED {
		t.Fatalf("servicing run %s after the inspection succeeded, want LEASED", r.GetState())
	}
}

func TestAPendingRunSaysWhyItWaits(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	ctx := context.Background()
	img := env.Image(t, "a", "PS1", 1)
	run := schedule(t, env, img.Name, time.Time{})
	s := newScheduler(t, env, nil)
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_PENDING || !strings.Contains(r.GetWaiting(), "no agent of site PS1 is connected") {
		t.Errorf("with no agent of its site: %s, waiting %q", r.GetState(), r.GetWaiting())
	}
	env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_LEASED || r.GetWaiting() != "" {
		t.Errorf("once an agent is there: %s, waiting %q; want LEASED, waiting nothing", r.GetState(), r.GetWaiting())
	}
	other := env.Image(t, "b", "PS1", 1)
	second := schedule(t, env, other.Name, time.Time{})
	if _, err := s.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if r := env.Run(t, second.GetName()); !strings.Contains(r.GetWaiting(), "capacity") {
		t.Errorf("with the only agent busy: waiting %q", r.GetWaiting())
	}
}
