package pipeline

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func TestARunOnTheAutomaticDriveInPlaceOfTheSettingSaysWhyInItsLog(t *testing.T) {
	t.Parallel()
	const warning = "the offline servicing drive is not on this server: this run works on the Automatic drive"
	tests := []struct {
		name     string
		fallback error
	}{
		{"a drive the server lacks is told", errors.New("drive E: does not exist on this server")},
		{"a drive the server has is not", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fr := newFileRun(t, "Enterprise")
			fr.cfg.DriveFallback = tt.fallback
			rec := fr.run(t, context.Background(), &osvcv1.Run{}, []*osvcv1.Update{fr.update("KB1", plain, "2026-10-14", "applied")})
			var sent string
			for _, l := range rec.logs {
				if strings.Contains(l.GetMessage(), warning) {
					sent = l.GetLevel() + " " + l.GetMessage()
				}
			}
			kept, err := os.ReadFile(filepath.Join(fr.cfg.Drive, WorkFolder, "r1", LogFile))
			if err != nil {
				t.Fatal(err)
			}
			if tt.fallback == nil {
				if sent != "" || strings.Contains(string(kept), warning) {
					t.Errorf("a run on the drive it was given warns it is not: %q", sent)
				}
				return
			}
			if !strings.HasPrefix(sent, "WARN ") || !strings.Contains(sent, "drive="+fr.cfg.Drive) || !strings.Contains(sent, "drive E: does not exist on this server") {
				t.Errorf("the server got %q, want a warning naming the drive used and why", sent)
			}
			if !strings.Contains(string(kept), warning) {
				t.Errorf("%s does not say the run works on the Automatic drive:\n%s", LogFile, kept)
			}
		})
	}
}
