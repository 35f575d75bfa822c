//go:build unix

package drive

import (
	"path/filepath"
	"testing"
)

func TestOnLinuxAutomaticIsTheDataFolderAndWhatTheServerLacksToo(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	existing := t.TempDir()
	image := filepath.Join(t.TempDir(), "image.wim")
	file(t, image)
	sys := Local(dataDir)
	tests := []struct {
		name, setting, want, fallback string
	}{
		{"an existing folder is used as is", existing, existing, ""},
		{"a folder's trailing slash does not count", existing + "/", existing, ""},
		{"Automatic is the data folder", "Automatic", dataDir, ""},
		{"automatic is matched in any case", "automatic", dataDir, ""},
		{"a missing folder is the data folder", filepath.Join(existing, "no-such-drive"), dataDir, "does not exist on this server"},
		{"a file is not a folder", image, dataDir, image + " is a file, not a folder"},
		{"a Windows drive is not on this server", "D:", dataDir, "D: names a Windows drive, and this server has no drive letters"},
		{"a Windows drive's root is not on this server", `d:\`, dataDir, "has no drive letters"},
		{"a Windows folder is not on this server", `D:\osvc`, dataDir, "has no drive letters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkResolved(t, sys, tt.setting, tt.want, tt.fallback)
		})
	}
}
