package servicing_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// logFiles uploads a run's two log files and returns them as an agent
// reports them.
func logFiles(t *testing.T, env *servicingtest.Env, servicingLog, engineLog string) []*osvcv1.RunArtifact {
	t.Helper()
	s, e := env.Blob(t, servicingLog), env.Blob(t, engineLog)
	return []*osvcv1.RunArtifact{
		{Name: "dism.log", Sha256: e.GetSha256(), SizeBytes: e.GetSizeBytes(), MediaType: "text/plain"},
		{Name: "OfflineServicingMgr.log", Sha256: s.GetSha256(), SizeBytes: s.GetSizeBytes(), MediaType: "text/plain", TruncatedBytes: 12},
	}
}

func TestAResultRecordsTheRunsLogFilesWhateverItsState(t *testing.T) {
	t.Parallel()
	for _, state := range []osvcv1.RunState{osvcv1.RunState_RUN_STATE_SUCCEEDED, osvcv1.RunState_RUN_STATE_FAILED, osvcv1.RunState_RUN_STATE_CANCELED} {
		t.Run(state.String(), func(t *testing.T) {
			t.Parallel()
			env, img := newEnv(t, servicingtest.Options{})
			ctx := context.Background()
			run, _ := leasedRun(t, env, img)
			files := logFiles(t, env, "run: step started: step=DRIVE\n", "wimlib-imagex mountrw\n")
			res := &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(), State: state, Artifacts: files}
			if state == osvcv1.RunState_RUN_STATE_SUCCEEDED {
				v2 := env.Blob(t, "wim of win11 version 2")
				res.ResultSha256, res.ResultSizeBytes = v2.GetSha256(), v2.GetSizeBytes()
			} else {
				res.Error = "apply failed"
			}
			if err := env.Service.ReportRunResult(ctx, agent, res); err != nil {
				t.Fatalf("ReportRunResult: %v", err)
			}
			r := env.Run(t, run.GetName())
			if r.GetState() != state {
				t.Fatalf("run ended %s, want %s", r.GetState(), state)
			}
			if len(r.GetArtifacts()) != 2 {
				t.Fatalf("run artifacts = %v, want both log files", r.GetArtifacts())
			}
			for i, a := range r.GetArtifacts() {
				if !proto.Equal(a, files[i]) {
					t.Errorf("artifact %d = %v, want %v", i, a, files[i])
				}
			}
		})
	}
}

func TestLogFilesAHostileAgentReportsAreRefused(t *testing.T) {
	t.Parallel()
	const limit = 64
	env, img := newEnv(t, servicingtest.Options{MaxArtifactBytes: limit})
	ctx := context.Background()
	run, _ := leasedRun(t, env, img)
	small := env.Blob(t, "a short log\n")
	big := env.Blob(t, strings.Repeat("x", limit+1))
	file := func(name string, c *osvcv1.Content) *osvcv1.RunArtifact {
		return &osvcv1.RunArtifact{Name: name, Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()}
	}
	missing := strings.Repeat("0", 64)
	tests := []struct {
		name  string
		files []*osvcv1.RunArtifact
		field string
		want  error
	}{
		{"a name that is not a run log file", []*osvcv1.RunArtifact{file("source.wim", small)}, "run_result.artifacts[0].name", errdefs.ErrInvalidArgument},
		{"a name with a path", []*osvcv1.RunArtifact{file("../../etc/dism.log", small)}, "run_result.artifacts[0].name", errdefs.ErrInvalidArgument},
		{"a Windows path to a known name", []*osvcv1.RunArtifact{file(`C:\Windows\Logs\DISM\dism.log`, small)}, "run_result.artifacts[0].name", errdefs.ErrInvalidArgument},
		{"the same file twice", []*osvcv1.RunArtifact{file("dism.log", small), file("dism.log", small)}, "run_result.artifacts[1].name", errdefs.ErrInvalidArgument},
		{"more files than a run has", []*osvcv1.RunArtifact{file("dism.log", small), file("OfflineServicingMgr.log", small), file("dism.log", small)}, "run_result.artifacts", errdefs.ErrInvalidArgument},
		{"a sha256 that is not one", []*osvcv1.RunArtifact{{Name: "dism.log", Sha256: "../../content"}}, "run_result.artifacts[0].sha256", errdefs.ErrInvalidArgument},
		{"a size over the limit", []*osvcv1.RunArtifact{{Name: "dism.log", Sha256: small.GetSha256(), SizeBytes: limit + 1}}, "run_result.artifacts[0].size_bytes", errdefs.ErrInvalidArgument},
		{"a blob over the limit announced small", []*osvcv1.RunArtifact{{Name: "dism.log", Sha256: big.GetSha256(), SizeBytes: 10}}, "run_result.artifacts[0].sha256", errdefs.ErrInvalidArgument},
		{"a blob over the limit of no announced size", []*osvcv1.RunArtifact{{Name: "dism.log", Sha256: big.GetSha256()}}, "run_result.artifacts[0].sha256", errdefs.ErrInvalidArgument},
		{"a size that is not the blob's", []*osvcv1.RunArtifact{{Name: "dism.log", Sha256: small.GetSha256(), SizeBytes: small.GetSizeBytes() + 1}}, "run_result.artifacts[0].size_bytes", errdefs.ErrInvalidArgument},
		{"a negative truncated size", []*osvcv1.RunArtifact{{Name: "dism.log", Sha256: small.GetSha256(), TruncatedBytes: -1}}, "run_result.artifacts[0].truncated_bytes", errdefs.ErrInvalidArgument},
		{"a blob the library does not hold", []*osvcv1.RunArtifact{{Name: "dism.log", Sha256: missing}}, "", errdefs.ErrFailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
				State: osvcv1.RunState_RUN_STATE_FAILED, Error: "x", Artifacts: tt.files})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var v *errdefs.FieldViolation
			if tt.field != "" && (!errors.As(err, &v) || v.Field != tt.field) {
				t.Errorf("err = %v, want a violation of %s", err, tt.field)
			}
		})
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_LEASED || len(r.GetArtifacts()) != 0 {
		t.Errorf("refused results changed the run: %s with artifacts %v", r.GetState(), r.GetArtifacts())
	}
	// A file at the limit is taken.
	atLimit := env.Blob(t, strings.Repeat("y", limit))
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: "x", Artifacts: []*osvcv1.RunArtifact{file("dism.log", atLimit)}}); err != nil {
		t.Fatalf("a log file of exactly the limit: %v", err)
	}
}

