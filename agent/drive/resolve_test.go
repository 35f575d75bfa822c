package drive

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/drivesetting"
)

// windowsServer is a Windows server's System laid out in real folders under
// root: C:\ is root/C, D:\osvc is root/D/osvc. The agent is installed on C:.
func windowsServer(root string) System {
	return System{
		DriveLetters: true,
		Automatic:    func() (string, error) { return `C:\`, nil },
		Folder: func(path string) (string, error) {
			letter, rest, ok := drivesetting.DriveLetter(path)
			if !ok || !strings.HasPrefix(rest, `\`) {
				return "", errors.New("the test's server knows absolute paths only")
			}
			if _, err := folder(filepath.Join(root, letter, filepath.FromSlash(strings.ReplaceAll(rest, `\`, "/")))); err != nil {
				return "", err
			}
			return path, nil
		},
	}
}

// mkdir makes the folders dirs under root.
func mkdir(t *testing.T, root string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
}

// file makes a file at path, and its folder.
func file(t *testing.T, path string) {
	t.Helper()
	mkdir(t, filepath.Dir(path), ".")
	if err := os.WriteFile(path, []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
}

func TestOnWindowsADriveIsItsRootAndWhatTheServerLacksIsTheAgentsDrive(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	mkdir(t, root, "C", "D/osvc/runs", "D/work")
	file(t, filepath.Join(root, "D", "image.wim"))
	sys := windowsServer(root)
	tests := []struct {
		name, setting, want, fallback string
	}{
		{"Automatic is the drive the agent is installed on", "Automatic", `C:\`, ""},
		{"automatic is matched in any case", "AUTOMATIC", `C:\`, ""},
		{"no setting is Automatic", "", `C:\`, ""},
		{"a drive is its root, never its current folder", "D:", `D:\`, ""},
		{"a drive in lower case is the same drive", "d:", `D:\`, ""},
		{"a drive's root is the drive", `D:\`, `D:\`, ""},
		{"a drive's root with a slash is the drive", "d:/", `D:\`, ""},
		{"a drive with spaces around is the drive", " D: ", `D:\`, ""},
		{"a folder on a drive is that folder", `D:\osvc`, `D:\osvc`, ""},
		{"a folder written with slashes is that folder", "d:/osvc/runs", `D:\osvc\runs`, ""},
		{"a folder relative to a drive is under its root", "D:work", `D:\work`, ""},
		{"a drive this server lacks is the agent's drive", "E:", `C:\`, "drive E: does not exist on this server"},
		{"a folder this server lacks is the agent's drive", `D:\missing`, `C:\`, `folder D:\missing does not exist on this server`},
		{"a file is not a folder", `D:\image.wim`, `C:\`, `folder D:\image.wim is a file, not a folder`},
		{"a path that is not a drive's is what the server says", `\\server\share`, `C:\`, `folder \\server\share cannot be used: the test's server`},
		{"a setting that only starts like a drive is a folder", "1:", `C:\`, "folder 1: cannot be used"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkResolved(t, sys, tt.setting, tt.want, tt.fallback)
		})
	}
}

// checkResolved resolves setting on sys: the folder must be want, and
// fallback, when set, in the reason it gave way to Automatic.
func checkResolved(t *testing.T, sys System, setting, want, fallback string) {
	t.Helper()
	got, err := Resolve(setting, sys)
	if err != nil {
		t.Fatal(err)
	}
	if got.Dir != want {
		t.Errorf("Resolve(%q) = %q, want %q", setting, got.Dir, want)
	}
	switch {
	case fallback == "" && got.Fallback != nil:
		t.Errorf("Resolve(%q) fell back to Automatic: %v", setting, got.Fallback)
	case fallback != "" && got.Fallback == nil:
		t.Errorf("Resolve(%q) did not say it fell back to Automatic, want %q", setting, fallback)
	case fallback != "" && !strings.Contains(got.Fallback.Error(), fallback):
		t.Errorf("Resolve(%q) fell back because %q, want %q", setting, got.Fallback, fallback)
	}
}

func TestAnAutomaticDriveThatCannotBeFoundIsAnError(t *testing.T) {
	t.Parallel()
	sys := System{
		Automatic: func() (string, error) { return "", errors.New("no executable") },
		Folder:    folder,
	}
	for _, setting := range []string{"Automatic", filepath.Join(t.TempDir(), "missing")} {
		if got, err := Resolve(setting, sys); err == nil || !strings.Contains(err.Error(), "no executable") {
			t.Errorf("Resolve(%q) = %+v, %v; want the Automatic drive's error", setting, got, err)
		}
	}
}
