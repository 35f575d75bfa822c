package pipeline

import (
	"context"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func TestCopyExportAndSwapReportTheirBytesAndUpdatesTheirTimes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cfg := newConfig(t, f)
	// Through the cache, as the agent runs: the source is downloaded into
	// it, then copied into the work folder.
	cfg.Sources = cfg.UpdateFiles
	rec := &recorder{}
	if err := Run(context.Background(), cfg, f.assign(&osvcv1.Run{RemoveSuperseded: true}), rec); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rec.result.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("run ended %s: %s", rec.result.GetState(), rec.result.GetError())
	}
	last := map[osvcv1.Step]*osvcv1.Progress{}
	for _, p := range rec.progress {
		if p.GetStep() == osvcv1.Step_STEP_UNSPECIFIED {
			if u := p.GetUpdate(); u != nil && u.GetStartTime() == nil {
				t.Errorf("progress of %s has no start time", u.GetKb())
			}
			continue
		}
		if p.GetBytesTotal() <= 0 || p.GetBytesDone() < 0 || p.GetBytesDone() > p.GetBytesTotal() {
			t.Errorf("%s at %d of %d bytes", p.GetStep(), p.GetBytesDone(), p.GetBytesTotal())
		}
		last[p.GetStep()] = p
	}
	for _, st := range []osvcv1.Step{osvcv1.Step_STEP_COPY, osvcv1.Step_STEP_EXPORT, osvcv1.Step_STEP_SWAP} {
		p := last[st]
		if p == nil {
			t.Errorf("%s reported no bytes", st)
			continue
		}
		if p.GetBytesDone() != p.GetBytesTotal() {
			t.Errorf("%s ended at %d of %d bytes", st, p.GetBytesDone(), p.GetBytesTotal())
		}
	}
	if got, want := last[osvcv1.Step_STEP_COPY].GetBytesTotal(), 2*f.source.GetSizeBytes(); got != want {
		t.Errorf("COPY moved %d bytes, want %d: the download into the cache, then the copy out of it", got, want)
	}
	for _, r := range rec.results {
		start, end := r.GetStartTime(), r.GetEndTime()
		if start == nil || end == nil || end.AsTime().Before(start.AsTime()) {
			t.Errorf("%s ran from %v to %v", r.GetKb(), start, end)
		}
	}
}
