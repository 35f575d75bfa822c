package updatepkg_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/osvc/osvc/pkg/cab"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/updatepkg"
	"github.com/osvc/osvc/pkg/updatepkg/updatepkgtest"
)

// The files here are shaped as Microsoft ships them; updatepkgtest's
// windows.go says where each part of their structure comes from.

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func containsAll(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	all := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("%s %q do not say %q", what, got, w)
		}
	}
}

func TestOpenReadsAWindowsCumulativeUpdateCabinet(t *testing.T) {
	t.Parallel()
	lcu := updatepkgtest.KB5005565()
	path := writeTemp(t, lcu.FileName(".cab"), updatepkgtest.WindowsCab(t, lcu))
	p, err := updatepkg.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m := p.Manifest
	id := updatepkg.Identity{Name: "Package_for_RollupFix", PublicKeyToken: updatepkgtest.Token, Arch: "amd64", Language: "neutral", Version: "19041.1237.1.4"}
	if m.Identity != id || p.KB() != "KB5005565" || m.ReleaseType != "Security Update" ||
		m.Classification != osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE || m.Architecture() != osvcv1.Architecture_ARCHITECTURE_X64 ||
		!slices.Equal(m.ApplicableBuilds, []uint32{19041}) || m.MinBuild != 0 {
		t.Errorf("manifest %+v, KB %s; want %s, KB5005565, a security update classified cumulative, x64, for build 19041", m, p.KB(), id)
	}
	wantNested := []string{"Package_1_for_KB5005565", "Package_2_for_KB5005565"}
	var nested []string
	for _, n := range m.Packages {
		nested = append(nested, n.Name)
	}
	if !slices.Equal(nested, wantNested) || len(m.Components) != 0 {
		t.Errorf("packages %v, components %v; want %v and no component", nested, m.Components, wantNested)
	}
	// Without an MSU's properties file, the title is update.mum's description.
	if p.Title() != "Fix for KB5005565" {
		t.Errorf("Title() = %q, want update.mum's description", p.Title())
	}
	containsAll(t, "NotInstallable", p.NotInstallable,
		"Windows' catalogs (update.cat and 2 more)", "installs packages of its own (2: Package_1_for_KB5005565, Package_2_for_KB5005565)",
		"DCM delta format (2 of them)")
	stage := filepath.Join(t.TempDir(), "stage")
	if _, err := p.Stage(stage); !errors.Is(err, updatepkg.ErrUnsupported) || !strings.Contains(err.Error(), "osvc does not install it") {
		t.Errorf("Stage = %v, want ErrUnsupported saying osvc does not install it", err)
	}
	if _, err := os.Stat(stage); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Stage wrote %s (%v)", stage, err)
	}
}