func TestAnAgentThatLostTheRunCannotAttachLogFilesToIt(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	staleToken := run.GetFencingToken()
	if err := env.Service.ReportStep(ctx, agent, &osvcv1.StepChanged{Run: run.GetName(), FencingToken: staleToken,
		Step: &osvcv1.StepRecord{Step: osvcv1.Step_STEP_DRIVE, State: osvcv1.StepState_STEP_STATE_RUNNING}}); err != nil {
		t.Fatal(err)
	}
	// The agent's lease ends; the run goes to another agent.
	if _, err := env.Store.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Service.Requeue(ctx, run.GetName(), "lease revoked"); err != nil {
		t.Fatal(err)
	}
	const other = "agents/ps1-b"
	otherLease := env.Connect(t, "ps1-b", "PS1", 1, 30*time.Second)
	released, err := env.Service.Lease(ctx, run.GetName(), 0, other, int64(otherLease))
	if err != nil {
		t.Fatalf("lease to %s: %v", other, err)
	}

	stale := logFiles(t, env, "the stale agent's story\n", "the stale agent's dism.log\n")
	for _, state := range []osvcv1.RunState{osvcv1.RunState_RUN_STATE_FAILED, osvcv1.RunState_RUN_STATE_CANCELED} {
		err = env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: staleToken, State: state, Artifacts: stale})
		if !errors.Is(err, errdefs.ErrStaleLease) {
			t.Fatalf("%s result with log files from the agent that lost the run: err = %v, want ErrStaleLease", state, err)
		}
	}
	if r := env.Run(t, run.GetName()); r.GetState() != osvcv1.RunState_RUN_STATE_LEASED || r.GetAgent() != other || len(r.GetArtifacts()) != 0 {
		t.Fatalf("after the stale reports: %s on %s with artifacts %v; want LEASED to %s with none", r.GetState(), r.GetAgent(), r.GetArtifacts(), other)
	}

	// The agent holding the run attaches its own.
	current := logFiles(t, env, "the current agent's story\n", "the current agent's dism.log\n")
	if err := env.Service.ReportRunResult(ctx, other, &osvcv1.RunResult{Run: run.GetName(), FencingToken: released.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: "apply failed", Artifacts: current}); err != nil {
		t.Fatalf("the current agent's result: %v", err)
	}
	r := env.Run(t, run.GetName())
	if len(r.GetArtifacts()) != 2 || r.GetArtifacts()[0].GetSha256() != current[0].GetSha256() || r.GetArtifacts()[1].GetSha256() != current[1].GetSha256() {
		t.Errorf("artifacts = %v, want the current agent's %v", r.GetArtifacts(), current)
	}
	// Once the run ended, the stale agent still cannot replace them.
	err = env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: staleToken,
		State: osvcv1.RunState_RUN_STATE_FAILED, Artifacts: stale})
	if !errors.Is(err, errdefs.ErrStaleLease) {
		t.Errorf("a stale result after the run ended: err = %v, want ErrStaleLease", err)
	}
	if got := env.Run(t, run.GetName()).GetArtifacts(); got[0].GetSha256() != current[0].GetSha256() {
		t.Errorf("the stale agent replaced the run's log files: %v", got)
	}
}

func TestAResultWithLogFilesWhoseLeaseEndsBeforeItsCommitIsRefused(t *testing.T) {
	t.Parallel()
	env, img, ender := newFencedEnv(t)
	ctx := context.Background()
	run, lease := leasedRun(t, env, img)
	ender.lease = lease
	files := logFiles(t, env, "story\n", "dism\n")
	ender.armFor("report for " + run.GetName())

	err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: run.GetName(), FencingToken: run.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_FAILED, Error: "x", Artifacts: files})
	if !ender.ended.Load() {
		t.Fatal("the result's transaction never reached its commit")
	}
	if !errors.Is(err, errdefs.ErrStaleLease) {
		t.Fatalf("ReportRunResult = %v, want ErrStaleLease: the lease ended before the commit", err)
	}
	if r := env.Run(t, run.GetName()); len(r.GetArtifacts()) != 0 || r.GetState() == osvcv1.RunState_RUN_STATE_FAILED {
		t.Errorf("the refused result changed the run: %s with artifacts %v", r.GetState(), r.GetArtifacts())
	}
}
