package servicing_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/servicing/servicingtest"
	"github.com/osvc/osvc/server/store"
)

// clock is a settable clock for the Service.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 1, 8, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

func TestEveryAcceptedReportRecordsProgressAndClearsAStall(t *testing.T) {
	t.Parallel()
	clk := newClock()
	env, img := newEnv(t, servicingtest.Options{Now: clk.Now})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	token := run.GetFencingToken()
	if run.GetLastProgressTime() != nil {
		t.Errorf("a run just leased has progress at %v, want none before its first report", run.GetLastProgressTime().AsTime())
	}
	if err := env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: run.GetName(), FencingToken: token,
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_DRIVE, State: osvcv1.StepState_STEP_STATE_RUNNING}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		report func() error
	}{
		{"a step", func() error {
			return env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: run.GetName(), FencingToken: token,
				Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_STAGE, State: osvcv1.StepState_STEP_STATE_RUNNING}})
		}},
		{"progress", func() error {
			return env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: run.GetName(), FencingToken: token, Percent: 40,
				Update: &osvcv1.UpdateResult{Update: "updates/cu", Index: 1, Percent: 50}})
		}},
		{"an update result", func() error {
			return env.Service.ReportUpdateResult(ctx, agent, &osvcv1.UpdateResultReport{Run: run.GetName(), FencingToken: token,
				Result: &osvcv1.UpdateResult{Update: "updates/cu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_APPLIED}})
		}},
		{"log lines", func() error {
			return env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(1, 2)})
		}},
	}
	// Not parallel: the subtests take turns on one run.
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := env.Run(t, run.GetName())
			stalled, err := env.Service.MarkStalled(ctx, run.GetName(), 0)
			if err != nil || !stalled.GetStalled() || stalled.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS ||
				stalled.GetAgent() != agent || stalled.GetFencingToken() != token {
				t.Fatalf("MarkStalled = %v, %v; want the run IN_PROCESS, still leased, flagged stalled", stalled, err)
			}
			if got := env.Run(t, run.GetName()); !got.GetStalled() || !got.GetLastProgressTime().AsTime().Equal(before.GetLastProgressTime().AsTime()) {
				t.Errorf("stored run: stalled %v, progress %v; want stalled with the progress time unchanged", got.GetStalled(), got.GetLastProgressTime().AsTime())
			}
			at := clk.Add(time.Minute)
			if err := tt.report(); err != nil {
				t.Fatalf("report: %v", err)
			}
			got := env.Run(t, run.GetName())
			if got.GetStalled() || !got.GetLastProgressTime().AsTime().Equal(at) {
				t.Errorf("after %s: stalled %v, last progress %v; want not stalled, progress at %v", tt.name, got.GetStalled(), got.GetLastProgressTime().AsTime(), at)
			}
		})
	}

	// A resent batch changes nothing, so it is no progress.
	last := env.Run(t, run.GetName()).GetLastProgressTime().AsTime()
	clk.Add(time.Minute)
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(1, 2)}); err != nil {
		t.Fatal(err)
	}
	if got := env.Run(t, run.GetName()).GetLastProgressTime().AsTime(); !got.Equal(last) {
		t.Errorf("a resent log batch moved the last progress to %v, want %v", got, last)
	}
	// A stalled run that ends is no longer flagged.
	if _, err := env.Service.MarkStalled(ctx, run.GetName(), 0); err != nil {
		t.Fatal(err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: token,
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	if got := env.Run(t, run.GetName()); got.GetStalled() || got.GetState() != osvcv1.RunState_RUN_STATE_FAILED {
		t.Errorf("ended run: %s stalled %v, want FAILED and not stalled", got.GetState(), got.GetStalled())
	}
}

func TestMarkStalledLeavesRunsNotInProcessAndRefusesAChangedRun(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)

	// LEASED: the agent has not started; that is the lease's business, not a stall.
	got, err := env.Service.MarkStalled(ctx, run.GetName(), 0)
	if err != nil || got.GetStalled() {
		t.Errorf("MarkStalled of a LEASED run = stalled %v, %v; want it unchanged", got.GetStalled(), err)
	}
	if err := env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_DRIVE, State: osvcv1.StepState_STEP_STATE_RUNNING}}); err != nil {
		t.Fatal(err)
	}
	id, _ := servicing.RunID(run.GetName())
	_, rev, err := store.Get[*osvcv1.Run](ctx, env.Store, env.Store.RunKey(id))
	if err != nil {
		t.Fatal(err)
	}
	// A report after the scheduler read the run: the run moved on.
	if err := env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: run.GetName(), FencingToken: run.GetFencingToken(), Percent: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.MarkStalled(ctx, run.GetName(), rev); !errors.Is(err, errdefs.ErrContended) {
		t.Errorf("MarkStalled at an old revision: err = %v, want ErrContended", err)
	}
	if got := env.Run(t, run.GetName()); got.GetStalled() {
		t.Error("a refused MarkStalled flagged the run")
	}
	if _, err := env.Service.MarkStalled(ctx, "runs/r-unknown", 0); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("MarkStalled of an unknown run: err = %v, want ErrNotFound", err)
	}
}