// Each mark of a package Windows built, alone, is a reason the wimlib
// engine does not install it.
func TestOpenTellsWhyTheEngineDoesNotInstallAPackageWindowsBuilt(t *testing.T) {
	t.Parallel()
	// A package with components of its own, nothing more: it is read
	// (its manifests plain) but the components' manifests are not where
	// osvc's shape puts them.
	bare := updatepkgtest.WindowsPackage{
		KB: "KB5099100", Name: "Package_for_KB5099100", Version: "19041.1237.1.4", Arch: "amd64",
		ReleaseType: "Update", BuildCompare: "EQ", ParentVersion: "10.0.19041.1",
		Components: []string{"Microsoft-Windows-Osvc-Test"},
	}
	with := func(edit func(p *updatepkgtest.WindowsPackage)) []byte {
		return updatepkgtest.WindowsCab(t, bare.Edited(edit))
	}
	withMember := func(name string, data []byte) []byte {
		return updatepkgtest.WindowsCab(t, bare, updatepkgtest.Member{Name: name, Data: data})
	}
	withMum := func(old, new string) []byte {
		ms := bare.Members()
		ms[0].Data = []byte(strings.Replace(string(ms[0].Data), old, new, 1))
		return updatepkgtest.Cabinet(t, ms...)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"signed with Windows' catalogs", with(func(p *updatepkgtest.WindowsPackage) { p.Catalogs = true }), "signed with Windows' catalogs (update.cat)"},
		{"installing packages of its own", with(func(p *updatepkgtest.WindowsPackage) { p.Nested = 1 }), "installs packages of its own (1: Package_1_for_KB5099100)"},
		{"with DCM-compressed manifests", with(func(p *updatepkgtest.WindowsPackage) { p.DCM = true }), "DCM delta format (1 of them)"},
		{"with its payload in a PSF file (PSFX)", with(func(p *updatepkgtest.WindowsPackage) { p.PSF = true }), "PackageFormat PSFX"},
		{"with its payload in a PSF file (psf.cix.xml)", withMember("Windows10.0-KB5099100-x64.psf.cix.xml", []byte("<Container/>")), "Windows10.0-KB5099100-x64.psf.cix.xml"},
		{"with its payload in a PSF file (psfName)", withMum(`restart="required"`, `restart="required" psfName="Windows10.0-KB5099100-x64.psf"`), "psfName Windows10.0-KB5099100-x64.psf"},
		{"holding a cabinet", withMember("Cab_1_for_KB5099100.cab", updatepkgtest.Cabinet(t, updatepkgtest.Member{Name: "a.txt", Data: []byte("a")})), "it holds cabinets (Cab_1_for_KB5099100.cab)"},
		{"installing a driver", withMum(`<update name="Microsoft-Windows-Osvc-Test">`, `<update name="netdriver"><driver/></update><update name="Microsoft-Windows-Osvc-Test">`), "install no component (drivers or applicability rules, 1: netdriver)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := updatepkg.Open(writeTemp(t, "windows10.0-kb5099100-x64.cab", tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if len(p.NotInstallable) != 1 || !strings.Contains(p.NotInstallable[0], tc.want) {
				t.Errorf("NotInstallable = %q, want one reason saying %q", p.NotInstallable, tc.want)
			}
			if p.KB() != "KB5099100" || p.Manifest.Identity.Name != "Package_for_KB5099100" {
				t.Errorf("KB %s, identity %s: the package was not read", p.KB(), p.Manifest.Identity)
			}
			if _, err := p.Stage(t.TempDir()); !errors.Is(err, updatepkg.ErrUnsupported) {
				t.Errorf("Stage = %v, want ErrUnsupported", err)
			}
		})
	}
	// Without any of them, it is osvc's shape, and the manifests it lacks
	// make it invalid.
	if _, err := updatepkg.Open(writeTemp(t, "windows10.0-kb5099100-x64.cab", updatepkgtest.WindowsCab(t, bare))); !errors.Is(err, updatepkg.ErrInvalid) || !strings.Contains(err.Error(), "lacks the manifest of component") {
		t.Errorf("Open of a package with none of them = %v, want ErrInvalid for its missing manifests", err)
	}
}

