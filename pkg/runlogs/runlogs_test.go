package runlogs_test

import (
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/runlogs"
)

func TestCheckNameTakesOnlyTheKnownFileNames(t *testing.T) {
	t.Parallel()
	for _, name := range runlogs.Names {
		if err := runlogs.CheckName(name); err != nil {
			t.Errorf("CheckName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{
		"", "DISM.log", "dism.log ", "../dism.log", "logs/dism.log", `C:\Windows\Logs\DISM\dism.log`,
		"dism.log\x00", "OfflineServicingMgr.log/..", "source.wim", strings.Repeat("é", 200),
	} {
		err := runlogs.CheckName(name)
		if err == nil {
			t.Errorf("CheckName(%q) = nil, want a refusal", name)
			continue
		}
		if !strings.Contains(err.Error(), "OfflineServicingMgr.log") || len(err.Error()) > 200 {
			t.Errorf("CheckName(%q) = %q: want a short message naming the files it takes", name, err)
		}
	}
}
