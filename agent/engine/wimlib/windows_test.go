package wimlib

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/osvc/osvc/agent/engine"
	"github.com/osvc/osvc/pkg/updatepkg/updatepkgtest"
)

// Update files shaped as Microsoft ships them (updatepkgtest's windows.go
// says where their structure comes from): the engine reads them, and
// reports them UNSUPPORTED with why, never APPLIED, leaving the image as
// it was.
func TestAPackageWindowsBuiltIsUnsupportedWithWhyAndNeverApplied(t *testing.T) {
	t.Parallel()
	e, logs := newEngine(t)
	m := mount(t, e, copyWIM(t))
	t.Cleanup(func() { _ = e.Unmount(context.Background(), m, false) })

	// A cumulative update for the sample image's build and architecture
	// (22631, x64), as Windows ships one: nested packages, catalogs,
	// DCM-compressed manifests.
	lcu := updatepkgtest.WindowsPackage{
		KB: "KB5099500", Name: "Package_for_RollupFix", Version: "22631.4317.1.10", Arch: "amd64",
		ReleaseType: "Security Update", BuildCompare: "EQ", ParentVersion: "10.0.22631.1",
		Nested: 2, Catalogs: true, DCM: true,
	}
	// Each mark alone, on a package of components of its own.
	bare := lcu.Edited(func(p *updatepkgtest.WindowsPackage) {
		p.KB, p.Name, p.Nested, p.Catalogs, p.DCM = "KB5099501", "Package_for_KB5099501", 0, false, false
		p.Components = []string{"Microsoft-Windows-Osvc-Test"}
	})
	// Windows 11, version 24H2 MSUs: the payload in a PSF beside the
	// cabinet; the update inside a WIM; the MSU itself a WIM archive.
	psf := lcu.Edited(func(p *updatepkgtest.WindowsPackage) { p.PSF = true })
	psfMSU := updatepkgtest.WindowsMSUFile(t, updatepkgtest.WindowsMSU{Packages: []updatepkgtest.WindowsPackage{psf}, Main: psf, Deployment: true,
		Extra: []updatepkgtest.Member{{Name: psf.FileName(".psf"), Data: []byte("PSTREAM test payload")}}})
	wimMSU := updatepkgtest.WindowsMSUFile(t, updatepkgtest.WindowsMSU{Main: lcu, Deployment: true,
		Extra: []updatepkgtest.Member{{Name: lcu.FileName(".wim"), Data: []byte("MSWIM\x00\x00\x00 test")}, {Name: lcu.FileName(".psf"), Data: []byte("PSTREAM")}}})

	for _, tc := range []struct {
		name, file string
		data       []byte
		want       []string
	}{
		{"a cumulative update as Windows ships it", "windows11.0-kb5099500-x64.cab", updatepkgtest.WindowsCab(t, lcu),
			[]string{"the wimlib engine does not install it", "installs packages of its own (2: ", "DCM delta format", "Windows' catalogs"}},
		{"a package installing packages of its own", "kb5099501-nested.cab", updatepkgtest.WindowsCab(t, bare.Edited(func(p *updatepkgtest.WindowsPackage) { p.Nested = 1 })),
			[]string{"installs packages of its own (1: Package_1_for_KB5099501)"}},
		{"a package with DCM-compressed manifests", "kb5099501-dcm.cab", updatepkgtest.WindowsCab(t, bare.Edited(func(p *updatepkgtest.WindowsPackage) { p.DCM = true })),
			[]string{"DCM delta format"}},
		{"a package holding a cabinet", "kb5099501-cab.cab",
			updatepkgtest.WindowsCab(t, bare, updatepkgtest.Member{Name: "Cab_1_for_KB5099501.cab", Data: updatepkgtest.Cabinet(t, updatepkgtest.Member{Name: "a.txt", Data: []byte("a")})}),
			[]string{"it holds cabinets (Cab_1_for_KB5099501.cab)"}},
		{"an MSU with its payload in a PSF", "windows11.0-kb5099500-x64.msu", psfMSU,
			[]string{"PackageFormat PSFX", "its payload is in Windows11.0-KB5099500-x64.psf"}},
		{"an MSU carrying its update in a WIM", "windows11.0-kb5099502-x64.msu", wimMSU,
			[]string{"Windows11.0-KB5099500-x64.wim, a WIM osvc does not read"}},
		{"an MSU that is a WIM archive", "windows11.0-kb5099503-x64.msu", append([]byte("MSWIM\x00\x00\x00"), make([]byte, 200)...),
			[]string{"a WIM archive"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, tc.file)
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			image, around := tree(t, m.Dir), tree(t, filepath.Dir(m.Dir))
			got, err := e.AddPackage(context.Background(), m, path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got.Outcome != engine.Unsupported || !strings.HasPrefix(got.Detail, engine.UnsupportedMessage+": ") {
				t.Errorf("AddPackage = %s %q, want Unsupported, its detail starting %q", got.Outcome, got.Detail, engine.UnsupportedMessage)
			}
			for _, w := range tc.want {
				if !strings.Contains(got.Detail, w) {
					t.Errorf("detail %q does not say %q", got.Detail, w)
				}
			}
			if after := tree(t, m.Dir); after != image {
				t.Errorf("the image changed:\nbefore\n%safter\n%s", image, after)
			}
			if after := tree(t, filepath.Dir(m.Dir)); after != around {
				t.Errorf("the work folder changed (a staging folder left?):\nbefore\n%safter\n%s", around, after)
			}
		})
	}
	if installed, err := e.InstalledPackages(context.Background(), m); err != nil || len(installed) != 0 {
		t.Errorf("InstalledPackages = %v, %v; want none", installed, err)
	}
	if !strings.Contains(logs.String(), engine.UnsupportedMessage+": file=") || !strings.Contains(logs.String(), "reason=") {
		t.Errorf("the log does not say why the packages were not applied:\n%s", logs.String())
	}

	t.Run("one for another build is not applicable, as it says", func(t *testing.T) {
		win10 := updatepkgtest.KB5005565()
		path := filepath.Join(t.TempDir(), win10.FileName(".cab"))
		if err := os.WriteFile(path, updatepkgtest.WindowsCab(t, win10), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := e.AddPackage(context.Background(), m, path, nil)
		if err != nil || got.Outcome != engine.NotApplicable || !strings.Contains(got.Detail, "applies to OS builds 19041; index 1 is build 22631") {
			t.Errorf("AddPackage = %s %q, %v; want NotApplicable for its build", got.Outcome, got.Detail, err)
		}
	})
}