func TestOpenReadsACombinedMSUAsMicrosoftShipsIt(t *testing.T) {
	t.Parallel()
	lcu, ssu := updatepkgtest.KB5005565(), updatepkgtest.ServicingStack19041()
	all := updatepkgtest.WindowsMSU{Packages: []updatepkgtest.WindowsPackage{ssu, lcu}, Main: lcu, Properties: true, Unattend: true, WindowsUpdate: true}
	for _, tc := range []struct {
		name string
		msu  updatepkgtest.WindowsMSU
	}{
		{"with its properties file and unattend file", all},
		{"named by its unattend file alone", func() updatepkgtest.WindowsMSU { m := all; m.Properties = false; return m }()},
		{"without metadata: its package is the last that is no servicing stack", updatepkgtest.WindowsMSU{Packages: []updatepkgtest.WindowsPackage{ssu, lcu}, Main: lcu}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The Microsoft Update Catalog names its downloads in lower case, with a hash.
			p, err := updatepkg.Open(writeTemp(t, "windows10.0-kb5005565-x64_2b4b6f3f1c7d8e9a.msu", updatepkgtest.WindowsMSUFile(t, tc.msu)))
			if err != nil {
				t.Fatal(err)
			}
			if !p.MSU || len(p.Manifests) != 2 || p.Manifests[0].Identity.Name != "Package_for_ServicingStack_1161" ||
				p.Manifests[0].Classification != osvcv1.Classification_CLASSIFICATION_SERVICING_STACK {
				t.Errorf("packages %d, first %+v; want the servicing stack first, then the cumulative update", len(p.Manifests), p.Manifests[0])
			}
			if p.Manifest != p.Manifests[1] || p.KB() != "KB5005565" {
				t.Errorf("the MSU's package is %s (KB %s), want the cumulative update KB5005565", p.Manifest.Identity, p.KB())
			}
			containsAll(t, "NotInstallable", p.NotInstallable, "SSU-19041.1161-x64.cab: it is signed", "Windows10.0-KB5005565-x64.cab: update.mum installs packages of its own (2: ")
		})
	}
	t.Run("its properties give the title, product and KB", func(t *testing.T) {
		t.Parallel()
		p, err := updatepkg.Open(writeTemp(t, "windows10.0-kb5005565-x64.msu", updatepkgtest.WindowsMSUFile(t, all)))
		if err != nil {
			t.Fatal(err)
		}
		if p.Title() != "Security Update for Windows 10 (KB5005565)" || !slices.Equal(p.Products(), []string{"Windows 10"}) ||
			p.Properties["Installer Engine"] != "Component Based Servicing" || len(p.Properties) != 14 {
			t.Errorf("title %q, products %q, properties %q", p.Title(), p.Products(), p.Properties)
		}
	})
}

func TestOpenReadsAWindows11MSU(t *testing.T) {
	t.Parallel()
	// Windows 11, version 24H2: the update's payload in a PSF beside its
	// cabinet, deployment and metadata cabinets, no Windows Update
	// metadata (W10UI.cmd). The cumulative update applies to builds from
	// 26100 on (a checkpoint's revision is not modelled).
	lcu := updatepkgtest.WindowsPackage{
		KB: "KB5043080", Name: "Package_for_RollupFix", Version: "26100.1742.1.10", Arch: "amd64",
		ReleaseType: "Security Update", BuildCompare: "GE", ParentVersion: "10.0.26100.1",
		Nested: 1, Catalogs: true, DCM: true, PSF: true,
	}
	ssu := updatepkgtest.WindowsPackage{
		KB: "KB5043080", Name: "Package_for_ServicingStack_1738", Version: "26100.1738.1.1", Arch: "amd64",
		ReleaseType: "Update", BuildCompare: "EQ", ParentVersion: "10.0.26100.1",
		Components: []string{"Microsoft-Windows-ServicingStack"}, Catalogs: true,
	}
	psf := updatepkgtest.Member{Name: lcu.FileName(".psf"), Data: []byte("PSTREAM test payload")}
	data := updatepkgtest.WindowsMSUFile(t, updatepkgtest.WindowsMSU{Packages: []updatepkgtest.WindowsPackage{ssu, lcu}, Main: lcu, Deployment: true, Extra: []updatepkgtest.Member{psf}})
	p, err := updatepkg.Open(writeTemp(t, "windows11.0-kb5043080-x64_953449672073f8fb99badb4cc6d5d7849b9c83e8.msu", data))
	if err != nil {
		t.Fatal(err)
	}
	if p.Manifest.Identity.Version != "26100.1742.1.10" || p.KB() != "KB5043080" || p.Manifest.MinBuild != 26100 || len(p.Manifest.ApplicableBuilds) != 0 {
		t.Errorf("package %s, KB %s, builds %v from %d; want the cumulative update KB5043080 for builds from 26100 on",
			p.Manifest.Identity, p.KB(), p.Manifest.ApplicableBuilds, p.Manifest.MinBuild)
	}
	containsAll(t, "NotInstallable", p.NotInstallable, "PackageFormat PSFX", "Windows11.0-KB5043080-x64.psf.cix.xml", "its payload is in Windows11.0-KB5043080-x64.psf")
}

