package servicing_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/agents"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

const agent = "agents/ps1-a"

// leasedRun schedules cu for img and leases the run to agent on a fresh lease.
func leasedRun(t *testing.T, env *servicingtest.Env, img *osvcv1.Image) (*osvcv1.Run, clientv3.LeaseID) {
	t.Helper()
	ctx := context.Background()
	_, run, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatalf("CreateSchedule: %v", err)
	}
	lease := env.Connect(t, agents.ID(agent), img.GetSite(), 1, 30*time.Second)
	leased, err := env.Service.Lease(ctx, run.GetName(), 0, agent, int64(lease))
	if err != nil {
		t.Fatalf("Lease: %v", err)
	}
	return leased, lease
}

func newEnv(t *testing.T, opts servicingtest.Options) (*servicingtest.Env, *osvcv1.Image) {
	env := servicingtest.New(t, opts)
	img := env.Image(t, "win11", "PS1", 1)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	return env, img
}

func lines(from, to int64) []*osvcv1.LogLine {
	var out []*osvcv1.LogLine
	for i := from; i <= to; i++ {
		out = append(out, &osvcv1.LogLine{Sequence: i, Level: "info", Message: fmt.Sprintf("line %d", i)})
	}
	return out
}

// watchAll collects everything WatchRun sends until it returns.
func watchAll(t *testing.T, env *servicingtest.Env, run string, after int64) ([]*osvcv1.Run, []*osvcv1.LogLine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var runs []*osvcv1.Run
	var got []*osvcv1.LogLine
	err := env.Service.WatchRun(ctx, run, after, func(r *osvcv1.Run, l []*osvcv1.LogLine) error {
		runs = append(runs, r)
		got = append(got, l...)
		return nil
	})
	if err != nil {
		t.Fatalf("WatchRun: %v", err)
	}
	return runs, got
}

func sequences(l []*osvcv1.LogLine) []int64 {
	var out []int64
	for _, x := range l {
		out = append(out, x.GetSequence())
	}
	return out
}

