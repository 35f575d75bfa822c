package servicing_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

func TestEachPassOfAStepKeepsItsOwnRecord(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	name, token := run.GetName(), env.AssignmentRevision(t, run.GetName())
	at := func(sec int) *timestamppb.Timestamp { return timestamppb.New(time.Unix(1_700_000_000+int64(sec), 0)) }
	step := func(st osvcv1.Step, state osvcv1.StepState, start, end *timestamppb.Timestamp, detail string) {
		t.Helper()
		if err := env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: name, FencingToken: token, Step: &osvcv1.StepRecord{
			Step: st, State: state, StartTime: start, EndTime: end, Detail: detail}}); err != nil {
			t.Fatalf("ReportStep %s %s: %v", st, state, err)
		}
	}
	running, done := osvcv1.StepState_STEP_STATE_RUNNING, osvcv1.StepState_STEP_STATE_DONE
	step(osvcv1.Step_STEP_APPLY, running, at(1), nil, "index 1")
	step(osvcv1.Step_STEP_APPLY, done, at(1), at(5), "1 applied")
	step(osvcv1.Step_STEP_CLEANUP, running, at(5), nil, "index 1")
	step(osvcv1.Step_STEP_CLEANUP, done, at(5), at(7), "superseded components removed")
	step(osvcv1.Step_STEP_APPLY, running, at(7), nil, "index 1: .NET updates after cleanup")
	// A report sent again (the agent's stream reconnected) replaces its
	// own pass, not the latest one.
	step(osvcv1.Step_STEP_APPLY, done, at(1), at(5), "1 applied")
	step(osvcv1.Step_STEP_APPLY, done, at(7), at(9), "1 applied")

	r := env.Run(t, name)
	var got []string
	for _, s := range r.GetSteps() {
		got = append(got, s.GetStep().String()+" "+s.GetState().String()+" "+s.GetDetail())
	}
	want := []string{
		"STEP_APPLY STEP_STATE_DONE 1 applied",
		"STEP_CLEANUP STEP_STATE_DONE superseded components removed",
		"STEP_APPLY STEP_STATE_DONE 1 applied",
	}
	if len(got) != len(want) {
		t.Fatalf("steps %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("step %d: %q, want %q", i, got[i], want[i])
		}
	}
	if s := r.GetSteps()[2]; !s.GetStartTime().AsTime().Equal(at(7).AsTime()) || !s.GetEndTime().AsTime().Equal(at(9).AsTime()) {
		t.Errorf("second APPLY ran %v to %v, want its own times", s.GetStartTime().AsTime(), s.GetEndTime().AsTime())
	}

	// A report without a start time ends the step's running pass, and the
	// next one with none starts a new pass.
	step(osvcv1.Step_STEP_COMMIT, running, nil, nil, "index 1")
	step(osvcv1.Step_STEP_COMMIT, done, nil, nil, "index 1 committed")
	step(osvcv1.Step_STEP_COMMIT, running, nil, nil, "index 2")
	if n := len(env.Run(t, name).GetSteps()); n != 5 {
		t.Errorf("%d step records after two COMMIT passes without start times, want 5", n)
	}
}

func TestByteProgressGoesToTheRunningStepAndOutlivesItsEnd(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	name, token := run.GetName(), env.AssignmentRevision(t, run.GetName())
	start := timestamppb.Now()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("copy running", env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: name, FencingToken: token,
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_COPY, State: osvcv1.StepState_STEP_STATE_RUNNING, StartTime: start}}))
	must("progress", env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: name, FencingToken: token, Percent: 15,
		Step: osvcv1.Step_STEP_COPY, BytesDone: 3 << 20, BytesTotal: 8 << 20}))
	if s := env.Run(t, name).GetSteps()[0]; s.GetBytesDone() != 3<<20 || s.GetBytesTotal() != 8<<20 {
		t.Errorf("COPY at %d of %d bytes, want 3 MiB of 8 MiB", s.GetBytesDone(), s.GetBytesTotal())
	}
	must("more progress than the total", env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: name, FencingToken: token, Percent: 20,
		Step: osvcv1.Step_STEP_COPY, BytesDone: 9 << 20, BytesTotal: 8 << 20}))
	must("copy done", env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: name, FencingToken: token,
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_COPY, State: osvcv1.StepState_STEP_STATE_DONE, StartTime: start, EndTime: timestamppb.Now()}}))
	// A progress report overtaken by the step's end changes nothing.
	must("late progress", env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: name, FencingToken: token, Percent: 20,
		Step: osvcv1.Step_STEP_COPY, BytesDone: 1, BytesTotal: 8 << 20}))
	if s := env.Run(t, name).GetSteps()[0]; s.GetState() != osvcv1.StepState_STEP_STATE_DONE || s.GetBytesDone() != 8<<20 || s.GetBytesTotal() != 8<<20 {
		t.Errorf("ended COPY: %s at %d of %d bytes, want DONE with 8 MiB of 8 MiB", s.GetState(), s.GetBytesDone(), s.GetBytesTotal())
	}
}

func TestAnUpdateKeepsWhenItStartedAndEnded(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	name, token := run.GetName(), env.AssignmentRevision(t, run.GetName())
	started := timestamppb.New(time.Unix(1_700_000_000, 0))
	ended := timestamppb.New(time.Unix(1_700_000_042, 0))
	if err := env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: name, FencingToken: token, Percent: 30,
		Update: &osvcv1.UpdateResult{Update: "updates/cu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, Percent: 10, StartTime: started}}); err != nil {
		t.Fatal(err)
	}
	// Later progress reports keep the first start.
	if err := env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: name, FencingToken: token, Percent: 40,
		Update: &osvcv1.UpdateResult{Update: "updates/cu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, Percent: 60, StartTime: ended}}); err != nil {
		t.Fatal(err)
	}
	if u := env.Run(t, name).GetUpdateResults()[0]; u.GetPercent() != 60 || !u.GetStartTime().AsTime().Equal(started.AsTime()) || u.GetEndTime() != nil {
		t.Errorf("in progress: %d%% from %v to %v, want 60%% from its first start, no end", u.GetPercent(), u.GetStartTime(), u.GetEndTime())
	}
	if err := env.Service.ReportUpdateResult(ctx, agent, &osvcv1.UpdateResultReport{Run: name, FencingToken: token,
		Result: &osvcv1.UpdateResult{Update: "updates/cu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_APPLIED, EndTime: ended}}); err != nil {
		t.Fatal(err)
	}
	u := env.Run(t, name).GetUpdateResults()[0]
	if d := u.GetEndTime().AsTime().Sub(u.GetStartTime().AsTime()); d != 42*time.Second {
		t.Errorf("the update took %v, want 42s", d)
	}
}
