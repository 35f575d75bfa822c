package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/osvc/osvc/agent/engine"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/integration/sampledata"
)

// damagedOn makes the engine find the file of the verify call named call damaged.
func damagedOn(call string) func(context.Context, string) error {
	return func(_ context.Context, c string) error {
		if c == call {
			return fmt.Errorf("verify: %w: a WIM resource is corrupted", engine.ErrDamaged)
		}
		return nil
	}
}

func TestADamagedSourceFailsTheRunBeforeAnythingIsMounted(t *testing.T) {
	t.Parallel()
	fr := newFileRun(t, "Enterprise")
	fr.eng.before = damagedOn("verify source.wim")
	rec := fr.run(t, context.Background(), &osvcv1.Run{}, fr.ssuSecurityCU("applied"))
	res := rec.result
	if res.GetState() != osvcv1.RunState_RUN_STATE_FAILED || !strings.Contains(res.GetError(), "image images/win11 version 1 is damaged") {
		t.Fatalf("result = %s %q, want FAILED naming the image and its version", res.GetState(), res.GetError())
	}
	if got := fr.eng.servicing(); len(got) != 0 {
		t.Errorf("the engine was asked to %q after the copy failed verification", got)
	}
	if up := fr.content.uploaded(); len(up) != 0 {
		t.Errorf("uploaded %q from a damaged source", up)
	}
}

func TestADamagedResultIsNeverUploaded(t *testing.T) {
	t.Parallel()
	fr := newFileRun(t, "Enterprise")
	fr.eng.before = damagedOn("verify export.wim")
	rec := fr.run(t, context.Background(), &osvcv1.Run{RemoveSuperseded: true}, fr.ssuSecurityCU("applied"))
	res := rec.result
	if res.GetState() != osvcv1.RunState_RUN_STATE_FAILED || !strings.Contains(res.GetError(), "the serviced image (image images/win11 version 1), nothing uploaded, is damaged") {
		t.Fatalf("result = %s %q, want FAILED saying the serviced image is damaged", res.GetState(), res.GetError())
	}
	if up := fr.content.uploaded(); len(up) != 0 {
		t.Errorf("uploaded %q although the result failed verification", up)
	}
	calls := fr.eng.calls
	if i, j := slices.Index(calls, "verify source.wim"), slices.Index(calls, "verify export.wim"); i < 0 || j < i || !slices.Contains(calls[i:j], "export 1") {
		t.Errorf("calls %q: want the source verified, then the export, then the result verified", calls)
	}
}

func TestAnInspectionVerifiesAndReadsTheIndexesWithoutMountingOrUploading(t *testing.T) {
	t.Parallel()
	fr := newFileRun(t, "Enterprise", "Pro")
	a := &osvcv1.Assign{Run: &osvcv1.Run{Name: "runs/r1", Image: "images/win11", FencingToken: 7, Kind: osvcv1.RunKind_RUN_KIND_INSPECTION},
		Image: &osvcv1.Image{Name: "images/win11"}, Source: fr.source}
	rec := &recorder{}
	if err := Run(context.Background(), fr.cfg, a, rec); err != nil {
		t.Fatal(err)
	}
	res := rec.result
	if res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || res.GetResultSha256() != fr.source.GetSha256() || len(res.GetIndexes()) != 2 {
		t.Fatalf("result = %v, want SUCCEEDED naming the source with its 2 indexes", res)
	}
	if got := fr.eng.servicing(); len(got) != 0 {
		t.Errorf("an inspection asked the engine to %q", got)
	}
	if up := fr.content.uploaded(); len(up) != 0 {
		t.Errorf("an inspection uploaded %q", up)
	}
	want := []string{"DRIVE RUNNING", "DRIVE DONE", "COPY RUNNING", "COPY DONE", "VERIFY RUNNING", "VERIFY DONE", "REPORT RUNNING", "REPORT DONE"}
	if steps := rec.stepStates(); !slices.Equal(steps, want) {
		t.Errorf("steps %q, want %q", steps, want)
	}
	checkWorkFolder(t, fr.cfg.Drive)
}

// TestAnInspectionOfARealDamagedWIMFailsNamingTheVersion runs the real
// engine on the sample and on a copy whose body is damaged while its header
// and XML are intact: what the server's import cannot see.
func TestAnInspectionOfARealDamagedWIMFailsNamingTheVersion(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	inspect := func(source *osvcv1.ImageVersion) *osvcv1.RunResult {
		t.Helper()
		a := &osvcv1.Assign{Run: &osvcv1.Run{Name: "runs/r1", Image: "images/win11", FencingToken: 42, Kind: osvcv1.RunKind_RUN_KIND_INSPECTION},
			Image: &osvcv1.Image{Name: "images/win11"}, Source: source}
		rec := &recorder{}
		if err := Run(context.Background(), newConfig(t, f), a, rec); err != nil {
			t.Fatal(err)
		}
		return rec.result
	}
	res := inspect(f.source)
	if res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED || len(res.GetIndexes()) != 1 || res.GetIndexes()[0].GetBuild() != sampledata.DefaultBuild {
		t.Fatalf("inspection of the sample = %v, want SUCCEEDED with its index", res)
	}
	damaged := copyFile(t, f.sample.WIM)
	if err := sampledata.DamageBody(damaged); err != nil {
		t.Fatal(err)
	}
	c := f.put(t, damaged, MediaTypeWIM)
	res = inspect(&osvcv1.ImageVersion{Version: 3, Sha256: c.GetSha256(), SizeBytes: c.GetSizeBytes()})
	if res.GetState() != osvcv1.RunState_RUN_STATE_FAILED || !strings.Contains(res.GetError(), "image images/win11 version 3 is damaged") {
		t.Fatalf("inspection of the damaged copy = %s %q, want FAILED naming version 3", res.GetState(), res.GetError())
	}
}
