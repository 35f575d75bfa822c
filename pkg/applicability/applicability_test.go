package applicability_test

import (
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/applicability"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	x64 := osvcv1.Architecture_ARCHITECTURE_X64
	arm := osvcv1.Architecture_ARCHITECTURE_ARM64
	const lcu = "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4317.1.10"
	const older = "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4169.1.7"
	installedLCU := []applicability.Installed{{Identity: lcu, KB: "KB5044285", Supersedes: []string{older, "kb5043076"}}}
	for _, tc := range []struct {
		name  string
		pkg   applicability.Package
		index *applicability.Index
		want  applicability.Verdict
		why   string
	}{
		{"same architecture and a listed build", applicability.Package{Name: "P", Arch: x64, Builds: []uint32{22621, 22631}},
			applicability.NewIndex(1, x64, 22631, nil), applicability.Applies, ""},
		{"a neutral package on arm64 with no build list", applicability.Package{Name: "P", Arch: osvcv1.Architecture_ARCHITECTURE_NEUTRAL},
			applicability.NewIndex(1, arm, 26100, nil), applicability.Applies, ""},
		{"a file that is no package is left to the engine", applicability.Package{Name: "setup.exe"},
			applicability.NewIndex(1, arm, 26100, installedLCU), applicability.Applies, ""},
		{"another architecture", applicability.Package{Name: "P", Arch: x64},
			applicability.NewIndex(2, arm, 22631, nil), applicability.WrongArchitecture, "P is for x64; index 2 is arm64"},
		{"an arm64 package on an x64 index of the same build", applicability.Package{Name: "P", Arch: arm, Builds: []uint32{22631}},
			applicability.NewIndex(1, x64, 22631, nil), applicability.WrongArchitecture, "is for arm64; index 1 is x64"},
		{"an unlisted build", applicability.Package{Name: "P", Arch: x64, Builds: []uint32{22621, 22631}},
			applicability.NewIndex(1, x64, 19045, nil), applicability.WrongBuild, "applies to OS builds 22621, 22631; index 1 is build 19045"},
		{"a build from the minimum on", applicability.Package{Name: "P", Arch: x64, MinBuild: 26100},
			applicability.NewIndex(1, x64, 26200, nil), applicability.Applies, ""},
		{"the minimum build itself", applicability.Package{Name: "P", Arch: x64, MinBuild: 26100},
			applicability.NewIndex(1, x64, 26100, nil), applicability.Applies, ""},
		{"a build before the minimum", applicability.Package{Name: "P", Arch: x64, MinBuild: 26100},
			applicability.NewIndex(1, x64, 22631, nil), applicability.WrongBuild, "applies to OS builds 26100 and later; index 1 is build 22631"},
		{"a listed build before the minimum", applicability.Package{Name: "P", Arch: x64, Builds: []uint32{19041}, MinBuild: 26100},
			applicability.NewIndex(1, x64, 19041, nil), applicability.Applies, ""},
		{"an unlisted build before the minimum", applicability.Package{Name: "P", Arch: x64, Builds: []uint32{19041}, MinBuild: 26100},
			applicability.NewIndex(1, x64, 22631, nil), applicability.WrongBuild, "applies to OS builds 19041, 26100 and later; index 1 is build 22631"},
		{"an index of unknown architecture", applicability.Package{Name: "P", Arch: osvcv1.Architecture_ARCHITECTURE_X86},
			applicability.NewIndex(1, 0, 0, nil), applicability.WrongArchitecture, "is for x86; index 1 is an unknown architecture"},
		{"the installed package itself, in another case", applicability.Package{Identity: strings.ToLower(lcu), Arch: x64},
			applicability.NewIndex(1, x64, 22631, installedLCU), applicability.AlreadyInstalled, "already installed in index 1"},
		{"a package an installed one supersedes by identity", applicability.Package{Identity: older, Arch: x64},
			applicability.NewIndex(1, x64, 22631, installedLCU), applicability.Superseded, "superseded by installed package " + lcu + " in index 1"},
		{"a package an installed one supersedes by KB", applicability.Package{Identity: "Package_for_KB5043076~31bf3856ad364e35~amd64~~1.0.0.0", KB: "KB5043076", Arch: x64},
			applicability.NewIndex(1, x64, 22631, installedLCU), applicability.Superseded, "superseded"},
		{"an update recorded installed by its catalog name", applicability.Package{Name: "updates/kb890830-x64", Update: "updates/kb890830-x64", Arch: x64},
			applicability.NewIndex(1, x64, 22631, []applicability.Installed{{Update: "updates/kb890830-x64"}}), applicability.AlreadyInstalled, "already installed"},
		{"a newer package than the installed one", applicability.Package{Identity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~22631.4460.1.4", Arch: x64},
			applicability.NewIndex(1, x64, 22631, installedLCU), applicability.Applies, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, why := applicability.Check(tc.pkg, tc.index)
			if got != tc.want || !strings.Contains(why, tc.why) || (tc.want == applicability.Applies && why != "") {
				t.Errorf("Check = %s, %q; want %s, %q", got, why, tc.want, tc.why)
			}
		})
	}
}

func TestSupersedesMatchesIdentityOrKBInAnyCase(t *testing.T) {
	t.Parallel()
	list := []string{"Package_A~31bf3856ad364e35~amd64~~1.0.0.0", "KB5043076"}
	for _, tc := range []struct {
		identity, kb string
		want         bool
	}{
		{"package_a~31bf3856ad364e35~amd64~~1.0.0.0", "", true},
		{"Package_B~31bf3856ad364e35~amd64~~1.0.0.0", "kb5043076", true},
		{"Package_B~31bf3856ad364e35~amd64~~1.0.0.0", "KB5043077", false},
		{"", "", false},
	} {
		if got := applicability.Supersedes(list, tc.identity, tc.kb); got != tc.want {
			t.Errorf("Supersedes(%q, %q) = %t, want %t", tc.identity, tc.kb, got, tc.want)
		}
	}
}

func TestNormalizeKB(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"KB5031354": "KB5031354", " kb5031354 ": "KB5031354", "5031354": "", "KB": "", "KB50x": "", "Package~x": ""} {
		if got := applicability.NormalizeKB(in); got != want {
			t.Errorf("NormalizeKB(%q) = %q, want %q", in, got, want)
		}
	}
}