func TestOpenLeavesAnMSUItCannotReadToTheCatalogAndDISM(t *testing.T) {
	t.Parallel()
	lcu := updatepkgtest.KB5005565()
	ssu := updatepkgtest.ServicingStack19041()
	// The update as a WIM beside the servicing stack's cabinet.
	wimInside := updatepkgtest.WindowsMSUFile(t, updatepkgtest.WindowsMSU{Packages: []updatepkgtest.WindowsPackage{ssu}, Main: lcu, Deployment: true,
		Extra: []updatepkgtest.Member{{Name: "Windows11.0-KB5043080-x64.wim", Data: []byte("MSWIM\x00\x00\x00 test")}, {Name: "Windows11.0-KB5043080-x64.psf", Data: []byte("PSTREAM")}}})
	// The MSU itself a WIM archive: its header is all that matters here.
	wimFile := append([]byte("MSWIM\x00\x00\x00"), make([]byte, 200)...)
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"an MSU carrying its update in a WIM", wimInside, "inside Windows11.0-KB5043080-x64.wim, a WIM osvc does not read"},
		{"an MSU that is a WIM archive", wimFile, "a WIM archive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := updatepkg.Open(writeTemp(t, "windows11.0-kb5043080-x64.msu", tc.data))
			if !errors.Is(err, updatepkg.ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open = %v, want ErrUnsupported saying %q", err, tc.want)
			}
		})
	}
}

func TestKBComesFromTheIdentifierThenThePropertiesThenTheName(t *testing.T) {
	t.Parallel()
	// A feature package is identified by name, not by a KB.
	feature := updatepkgtest.KB5005565()
	feature.Nested = 0
	feature.Components = []string{"Microsoft-Windows-Osvc-Test"}
	mum := strings.Replace(string(feature.Mum()), `identifier="KB5005565"`, `identifier="Microsoft-Windows-Osvc-Feature"`, 1)
	members := feature.Members()
	members[0].Data = []byte(mum)
	cab := updatepkgtest.Cabinet(t, members...)
	props := []byte(strings.Replace(string(updatepkgtest.PropertiesFile(feature)), `KB Article Number="5005565"`, `KB Article Number="KB5099200"`, 1))
	msu := updatepkgtest.Cabinet(t, updatepkgtest.Member{Name: feature.FileName(".cab"), Data: cab},
		updatepkgtest.Member{Name: feature.FileName("-pkgProperties.txt"), Data: props})
	for _, tc := range []struct {
		name, file string
		data       []byte
		want       string
	}{
		{"the properties' KB Article Number", "feature.msu", msu, "KB5099200"},
		{"the file name's KB", "windows10.0-kb5099300-x64.cab", cab, "KB5099300"},
		{"none", "feature.cab", cab, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := updatepkg.Open(writeTemp(t, tc.file, tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if p.KB() != tc.want {
				t.Errorf("KB() = %q, want %q", p.KB(), tc.want)
			}
		})
	}
}

func TestPropertiesFilesInUTF16AreRead(t *testing.T) {
	t.Parallel()
	lcu := updatepkgtest.KB5005565()
	text := string(updatepkgtest.PropertiesFile(lcu))
	utf16le := []byte{0xFF, 0xFE}
	for _, r := range text {
		utf16le = append(utf16le, byte(r), 0)
	}
	data := updatepkgtest.Cabinet(t,
		updatepkgtest.Member{Name: lcu.FileName(".cab"), Data: updatepkgtest.WindowsCab(t, lcu)},
		updatepkgtest.Member{Name: lcu.FileName("-pkgProperties.txt"), Data: utf16le})
	p, err := updatepkg.Open(writeTemp(t, "windows10.0-kb5005565-x64.msu", data))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"KB Article Number": "5005565", "Product Name": "Windows 10"}; p.Properties["KB Article Number"] != want["KB Article Number"] ||
		p.Properties["Product Name"] != want["Product Name"] {
		t.Errorf("properties %q, want %q among them", p.Properties, want)
	}
}