func TestTheLeaseHolderServicesTheImageAndTheSwapKeepsOnePreviousVersion(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	v1 := img.GetVersions()[0]

	run, _ := leasedRun(t, env, img)
	token := env.AssignmentRevision(t, run.GetName())
	if run.GetState() != osvcv1.RunState_RUN_STATE_LEASED || run.GetAttempt() != 1 || run.GetAgent() != agent || run.GetFencingToken() != token || token == 0 {
		t.Fatalf("leased run = %v, assignment revision %d", run, token)
	}
	name := run.GetName()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("step", env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: name, FencingToken: token,
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_DRIVE, State: osvcv1.StepState_STEP_STATE_RUNNING}}))
	if r := env.Run(t, name); r.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS || r.GetStep() != osvcv1.Step_STEP_DRIVE {
		t.Errorf("after the first report: state %s step %s, want IN_PROCESS at DRIVE", r.GetState(), r.GetStep())
	}
	if got := env.GetImage(t, img.Name).GetServicingStatus(); got != osvcv1.ServicingStatus_SERVICING_STATUS_IN_PROCESS {
		t.Errorf("image status %s, want IN_PROCESS", got)
	}
	must("progress", env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: name, FencingToken: token, Percent: 40,
		Update: &osvcv1.UpdateResult{Update: "updates/cu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS, Percent: 50}}))
	if r := env.Run(t, name); r.GetPercent() != 40 || r.GetUpdateResults()[0].GetPercent() != 50 ||
		r.GetUpdateResults()[0].GetState() != osvcv1.UpdateState_UPDATE_STATE_IN_PROGRESS {
		t.Errorf("after progress: %v", r)
	}
	must("update result", env.Service.ReportUpdateResult(ctx, agent, &osvcv1.UpdateResultReport{Run: name, FencingToken: token,
		Result: &osvcv1.UpdateResult{Update: "updates/cu", Index: 1, State: osvcv1.UpdateState_UPDATE_STATE_APPLIED}}))
	must("logs", env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: name, FencingToken: token, Lines: lines(1, 3)}))
	// The agent resends an overlapping batch: each sequence is stored once.
	must("logs again", env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: name, FencingToken: token, Lines: lines(2, 5)}))
	must("step done", env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: name, FencingToken: token,
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_DRIVE, State: osvcv1.StepState_STEP_STATE_DONE}}))

	v2 := env.Blob(t, "wim of win11 version 2")
	indexes := []*osvcv1.ImageIndex{{Index: 1, Name: "serviced", Build: 22631,
		InstalledUpdates: []*osvcv1.InstalledUpdate{{Update: "updates/cu", Kb: "KBcu", State: "Installed"}}}}
	must("result", env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: name, FencingToken: token,
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v2.GetSha256(), ResultSizeBytes: v2.GetSizeBytes(), Indexes: indexes}))

	r := env.Run(t, name)
	if r.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || r.GetResultVersion() != 2 || r.GetResultSha256() != v2.GetSha256() ||
		r.GetResultSizeBytes() != v2.GetSizeBytes() || r.GetEndTime() == nil || len(r.GetResultIndexes()) != 1 || r.GetLogLineCount() != 5 {
		t.Errorf("succeeded run = %v", r)
	}
	if len(r.GetSteps()) != 1 || r.GetSteps()[0].GetState() != osvcv1.StepState_STEP_STATE_DONE || r.GetSteps()[0].GetStartTime() == nil {
		t.Errorf("steps = %v, want DRIVE done with its start time", r.GetSteps())
	}
	got := env.GetImage(t, img.Name)
	if got.GetCurrentVersion() != 2 || len(got.GetVersions()) != 2 || got.GetVersions()[0].GetSha256() != v1.GetSha256() ||
		got.GetVersions()[1].GetCreatedByRun() != name || got.GetServicingStatus() != osvcv1.ServicingStatus_SERVICING_STATUS_SUCCEEDED ||
		got.GetLastRun() != name || got.GetIndexes()[0].GetName() != "serviced" {
		t.Errorf("image after the swap = %v", got)
	}
	if rev := env.AssignmentRevision(t, name); rev != 0 {
		t.Errorf("assignment still there after the run ended")
	}
	_, logged := watchAll(t, env, name, 0)
	if fmt.Sprint(sequences(logged)) != "[1 2 3 4 5]" {
		t.Errorf("stored log lines %v, want 1..5 once each", sequences(logged))
	}
	if err := env.Service.ReportProgress(ctx, agent, &osvcv1.Progress{Run: name, FencingToken: token}); !errors.Is(err, errdefs.ErrStaleLease) {
		t.Errorf("report after the end: err = %v, want ErrStaleLease", err)
	}

	// A third version drops the first, blob included, and keeps the second.
	run3, _ := leasedRun(t, env, img)
	if run3.GetSourceVersion() != 2 {
		t.Errorf("next run services version %d, want 2", run3.GetSourceVersion())
	}
	v3 := env.Blob(t, "wim of win11 version 3")
	must("third result", env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run3.GetName(), FencingToken: run3.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v3.GetSha256()}))
	got = env.GetImage(t, img.Name)
	if got.GetCurrentVersion() != 3 || len(got.GetVersions()) != 2 || got.GetVersions()[0].GetVersion() != 2 || got.GetVersions()[1].GetVersion() != 3 {
		t.Errorf("versions after a third = %v (current %d), want 2 and 3", got.GetVersions(), got.GetCurrentVersion())
	}
	if len(got.GetIndexes()) != 1 || got.GetIndexes()[0].GetName() != "serviced" {
		t.Errorf("no indexes reported: the image keeps its indexes, got %v", got.GetIndexes())
	}
	// The dropped version 1's blob is the content collector's to remove.
	if _, err := env.Library.Stat(ctx, v2.GetSha256()); err != nil {
		t.Errorf("blob of the kept version 2: %v", err)
	}
}

func TestASucceededResultMustBeInTheLibrary(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	run, _ := leasedRun(t, env, img)
	err := env.Service.ReportRunResult(context.Background(), agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: "0000000000000000000000000000000000000000000000000000000000000000"})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("err = %v, want FailedPrecondition", err)
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_LEASED {
		t.Errorf("run state %s after a refused result, want LEASED", r.GetState())
	}
}

