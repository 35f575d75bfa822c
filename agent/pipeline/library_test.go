package pipeline

import (
	"context"
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/transfer"
)

// TestARunTakesTheSourceFromTheLibrarysVolumeAndNeverWritesIt runs the real
// engine with the library on the agent's volume, where the agent links or
// copies the library's file instead of downloading it: a servicing run,
// which mounts its copy read-write and commits into it, must get a copy of
// its own, or the commit would rewrite the image's current version in the
// library.
func TestARunTakesTheSourceFromTheLibrarysVolumeAndNeverWritesIt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		run  *osvcv1.Run
		// how is the log's word for how the source was taken.
		how transfer.Source
	}{
		{name: "a servicing run commits into a copy of its own", run: &osvcv1.Run{RemoveSuperseded: true}, how: transfer.Copied},
		{name: "an inspection only reads, through a link to the library's file", run: &osvcv1.Run{Kind: osvcv1.RunKind_RUN_KIND_INSPECTION}, how: transfer.Linked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			rec := &recorder{}
			if err := Run(context.Background(), newConfig(t, f), f.assign(tt.run), rec); err != nil {
				t.Fatal(err)
			}
			if res := rec.result; res.GetState() != osvcv1.RunState_RUN_STATE_SUCCEEDED {
				t.Fatalf("run ended %s: %s", res.GetState(), res.GetError())
			}
			if !loggedHow(rec, tt.how) {
				t.Errorf("no log line says the source was %q", tt.how)
			}
			if got, _, err := transfer.HashFile(context.Background(), f.lib.Path(f.source.GetSha256())); err != nil || got != f.source.GetSha256() {
				t.Fatalf("the library's file of the source version now hashes to %s (%v), not its name %s", got, err, f.source.GetSha256())
			}
		})
	}
}

func loggedHow(rec *recorder, how transfer.Source) bool {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, l := range rec.logs {
		if strings.Contains(l.GetMessage(), "source version copied") && strings.Contains(l.GetMessage(), how.String()) {
			return true
		}
	}
	return false
}
