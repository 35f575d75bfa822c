// Package engine defines what a servicing engine does to a WIM image: the
// DISM operations the pipeline needs, whatever tool carries them out.
package engine

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/pkg/wiminfo"
)

// Outcome is what applying one update package to one mounted index did.
type Outcome int

const (
	// Applied: the package is now installed in the index.
	Applied Outcome = iota + 1
	// AlreadyInstalled: the index already had this package identity.
	AlreadyInstalled
	// NotApplicable: the package's architecture or OS builds do not match the index.
	NotApplicable
	// Unsupported: the engine cannot apply this file faithfully: a type it
	// does not apply (an .exe), or a package it cannot install as Windows
	// would (for the wimlib engine, one Windows built). Detail says why.
	Unsupported
)

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "Applied"
	case AlreadyInstalled:
		return "AlreadyInstalled"
	case NotApplicable:
		return "NotApplicable"
	case Unsupported:
		return "Unsupported"
	}
	return "Unknown"
}

// UnsupportedMessage is logged for a file type an engine cannot apply; it is
// the line administrators know from Configuration Manager's logs.
const UnsupportedMessage = "Not applying this update binary, it is not supported"

// ErrMountBusy is returned when the mount folder is already in use.
var ErrMountBusy = errors.New("mount folder is in use")

// ErrDamaged is wrapped by Verify's error for a WIM file whose data is damaged.
var ErrDamaged = errors.New("the WIM file is damaged")

// Index describes one index of a WIM file as its XML info tells: name,
// edition, architecture, build, languages and size.
type Index = wiminfo.Image

// Mount is one index of a WIM mounted read-write in a folder.
type Mount struct {
	WIM   string
	Index int
	Dir   string
	// Info is the index as the WIM describes it; applicability is checked against it.
	Info *Index
}

// Installed is a package installed in a mounted index.
type Installed struct {
	Identity    string
	KB          string
	State       string
	InstallTime time.Time
}

// ProgressFunc receives the percent done of the operation under way, 0 to 100.
type ProgressFunc func(percent int)

// BytesFunc receives how many bytes of total the operation under way has
// written; total is 0 while not known.
type BytesFunc func(done, total int64)

// PackageResult is what applying one update file to a mounted index did.
type PackageResult struct {
	Outcome Outcome
	// Detail says why, when the file was not applied: the engine's reason,
	// or the servicing tool's code and own message, e.g.
	// "0x800f081e: The specified package is not applicable to this image."
	Detail string
}

// MountPoint is an image mounted in a folder, as the engine finds it.
type MountPoint struct {
	Dir string
	// Foreign marks a mount point in the folder that is not an image this
	// engine mounted (another file system): never delete into it.
	Foreign bool
	// Detail describes it for logs: a file system type, a mount status.
	Detail string
}

// Engine carries out servicing operations on WIM files. Every method logs what
// it runs through the engine's logger, and honours ctx: a canceled operation
// leaves the source file as it was.
type Engine interface {
	// Name is the engine's name as agents announce it: "wimlib" or "dism".
	Name() string
	// Inspect reads the indexes of a WIM file.
	Inspect(ctx context.Context, wim string) ([]Index, error)
	// Verify checks the integrity of a WIM file: every resource its images
	// use is present and hashes to what the file records. A damaged file is
	// an error wrapping ErrDamaged that says what is wrong.
	Verify(ctx context.Context, wim string) error
	// Mount mounts one index read-write in dir, which must exist and be empty.
	Mount(ctx context.Context, wim string, index int, dir string) (*Mount, error)
	// AddPackage applies one update file to the mounted index. A file the
	// engine cannot apply returns Unsupported and a nil error; a package
	// that does not apply NotApplicable with why. An error is a failure to
	// apply it, its message the tool's code and words.
	AddPackage(ctx context.Context, m *Mount, path string, progress ProgressFunc) (PackageResult, error)
	// InstalledPackages lists the packages installed in the mounted index.
	InstalledPackages(ctx context.Context, m *Mount) ([]Installed, error)
	// Cleanup removes superseded components (DISM's /Cleanup-Image
	// /StartComponentCleanup /ResetBase).
	Cleanup(ctx context.Context, m *Mount) error
	// Unmount unmounts the index, committing the changes into the WIM when
	// commit is true and discarding them otherwise. Discarding must work for
	// a Mount that has only Dir set: the agent uses it to clear the mounts a
	// crashed run left behind, whose WIM and index it no longer knows.
	Unmount(ctx context.Context, m *Mount, commit bool) error
	// Export copies one index of src into dst (appending when dst exists),
	// dropping data no longer referenced. progress, when not nil, is told
	// the bytes written as the tool reports them.
	Export(ctx context.Context, src string, index int, dst string, progress BytesFunc) error
	// ReadInstalled lists the packages installed in one index of a WIM file
	// without mounting it read-write.
	ReadInstalled(ctx context.Context, wim string, index int) ([]Installed, error)
	// Mounts lists the mount points at or below dir, deepest first: images
	// this engine (or a crashed run of it) mounted there, and any other
	// mount point there, marked Foreign.
	Mounts(ctx context.Context, dir string) ([]MountPoint, error)
	// Recover releases what a crashed agent left in the engine's own
	// records (DISM's /Cleanup-Mountpoints), before the agent takes runs.
	Recover(ctx context.Context) error
}

// RunEngine makes the engine of one run: its output goes to the run's
// logger, and work is the run's work folder, where the engine keeps its own
// log (dism.log) and scratch space.
type RunEngine func(logger hclog.Logger, work string) (Engine, error)