func TestReportsAreRefused(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	run, _ := leasedRun(t, env, img)
	ctx := context.Background()
	tests := []struct {
		name  string
		agent string
		run   string
		token int64
		want  error
	}{
		{"with a token that is not the assignment's", agent, run.GetName(), run.GetFencingToken() + 1000, errdefs.ErrStaleLease},
		{"with no token", agent, run.GetName(), 0, errdefs.ErrStaleLease},
		{"from another agent", "agents/ps1-b", run.GetName(), run.GetFencingToken(), errdefs.ErrStaleLease},
		{"for an unknown run", agent, "runs/r-unknown", run.GetFencingToken(), errdefs.ErrNotFound},
		{"for a malformed run name", agent, "r-1", run.GetFencingToken(), errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := env.Service.ReportProgress(ctx, tt.agent, &osvcv1.Progress{Run: tt.run, FencingToken: tt.token, Percent: 10})
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_LEASED || r.GetPercent() != 0 {
		t.Errorf("refused reports changed the run: %v", r)
	}
}

func TestALostLeaseRequeuesTheRunAndRefusesTheOldToken(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	token := run.GetFencingToken()
	if err := env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: run.GetName(), FencingToken: token,
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_DRIVE, State: osvcv1.StepState_STEP_STATE_RUNNING}}); err != nil {
		t.Fatal(err)
	}
	// Requeue leaves a run alone while its assignment lives.
	if r, err := env.Service.Requeue(ctx, run.GetName(), "test"); err != nil || r.GetState() != osvcv1.RunState_RUN_STATE_IN_PROCESS {
		t.Fatalf("Requeue with a live assignment = %v, %v; want the run unchanged", r, err)
	}
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	r, err := env.Service.Requeue(ctx, run.GetName(), "lease revoked")
	if err != nil {
		t.Fatalf("Requeue: %v", err)
	}
	if r.GetState() != osvcv1.RunState_RUN_STATE_PENDING || r.GetAttempt() != 1 || r.GetAgent() != "" || r.GetFencingToken() != 0 || len(r.GetSteps()) != 0 {
		t.Errorf("requeued run = %v, want PENDING, attempt 1 counted, no agent", r)
	}
	if got := env.GetImage(t, img.Name).GetServicingStatus(); got != osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED {
		t.Errorf("image status %s, want SCHEDULED again", got)
	}
	err = env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: token, State: osvcv1.RunState_RUN_STATE_FAILED})
	if !errors.Is(err, errdefs.ErrStaleLease) {
		t.Errorf("report with the old token: err = %v, want ErrStaleLease", err)
	}
}

func TestALostLeaseOnTheLastAttemptFailsTheRun(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{MaxAttempts: 2})
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	for attempt := 1; attempt <= 2; attempt++ {
		if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
			t.Fatal(err)
		}
		r, err := env.Service.Requeue(ctx, run.GetName(), "lease revoked")
		if err != nil {
			t.Fatalf("Requeue: %v", err)
		}
		if attempt == 1 {
			if r.GetState() != osvcv1.RunState_RUN_STATE_PENDING {
				t.Fatalf("after attempt 1: %s, want PENDING", r.GetState())
			}
			lease = env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
			if _, err := env.Service.Lease(ctx, run.GetName(), 0, agent, int64(lease)); err != nil {
				t.Fatalf("second lease: %v", err)
			}
			continue
		}
		if r.GetState() != osvcv1.RunState_RUN_STATE_FAILED || r.GetAttempt() != 2 || r.GetError() == "" {
			t.Errorf("after the last attempt: %v, want FAILED with attempt 2 and an error", r)
		}
	}
	got := env.GetImage(t, img.Name)
	if got.GetServicingStatus() != osvcv1.ServicingStatus_SERVICING_STATUS_FAILED || got.GetCurrentVersion() != 1 {
		t.Errorf("image after a failed run = %v", got)
	}
	if _, _, err := env.Service.CreateSchedule(ctx, img.Name, &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false); err != nil {
		t.Errorf("a failed run frees the image: %v", err)
	}
}

func TestCancelOfALeasedRunAsksTheAgentAndLeavesTheImageUntouched(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	r, err := env.Service.CancelRun(ctx, run.GetName(), "maintenance window closed")
	if err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	if r.GetState() != osvcv1.RunState_RUN_STATE_LEASED || !r.GetCancelRequested() {
		t.Fatalf("cancel of a leased run = %v, want LEASED with cancel_requested", r)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_CANCELED}); err != nil {
		t.Fatalf("RunResult CANCELED: %v", err)
	}
	r = env.Run(t, run.GetName())
	if r.GetState() != osvcv1.RunState_RUN_STATE_CANCELED || r.GetError() != "maintenance window closed" {
		t.Errorf("run = %v, want CANCELED with the reason", r)
	}
	got := env.GetImage(t, img.Name)
	if got.GetCurrentVersion() != 1 || len(got.GetVersions()) != 1 || got.GetServicingStatus() != osvcv1.ServicingStatus_SERVICING_STATUS_CANCELED {
		t.Errorf("image after a cancel = %v, want version 1 only, CANCELED", got)
	}
}

