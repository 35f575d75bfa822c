package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestTheVersionNamesTheReleaseOrTheRevision(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	for _, c := range []struct {
		name        string
		bi          debug.BuildInfo
		short, full string
	}{
		{"a release", debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.0"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: "2026-12-01T10:00:00Z"}}},
			"v1.2.0 0123456789ab", "v1.2.0 (revision " + rev + ", 2026-12-01T10:00:00Z, go1.26.0)"},
		{"a pseudo-version naming the commit", debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.0.0-20261201100000-0123456789ab+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"}}},
			"v0.0.0-20261201100000-0123456789ab+dirty", "v0.0.0-20261201100000-0123456789ab+dirty (revision " + rev + " with uncommitted changes, go1.26.0)"},
		{"a build outside a checkout", debug.BuildInfo{GoVersion: "go1.26.0"}, "(devel)", "(devel) (go1.26.0)"},
		{"a devel build of a dirty checkout", debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"}}},
			"(devel) 0123456789ab+dirty", "(devel) (revision " + rev + " with uncommitted changes, go1.26.0)"},
	} {
		info := fromBuildInfo(&c.bi)
		if got := info.Short(); got != c.short {
			t.Errorf("%s: Short = %q, want %q", c.name, got, c.short)
		}
		if got := info.String(); got != c.full {
			t.Errorf("%s: String = %q, want %q", c.name, got, c.full)
		}
	}
}

func TestReadReadsThisBinary(t *testing.T) {
	if info := Read(); info.GoVersion == "" || !strings.HasPrefix(info.GoVersion, "go") {
		t.Errorf("Read = %+v, want the toolchain's version at least", info)
	}
}
