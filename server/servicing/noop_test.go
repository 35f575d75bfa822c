package servicing_test

import (
	"context"
	"slices"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

func TestAResultThatIsTheSourceVersionAddsNoVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// sameAsSource reports the source version's sha as the result.
		sameAsSource bool
		wantCurrent  int32
		wantVersions []int32
		// wantV1Kept tells whether version 1, the rollback point before the
		// first servicing, is still in the image and the library.
		wantV1Kept bool
		// wantIndexName is the image's index after the run: an unchanged
		// file keeps its description.
		wantIndexName string
	}{
		{"with the source's sha the image stays at its version and keeps its rollback point", true, 2, []int32{1, 2}, true, "serviced"},
		{"with a new sha the result becomes a new version as before", false, 3, []int32{2, 3}, false, "described by the agent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env, img := newEnv(t, servicingtest.Options{})
			ctx := context.Background()
			v1 := img.GetVersions()[0]

			// A first run services the image: version 2, version 1 kept as the previous one.
			first, _ := leasedRun(t, env, img)
			v2 := env.Blob(t, "wim of win11 version 2")
			if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: first.GetName(), FencingToken: first.GetFencingToken(),
				State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v2.GetSha256(), ResultSizeBytes: v2.GetSizeBytes(),
				Indexes: []*osvcv1.ImageIndex{{Index: 1, Name: "serviced"}}}); err != nil {
				t.Fatalf("first result: %v", err)
			}

			// The schedule runs again and, say, finds everything installed.
			again, _ := leasedRun(t, env, img)
			if again.GetSourceVersion() != 2 {
				t.Fatalf("the second run services version %d, want 2", again.GetSourceVersion())
			}
			result := v2
			if !tt.sameAsSource {
				result = env.Blob(t, "wim of win11 version 3")
			}
			reported := []*osvcv1.ImageIndex{{Index: 1, Name: "described by the agent"}}
			if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: again.GetName(), FencingToken: again.GetFencingToken(),
				State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: result.GetSha256(), ResultSizeBytes: result.GetSizeBytes(),
				Indexes: reported}); err != nil {
				t.Fatalf("second result: %v", err)
			}

			r := env.Run(t, again.GetName())
			if r.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || r.GetResultVersion() != tt.wantCurrent ||
				r.GetResultSha256() != result.GetSha256() || r.GetResultSizeBytes() != result.GetSizeBytes() ||
				len(r.GetResultIndexes()) != 1 || r.GetEndTime() == nil || r.GetError() != "" {
				t.Errorf("run = %v, want SUCCEEDED with result version %d and sha %s", r, tt.wantCurrent, result.GetSha256())
			}
			got := env.GetImage(t, img.GetName())
			var versions []int32
			for _, v := range got.GetVersions() {
				versions = append(versions, v.GetVersion())
			}
			if got.GetCurrentVersion() != tt.wantCurrent || !slices.Equal(versions, tt.wantVersions) {
				t.Errorf("image at version %d with versions %v, want %d with %v", got.GetCurrentVersion(), versions, tt.wantCurrent, tt.wantVersions)
			}
			if ix := got.GetIndexes(); len(ix) != 1 || ix[0].GetName() != tt.wantIndexName {
				t.Errorf("image indexes %v, want one named %q", ix, tt.wantIndexName)
			}
			if got.GetServicingStatus() != osvcv1.ServicingStatus_SERVICING_STATUS_SUCCEEDED || got.GetLastRun() != again.GetName() {
				t.Errorf("image status %s, last run %s; want SUCCEEDED and %s", got.GetServicingStatus(), got.GetLastRun(), again.GetName())
			}
			if rev := env.AssignmentRevision(t, again.GetName()); rev != 0 {
				t.Error("the assignment is still there after the run ended")
			}
			_, err := env.Library.Stat(ctx, v1.GetSha256())
			if tt.wantV1Kept && err != nil {
				t.Errorf("blob of version 1, the rollback point: %v", err)
			}
			if _, err := env.Library.Stat(ctx, v2.GetSha256()); err != nil {
				t.Errorf("blob of version 2: %v", err)
			}
			// The image is free again: the active-run key went with the run.
			if _, _, err := env.Service.CreateSchedule(ctx, img.GetName(), &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false); err != nil {
				t.Errorf("scheduling after the run ended: %v", err)
			}
		})
	}
}

func TestACanceledRunLeavesTheImageAsItWasAndSaysCanceled(t *testing.T) {
	t.Parallel()
	env, img := newEnv(t, servicingtest.Options{})
	ctx := context.Background()

	first, _ := leasedRun(t, env, img)
	v2 := env.Blob(t, "wim of win11 version 2")
	if err := env.Service.ReportRunResult(ctx, agent, &osvcv1.RunResult{Run: first.GetName(), FencingToken: first.GetFencingToken(),
		State: osvcv1.RunState_RUN_STATE_SUCCEEDED, ResultSha256: v2.GetSha256(), ResultSizeBytes: v2.GetSizeBytes()}); err != nil {
		t.Fatalf("first result: %v", err)
	}

	_, pending, err := env.Service.CreateSchedule(ctx, img.GetName(), &osvcv1.Schedule{Updates: []string{"updates/cu"}}, false)
	if err != nil {
		t.Fatalf("second schedule: %v", err)
	}
	if st := env.GetImage(t, img.GetName()).GetServicingStatus(); st != osvcv1.ServicingStatus_SERVICING_STATUS_SCHEDULED {
		t.Fatalf("image status %v with a run scheduled, want SCHEDULED", st)
	}
	canceled, err := env.Service.CancelRun(ctx, pending.GetName(), "scheduled by mistake")
	if err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	for _, r := range canceled.GetUpdateResults() {
		if r.GetState() != osvcv1.UpdateState_UPDATE_STATE_SKIPPED || r.GetMessage() == "" {
			t.Errorf("update result %v of a canceled run, want SKIPPED with why", r)
		}
	}
	// The console's Scheduled Updates Status: Canceled, the image as the
	// first run left it.
	got := env.GetImage(t, img.GetName())
	if got.GetServicingStatus() != osvcv1.ServicingStatus_SERVICING_STATUS_CANCELED || got.GetLastRun() != pending.GetName() || got.GetCurrentVersion() != 2 {
		t.Errorf("image status %v, last run %s, version %d after the cancel; want CANCELED from %s at version 2",
			got.GetServicingStatus(), got.GetLastRun(), got.GetCurrentVersion(), pending.GetName())
	}
}