func TestALostLeaseOfACancelRequestedRunCancelsIt(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	if _, err := env.Service.CancelRun(ctx, run.GetName(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	r, err := env.Service.Requeue(ctx, run.GetName(), "lease revoked")
	if err != nil || r.GetState() != osvcv1.RunState_RUN_STATE_CANCELED {
		t.Errorf("Requeue = %v, %v; want CANCELED", r, err)
	}
}

func TestLogLinesPastTheCapAreCountedAndDropped(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{MaxLogLines: 3})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(1, 5)}); err != nil {
		t.Fatal(err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(), State: osvcv1.RunState_RUN_STATE_FAILED, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	_, got := watchAll(t, env, run.GetName(), 0)
	if fmt.Sprint(sequences(got)) != "[1 2 3]" {
		t.Errorf("stored lines %v, want 1..3", sequences(got))
	}
	if d := env.Service.DroppedLogLines(); d != 2 {
		t.Errorf("dropped %d lines, want 2", d)
	}
}

func TestABigLogBatchIsStoredInSeveralChunks(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	big := lines(1, 400)
	for _, l := range big {
		l.Message = fmt.Sprintf("%02000d", l.GetSequence())
	}
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: big}); err != nil {
		t.Fatal(err)
	}
	id, _ := servicing.RunID(run.GetName())
	resp, err := env.Store.Client().Get(ctx, env.Store.LogsPrefix(id), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count < 2 {
		t.Errorf("%d chunks for 800 KB of lines, want several", resp.Count)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(), State: osvcv1.RunState_RUN_STATE_FAILED}); err != nil {
		t.Fatal(err)
	}
	_, got := watchAll(t, env, run.GetName(), 350)
	if len(got) != 50 || got[0].GetSequence() != 351 || got[49].GetSequence() != 400 {
		t.Errorf("lines after 350: %d lines from %v", len(got), sequences(got)[:min(3, len(got))])
	}
}

func TestWatchRunStreamsSnapshotsWithNewLogLinesAndEndsOnAFinalState(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	token := run.GetFencingToken()

	type msg struct {
		run   *osvcv1.Run
		lines []*osvcv1.LogLine
	}
	msgs := make(chan msg, 100)
	done := make(chan error, 1)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	go func() {
		done <- env.Service.WatchRun(wctx, run.GetName(), 0, func(r *osvcv1.Run, l []*osvcv1.LogLine) error {
			msgs <- msg{r, l}
			return nil
		})
	}()
	next := func() msg {
		t.Helper()
		select {
		case m := <-msgs:
			return m
		case <-wctx.Done():
			t.Fatal("no message from WatchRun")
		}
		return msg{}
	}
	if m := next(); m.run.GetState() != osvcv1.RunState_RUN_STATE_LEASED || len(m.lines) != 0 {
		t.Fatalf("first message: %v with %d lines, want the LEASED snapshot", m.run.GetState(), len(m.lines))
	}
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(1, 2)}); err != nil {
		t.Fatal(err)
	}
	// The first batch also moves the run IN_PROCESS: the change of the run
	// and that of its log count, one transaction, may come as two messages.
	var first []int64
	for inProcess := false; len(first) < 2 || !inProcess; {
		m := next()
		first = append(first, sequences(m.lines)...)
		inProcess = inProcess || m.run.GetState() == osvcv1.RunState_RUN_STATE_IN_PROCESS
		if len(m.lines) > 0 && m.run.GetLogLineCount() != 2 {
			t.Errorf("the message with the first lines counts %d lines, want 2", m.run.GetLogLineCount())
		}
	}
	if fmt.Sprint(first) != "[1 2]" {
		t.Errorf("after a batch: lines %v, want [1 2]", first)
	}
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: token, Lines: lines(1, 3)}); err != nil {
		t.Fatal(err)
	}
	if m := next(); fmt.Sprint(sequences(m.lines)) != "[3]" {
		t.Errorf("after a resent batch: lines %v, want only the new [3]", sequences(m.lines))
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: token,
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: "disk full"}); err != nil {
		t.Fatal(err)
	}
	if m := next(); m.run.GetState() != osvcv1.RunState_RUN_STATE_FAILED || m.run.GetError() != "disk full" {
		t.Errorf("last message: %v, want FAILED", m.run)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WatchRun = %v, want nil after a final state", err)
		}
	case <-wctx.Done():
		t.Fatal("WatchRun did not end after a final state")
	}
	// Watching an ended run sends its last snapshot and the lines after after_sequence.
	runs, got := watchAll(t, env, run.GetName(), 2)
	if len(runs) != 1 || runs[0].GetState() != osvcv1.RunState_RUN_STATE_FAILED || fmt.Sprint(sequences(got)) != "[3]" {
		t.Errorf("watch of an ended run: %d messages, lines %v", len(runs), sequences(got))
	}
}

