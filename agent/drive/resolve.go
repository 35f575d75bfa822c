package drive

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/osvc/osvc/pkg/drivesetting"
)

// Resolved is where a drive setting puts the runs' work folders.
type Resolved struct {
	// Dir is the folder runs work under: <Dir>/OfflineImageServicing/<run>.
	Dir string
	// Fallback, when not nil, says why the setting (a drive or a folder)
	// could not be used on this server; Dir is then what Automatic means.
	Fallback error
}

// System is what resolving a setting asks of the server. Local(dataDir)
// is this server's; tests give their own.
type System struct {
	// DriveLetters tells that a setting such as D: names a volume (Windows).
	DriveLetters bool
	// Automatic returns the folder Automatic means.
	Automatic func() (string, error)
	// Folder returns the absolute path of the folder at path, or why there
	// is none: nothing there, or a file.
	Folder func(path string) (string, error)
}

// Resolve turns a drive setting into the folder runs work under. The setting
// is Automatic (any case, or empty), a drive (D: or D:\, any case: the
// drive's root, never the current folder on D:), or a folder. A drive or a
// folder this server lacks means Automatic, with Fallback telling why: a site
// sets one drive for all its servers, and a server without it still services.
func Resolve(setting string, sys System) (Resolved, error) {
	s := strings.TrimSpace(setting)
	path := s
	what := "folder " + s
	if letter, rest, ok := drivesetting.DriveLetter(s); ok {
		if !sys.DriveLetters {
			return automatic(sys, fmt.Errorf("%s names a Windows drive, and this server has no drive letters", s))
		}
		// D:work is a folder on D:'s current folder, which a service does
		// not choose: it means D:\work, as D: means D:\.
		path = letter + `:\` + strings.ReplaceAll(strings.TrimLeft(rest, `\/`), "/", `\`)
		what = "folder " + path
		if path == letter+`:\` {
			what = "drive " + letter + ":"
		}
	}
	if drivesetting.IsAutomatic(s) {
		return automatic(sys, nil)
	}
	dir, err := sys.Folder(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return automatic(sys, fmt.Errorf("%s does not exist on this server", what))
	case errors.Is(err, ErrNotAFolder):
		return automatic(sys, fmt.Errorf("%s %w", what, ErrNotAFolder))
	case err != nil:
		return automatic(sys, fmt.Errorf("%s cannot be used: %w", what, err))
	}
	return Resolved{Dir: dir}, nil
}

// ErrNotAFolder is System.Folder's error for a path that is a file.
var ErrNotAFolder = errors.New("is a file, not a folder")

// automatic resolves to what Automatic means, for the reason given.
func automatic(sys System, fallback error) (Resolved, error) {
	dir, err := sys.Automatic()
	if err != nil {
		return Resolved{}, fmt.Errorf("resolve the Automatic drive: %w", err)
	}
	return Resolved{Dir: dir, Fallback: fallback}, nil
}

// folder is System.Folder on every platform: os.Stat tells what is there.
func folder(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s %w", path, ErrNotAFolder)
	}
	return filepath.Abs(path)
}
