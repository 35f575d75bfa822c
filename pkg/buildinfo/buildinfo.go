// Package buildinfo tells which build of osvc is running: the module
// version and the VCS revision the Go toolchain stamped into the binary.
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Info is what the toolchain recorded about a build.
type Info struct {
	// Version is the main module's version: a release tag, a
	// pseudo-version of the commit built ("+dirty" when the tree had
	// changes), or "(devel)" when the toolchain knew none.
	Version string
	// Revision is the VCS commit, Time its time (RFC 3339); empty when the
	// binary was built outside a checkout.
	Revision, Time string
	// Modified tells the checkout had uncommitted changes.
	Modified bool
	// GoVersion is the toolchain's version.
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "(unknown)"}
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// Short is the version with the revision's first 12 digits, as agents
// report it and lists show it: "v1.2.0", "v0.0.0-…-abcdef123456+dirty",
// "(devel) abcdef123456".
func (i Info) Short() string {
	if i.Revision == "" || strings.Contains(i.Version, shortRev(i.Revision)) {
		return i.Version
	}
	s := i.Version + " " + shortRev(i.Revision)
	if i.Modified {
		s += "+dirty"
	}
	return s
}

// String is the whole line --version prints, e.g. "osvc-server v1.2.0
// (revision abcdef…, 2026-12-01T10:00:00Z, go1.26.0)".
func (i Info) String() string {
	var parts []string
	if i.Revision != "" {
		rev := "revision " + i.Revision
		if i.Modified {
			rev += " with uncommitted changes"
		}
		parts = append(parts, rev)
	}
	if i.Time != "" {
		parts = append(parts, i.Time)
	}
	parts = append(parts, i.GoVersion)
	return fmt.Sprintf("%s (%s)", i.Version, strings.Join(parts, ", "))
}

func shortRev(r string) string { return r[:min(len(r), 12)] }