func TestParentsGiveTheBuilds(t *testing.T) {
	t.Parallel()
	parent := func(compare, version string) string {
		return `<parent buildCompare="` + compare + `" revisionCompare="GE" integrate="separate" disposition="detect"><assemblyIdentity name="Microsoft-Windows-Foundation-Package" version="` +
			version + `" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35"/></parent>`
	}
	for _, tc := range []struct {
		name    string
		parents string
		builds  []uint32
		min     uint32
	}{
		{"EQ is that build", parent("EQ", "10.0.19041.1"), []uint32{19041}, 0},
		{"no buildCompare is EQ", strings.Replace(parent("EQ", "10.0.19041.1"), `buildCompare="EQ" `, "", 1), []uint32{19041}, 0},
		{"GE is that build and later", parent("GE", "10.0.26100.1"), nil, 26100},
		{"several EQ are each", parent("EQ", "10.0.22621.1") + parent("EQ", "10.0.22631.1"), []uint32{22621, 22631}, 0},
		{"EQ builds after a GE one are covered by it", parent("EQ", "10.0.19041.1") + parent("GE", "10.0.20348.1") + parent("EQ", "10.0.22000.1"), []uint32{19041}, 20348},
		{"of several GE the lowest counts", parent("GE", "10.0.22000.1") + parent("GE", "10.0.19041.1"), nil, 19041},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			doc := `<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0">
<assemblyIdentity name="Package_for_KB1" version="1.0.0.0" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35"/>
<package identifier="KB1" releaseType="Update">` + tc.parents + `</package></assembly>`
			m, err := updatepkg.ParseManifest([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(m.ApplicableBuilds, tc.builds) || m.MinBuild != tc.min {
				t.Errorf("builds %v from %d, want %v from %d", m.ApplicableBuilds, m.MinBuild, tc.builds, tc.min)
			}
		})
	}
}

// A component manifest where osvc's shape puts it, but compressed as
// Windows compresses them: the package is one Windows built, not a damaged one.
func TestOpenDCMComponentManifestMakesAPackageOneWindowsBuilt(t *testing.T) {
	t.Parallel()
	r, err := cabReader(updatepkgtest.Package(t, "KB5099400", "amd64"))
	if err != nil {
		t.Fatal(err)
	}
	var members []updatepkgtest.Member
	for _, m := range r {
		if strings.HasSuffix(m.Name, ".manifest") {
			m.Data = []byte("DCM\x01PA30 not a real delta")
		}
		members = append(members, m)
	}
	p, err := updatepkg.Open(writeTemp(t, "windows11.0-kb5099400-x64.cab", updatepkgtest.Cabinet(t, members...)))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.NotInstallable) != 1 || !strings.Contains(p.NotInstallable[0], "DCM delta format (1 of them)") {
		t.Errorf("NotInstallable = %q, want the DCM-compressed manifest", p.NotInstallable)
	}
}

// cabReader reads every member of a cabinet.
func cabReader(data []byte) ([]updatepkgtest.Member, error) {
	r, err := cab.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, err
	}
	var out []updatepkgtest.Member
	err = r.ForEach(nil, func(f cab.File, content io.Reader) error {
		data, err := io.ReadAll(content)
		out = append(out, updatepkgtest.Member{Name: f.Name, Data: data})
		return err
	})
	return out, err
}