func TestTheLinesOfAnotherAttemptAreStoredAfterTheEarlierOnes(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(1, 3)}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.Requeue(ctx, run.GetName(), "lease revoked"); err != nil {
		t.Fatal(err)
	}
	lease = env.Connect(t, "ps1-a", "PS1", 1, 30*time.Second)
	second, err := env.Service.Lease(ctx, run.GetName(), 0, agent, int64(lease))
	if err != nil {
		t.Fatal(err)
	}
	// The agent numbers its attempt's lines from 1 again, and resends one.
	for _, batch := range [][]*osvcv1.LogLine{lines(1, 2), lines(2, 2)} {
		if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: second.GetFencingToken(), Lines: batch}); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: second.GetFencingToken(), State: osvcv1.RunState_RUN_STATE_FAILED}); err != nil {
		t.Fatal(err)
	}
	_, got := watchAll(t, env, run.GetName(), 0)
	if fmt.Sprint(sequences(got)) != "[1 2 3 4 5]" {
		t.Errorf("stored lines %v, want attempt 1's 1..3 then attempt 2's as 4..5", sequences(got))
	}
	if got[3].GetMessage() != "line 1" {
		t.Errorf("line 4 = %q, want attempt 2's first line", got[3].GetMessage())
	}
}

func TestPruneLogsDeletesTheLinesOfRunsEndedBeforeTheCutoff(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	if err := env.Service.ReportLogs(ctx, agent, &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(), Lines: lines(1, 3)}); err != nil {
		t.Fatal(err)
	}
	if n, err := env.Service.PruneLogs(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("PruneLogs of a running run = %d, %v; want 0: its lines stay", n, err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(), State: osvcv1.RunState_RUN_STATE_FAILED}); err != nil {
		t.Fatal(err)
	}
	if n, err := env.Service.PruneLogs(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("PruneLogs before the run ended = %d, %v; want 0", n, err)
	}
	if n, err := env.Service.PruneLogs(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Errorf("PruneLogs after the run ended = %d, %v; want 1", n, err)
	}
	if _, got := watchAll(t, env, run.GetName(), 0); len(got) != 0 {
		t.Errorf("%d lines left after pruning", len(got))
	}
}

func TestARunawayLogLineIsCutOnACharacterBoundary(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	// 'é' is two bytes: after the leading 'a' every cut at an even byte
	// count falls inside one, as DISM's output in French or German does.
	long := "a" + strings.Repeat("é", 20000)
	batch := &osvcv1.LogBatch{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		Lines: []*osvcv1.LogLine{{Sequence: 1, Level: "info", Message: long}, {Sequence: 2, Level: "info", Message: "next"}}}
	if err := env.Service.ReportLogs(ctx, agent, batch); err != nil {
		t.Fatalf("ReportLogs of a long non-ASCII line: %v", err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(), State: osvcv1.RunState_RUN_STATE_FAILED}); err != nil {
		t.Fatal(err)
	}
	_, got := watchAll(t, env, run.GetName(), 0)
	if len(got) != 2 {
		t.Fatalf("stored lines %v, want 1 and 2", sequences(got))
	}
	first := got[0].GetMessage()
	if !utf8.ValidString(first) || !strings.HasPrefix(long, strings.TrimSuffix(first, "…")) || len(first) >= len(long) {
		t.Errorf("stored line 1 is %d bytes (valid UTF-8 %v), want a valid prefix of the %d bytes sent", len(first), utf8.ValidString(first), len(long))
	}
}