func TestARequeuedRunWaitsABackoffThatDoublesWithEachAttemptUpToTheCap(t *testing.T) {
	t.Parallel()
	clk := newClock()
	env, img := newEnv(t, servicingtest.Options{
		MaxAttempts: 5, RetryBackoff: 10 * time.Second, MaxRetryBackoff: 25 * time.Second, Now: clk.Now,
	})
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	for attempt, want := range []time.Duration{10 * time.Second, 20 * time.Second, 25 * time.Second, 25 * time.Second} {
		if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
			t.Fatal(err)
		}
		now := clk.Add(time.Hour)
		r, err := env.Service.Requeue(ctx, run.GetName(), "lease revoked")
		if err != nil {
			t.Fatalf("Requeue: %v", err)
		}
		if r.GetState() != osvcv1.RunState_RUN_STATE_PENDING || !r.GetNotBefore().AsTime().Equal(now.Add(want)) {
			t.Errorf("after attempt %d: %s not before %v, want PENDING not before now + %s", attempt+1, r.GetState(), r.GetNotBefore().AsTime().Sub(now), want)
		}
		lease = env.Connect(t, agents.ID(agent), "PS1", 1, 30*time.Second)
		if _, err := env.Service.Lease(ctx, run.GetName(), 0, agent, int64(lease)); err != nil {
			t.Fatalf("lease attempt %d: %v", attempt+2, err)
		}
	}
}

func TestRetryDelayDoublesFromTheBackoffAndStopsAtTheCap(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		backoff, max time.Duration
		attempt      int32
		want         time.Duration
	}{
		{"first attempt with the defaults", 0, 0, 1, 10 * time.Second},
		{"second attempt with the defaults", 0, 0, 2, 20 * time.Second},
		{"fifth attempt with the defaults", 0, 0, 5, 160 * time.Second},
		{"sixth attempt with the defaults", 0, 0, 6, 5 * time.Minute},
		{"a hundredth attempt does not overflow", 0, 0, 100, 5 * time.Minute},
		{"a backoff above the cap", 10 * time.Minute, 0, 3, 10 * time.Minute},
		{"a small backoff", time.Millisecond, time.Second, 3, 4 * time.Millisecond},
	}
	env := servicingtest.New(t, servicingtest.Options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc, err := servicing.New(servicing.Config{Store: env.Store, Catalog: env.Catalog, Library: env.Library,
				RetryBackoff: tt.backoff, MaxRetryBackoff: tt.max})
			if err != nil {
				t.Fatal(err)
			}
			if got := svc.RetryDelay(tt.attempt); got != tt.want {
				t.Errorf("RetryDelay(%d) = %s, want %s", tt.attempt, got, tt.want)
			}
		})
	}
}

func TestNewRefusesANegativeBackoff(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	for _, cfg := range []servicing.Config{
		{Store: env.Store, Catalog: env.Catalog, Library: env.Library, RetryBackoff: -time.Second},
		{Store: env.Store, Catalog: env.Catalog, Library: env.Library, MaxRetryBackoff: -time.Second},
	} {
		if _, err := servicing.New(cfg); err == nil {
			t.Errorf("New accepted RetryBackoff %s, MaxRetryBackoff %s", cfg.RetryBackoff, cfg.MaxRetryBackoff)
		}
	}
}