func TestRefusalsQuoteTheAgentsValueAsValidUTF8(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	run, _ := leasedRun(t, env, img)
	// The refusal goes back in an Ack, a protobuf string: invalid UTF-8
	// there would fail the Send and end the agent's stream.
	err := env.Service.ReportRunResult(context.Background(), agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: "a" + strings.Repeat("é", 100)})
	if err == nil {
		t.Fatal("a malformed result sha256 was accepted")
	}
	if !utf8.ValidString(err.Error()) {
		t.Errorf("error %q is not valid UTF-8", err)
	}
}

func TestLongAgentMessagesAreCutSoTheRunStaysWritable(t *testing.T) {
	t.Parallel()
	env := servicingtest.New(t, servicingtest.Options{})
	img := env.Image(t, "multi", "PS1", 4)
	env.Update(t, "cu", osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE, month(10))
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	// Four results with 300 KB messages would take the run past the
	// store's 1 MiB limit, after which nothing, not even its end or a
	// cancel, could be written to it.
	huge := strings.Repeat("0x800f081e ", 300<<10/11)
	for i := int32(1); i <= 4; i++ {
		err := env.Service.ReportUpdateResult(ctx, agent, &osvcv1.UpdateResultReport{Run: run.GetName(), FencingToken: run.GetFencingToken(),
			Result: &osvcv1.UpdateResult{Update: "updates/cu", Index: i, State: osvcv1.UpdateState_UPDATE_STATE_FAILED, Message: huge}})
		if err != nil {
			t.Fatalf("result for index %d: %v", i, err)
		}
	}
	if err := env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_APPLY, State: osvcv1.StepState_STEP_STATE_FAILED, Detail: huge}}); err != nil {
		t.Fatalf("step: %v", err)
	}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: huge}); err != nil {
		t.Fatalf("run result: %v", err)
	}
	ended := env.Run(t, run.GetName())
	if ended.GetState() != osvcv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("run is %s, want FAILED", ended.GetState())
	}
	texts := []string{ended.GetError(), ended.GetSteps()[len(ended.GetSteps())-1].GetDetail()}
	for _, r := range ended.GetUpdateResults() {
		texts = append(texts, r.GetMessage())
	}
	for _, s := range texts {
		if len(s) >= len(huge) || !strings.HasPrefix(s, "0x800f081e") {
			t.Errorf("stored a %d byte message, want the start of the %d bytes sent", len(s), len(huge))
		}
	}
}

func TestInstalledUpdatesOfEarlierRunsKeepTheirCatalogLink(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	older := env.Update(t, "older", osvcv1.Classification_CLASSIFICATION_SECURITY_UPDATE, month(8))
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	v2 := env.Blob(t, "wim of win11 version 2")
	// The agent links only its own run's update; the one an earlier run
	// installed comes without its catalog name, in another letter case.
	indexes := []*osvcv1.ImageIndex{{Index: 1, Build: 22631, InstalledUpdates: []*osvcv1.InstalledUpdate{
		{PackageIdentity: strings.ToLower(older.GetPackageIdentity()), State: "Installed"},
		{PackageIdentity: "Package_for_KB1~31bf3856ad364e35~amd64~~1.0.0.0", State: "Installed"},
	}}}
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v2.GetSha256(), ResultSizeBytes: v2.GetSizeBytes(), Indexes: indexes}); err != nil {
		t.Fatal(err)
	}
	got := env.GetImage(t, img.Name).GetIndexes()[0].GetInstalledUpdates()
	if len(got) != 2 || got[0].GetUpdate() != older.GetName() || got[1].GetUpdate() != "" {
		t.Errorf("installed updates = %v, want the first linked to %s and the unknown one unlinked", got, older.GetName())
	}
}

func TestASucceededResultClaimsItsBlobBeforeTheSwapReferencesIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	env, img := newEnv(t, servicingtest.Options{Now: clk.Now})
	run, _ := leasedRun(t, env, img)
	result := env.Blob(t, "wim of win11 version 2")
	// The upload is a day old when the run reports it: the content
	// collector's grace period must start again from the report.
	reported := clk.Add(24 * time.Hour)
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: result.GetSha256()}); err != nil {
		t.Fatal(err)
	}
	rec, err := env.Library.Stat(ctx, result.GetSha256())
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.GetUpdateTime().AsTime(); !got.Equal(reported) {
		t.Errorf("result blob update time %v, want the report's %v", got, reported)
	}
}
