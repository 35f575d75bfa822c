package updatepkg

import (
	"reflect"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

const token = "31bf3856ad364e35"

func kernel(version string) Component {
	return Component{Name: "Microsoft-Windows-Kernel", Version: version, Arch: "amd64", PublicKeyToken: token}
}

// sampleManifest is a cumulative update for 22621/22631 x64.
func sampleManifest() *Manifest {
	return &Manifest{
		Identity:         Identity{Name: "Package_for_RollupFix", PublicKeyToken: token, Arch: "amd64", Language: "neutral", Version: "22621.2715.1.8"},
		KB:               "KB5032190",
		Title:            "2023-11 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems (KB5032190)",
		ReleaseType:      "Security Update",
		Classification:   osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		Released:         time.Date(2023, 11, 14, 18, 0, 0, 0, time.UTC),
		Products:         []string{"Windows 11, version 23H2", "Windows 11, version 22H2"},
		ApplicableBuilds: []uint32{22621, 22631},
		Supersedes:       []string{"Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.2428.1.10"},
		Components: []Component{
			kernel("10.0.22621.2715"),
			{Name: "Microsoft-Windows-Shell32", Version: "10.0.22621.2715", Arch: "wow64", PublicKeyToken: token},
		},
	}
}

func TestManifestMarshalRoundTrips(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(m *Manifest)
	}{
		{"a cumulative update", func(*Manifest) {}},
		{"a neutral package for any build with nothing optional", func(m *Manifest) {
			m.Identity.Arch = "neutral"
			m.Title, m.Products, m.ApplicableBuilds, m.Supersedes, m.Components = "", nil, nil, nil, nil
			m.Released = time.Time{}
			m.Identity.Name = "Package_for_KB5031234"
			m.ReleaseType = "Update"
			m.Classification = osvcv1.Classification_CLASSIFICATION_UPDATE
		}},
		{"a package for one build and every build from another on", func(m *Manifest) {
			m.ApplicableBuilds, m.MinBuild = []uint32{19041}, 26100
		}},
		{"a servicing stack update for arm64", func(m *Manifest) {
			m.Identity.Name, m.Identity.Arch = "Package_for_ServicingStack_2500", "arm64"
			m.ReleaseType = "Servicing Stack Update"
			m.Classification = osvcv1.Classification_CLASSIFICATION_SERVICING_STACK
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := sampleManifest()
			tc.edit(m)
			data, err := m.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseManifest(data)
			if err != nil {
				t.Fatalf("ParseManifest: %v\n%s", err, data)
			}
			if m.Title == "" {
				m.Title = "Fix for " + m.KB // an untitled package reads back with its description
			}
			if !reflect.DeepEqual(got, m) {
				t.Errorf("round trip changed the manifest:\n got %+v\nwant %+v", got, m)
			}
		})
	}
}

func TestParseManifestReadsWindowsStyleManifests(t *testing.T) {
	t.Parallel()
	// Shaped like a real update.mum: BOM, extra attributes and elements osvc
	// does not use, a namespaced customInformation, displayName "default".
	doc := "\xEF\xBB\xBF" + `<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0" description="Fix for KB5031455" displayName="default" company="Microsoft Corporation" copyright="Microsoft Corporation" supportInformation="http://support.microsoft.com/?kbid=5031455" creationTimeStamp="2023-10-20T03:12:45Z" lastUpdateTimeStamp="2023-10-20T03:12:45Z">
  <assemblyIdentity name="Package_for_KB5031455" version="22621.2506.1.7" processorArchitecture="x86" language="neutral" buildType="release" publicKeyToken="31bf3856ad364e35" />
  <package identifier="KB5031455" releaseType="Update" restart="possible" targetPartition="MainOS" binaryPartition="false" permanence="removable" selfUpdate="false">
    <mum2:customInformation xmlns:mum2="urn:schemas-microsoft-com:asm.v3" PackageFormat="PSFX" />
    <parent buildCompare="EQ" revisionCompare="GE" integrate="separate" disposition="detect">
      <assemblyIdentity name="Microsoft-Windows-Foundation-Package" version="10.0.22621.1" processorArchitecture="x86" language="neutral" buildType="release" publicKeyToken="31bf3856ad364e35" />
    </parent>
    <update name="5031455-1_neutral_PACKAGE">
      <package integrate="hidden">
        <assemblyIdentity name="Package_1_for_KB5031455" version="22621.2506.1.7" processorArchitecture="x86" language="neutral" buildType="release" publicKeyToken="31bf3856ad364e35" />
      </package>
    </update>
    <update name="Microsoft-Windows-Kernel">
      <component>
        <assemblyIdentity name="Microsoft-Windows-Kernel" version="10.0.22621.2506" processorArchitecture="x86" language="neutral" buildType="release" publicKeyToken="31bf3856ad364e35" versionScope="nonSxS" />
      </component>
    </update>
  </package>
</assembly>`
	m, err := ParseManifest([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{
		Identity:         Identity{Name: "Package_for_KB5031455", PublicKeyToken: token, Arch: "x86", Language: "neutral", Version: "22621.2506.1.7"},
		KB:               "KB5031455",
		Title:            "Fix for KB5031455",
		ReleaseType:      "Update",
		Classification:   osvcv1.Classification_CLASSIFICATION_UPDATE,
		Released:         time.Date(2023, 10, 20, 3, 12, 45, 0, time.UTC),
		ApplicableBuilds: []uint32{22621},
		Components:       []Component{{Name: "Microsoft-Windows-Kernel", Version: "10.0.22621.2506", Arch: "x86", PublicKeyToken: token}},
		Packages:         []Identity{{Name: "Package_1_for_KB5031455", PublicKeyToken: token, Arch: "x86", Language: "neutral", Version: "22621.2506.1.7"}},
		PackageFormat:    "PSFX",
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("got  %+v\nwant %+v", m, want)
	}
}

func TestParseManifestExplainsWhatIsWrong(t *testing.T) {
	t.Parallel()
	good, err := sampleManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	edit := func(old, new string) string {
		if !strings.Contains(string(good), old) {
			t.Fatalf("sample manifest has no %q", old)
		}
		return strings.Replace(string(good), old, new, 1)
	}
	for _, tc := range []struct{ name, doc, want string }{
		{"not XML", "MZ\x90\x00", "not a package manifest"},
		{"another namespace", edit(Namespace, "urn:other"), "not a package manifest"},
		{"a UTF-16 declaration", strings.Replace(string(good), "utf-8", "utf-16", 1), "UTF-8"},
		{"no package identity", edit(`<assemblyIdentity name="Package_for_RollupFix"`, `<other name="x"`), "no <assemblyIdentity>"},
		{"a component manifest", `<assembly xmlns="urn:schemas-microsoft-com:asm.v3"><assemblyIdentity name="a" version="1.0.0.0" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35"/></assembly>`, "component manifest"},
		{"an unknown architecture", edit(`processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35" buildType="release"/>
  <package`, `processorArchitecture="ia64" language="neutral" publicKeyToken="31bf3856ad364e35" buildType="release"/>
  <package`), "processorArchitecture"},
		{"a three-part version", edit(`version="22621.2715.1.8"`, `version="22621.2715.1"`), "four numeric parts"},
		{"a bad token", edit(`publicKeyToken="31bf3856ad364e35" buildType="release"/>
  <package`, `publicKeyToken="xyz" buildType="release"/>
  <package`), "publicKeyToken"},
		{"a bad release date", edit(`creationTimeStamp="2023-11-14T18:00:00Z"`, `creationTimeStamp="14/11/2023"`), "RFC 3339"},
		{"a bad parent version", edit(`version="10.0.22621.0"`, `version="10.0"`), "<parent>"},
		{"a bad component", edit(`name="Microsoft-Windows-Kernel" version="10.0.22621.2715"`, `name="../evil" version="10.0.22621.2715"`), "component"},
		{"a bad superseded package", edit(`version="22621.2428.1.10"`, `version="x"`), "superseded"},
		{"a DCM-compressed update.mum", "DCM\x01PA30\x00\x01", "DCM delta format"},
		{"an empty document", "", "no root element"},
		{"only a declaration", `<?xml version="1.0" encoding="utf-8"?>`, "no root element"},
		{"two root elements", string(good) + `<assembly xmlns="urn:schemas-microsoft-com:asm.v3"/>`, "second root element"},
		{"a DOCTYPE after the root", string(good) + "<!DOCTYPE assembly>", "<!DOCTYPE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseManifest([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseManifest = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseComponentManifestRefusesADCMCompressedOne(t *testing.T) {
	t.Parallel()
	if _, err := ParseComponentManifest([]byte("DCM\x01PA30\x00\x01")); err == nil || !strings.Contains(err.Error(), "DCM delta format") {
		t.Errorf("ParseComponentManifest = %v, want it to say the manifest is DCM-compressed", err)
	}
}

func TestMarshalRefusesManifestsItCouldNotReadBack(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(m *Manifest)
		want string
	}{
		{"no KB", func(m *Manifest) { m.KB = "" }, "KB"},
		{"a classification the fields do not give", func(m *Manifest) {
			m.Classification = osvcv1.Classification_CLASSIFICATION_DOTNET
		}, "does not follow"},
		{"a superseded package that is not an identity", func(m *Manifest) { m.Supersedes = []string{"KB123"} }, "superseded"},
		{"a component listed twice", func(m *Manifest) { m.Components = append(m.Components, m.Components[0]) }, "twice"},
		{"a file escaping its folder", func(m *Manifest) { m.Components[0].Files = []string{"../x.dll"} }, `contains ".."`},
		{"a build that is not a build", func(m *Manifest) { m.ApplicableBuilds = []uint32{100000} }, "build"},
		{"an empty name", func(m *Manifest) { m.Identity.Name = "" }, "name"},
		{"a build MinBuild covers", func(m *Manifest) { m.MinBuild = 22621 }, "covered by MinBuild 22621"},
		{"nested packages", func(m *Manifest) { m.Packages = []Identity{m.Identity} }, "osvc reads but does not write"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := sampleManifest()
			tc.edit(m)
			if _, err := m.Marshal(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Marshal = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	C := func(c osvcv1.Classification) osvcv1.Classification { return c }
	for _, tc := range []struct {
		name     string
		pkg, rt  string
		title    string
		products []string
		want     osvcv1.Classification
	}{
		{"a servicing stack update", "Package_for_ServicingStack", "Servicing Stack Update", "", nil, C(osvcv1.Classification_CLASSIFICATION_SERVICING_STACK)},
		{"Windows' servicing stack package, whatever its release type", "Package_for_ServicingStack_1161", "Update", "", nil, C(osvcv1.Classification_CLASSIFICATION_SERVICING_STACK)},
		{"Windows' .NET rollup package, a security update", "Package_for_DotNetRollup_481", "Security Update", "", nil, C(osvcv1.Classification_CLASSIFICATION_DOTNET)},
		{"a rollup fix is cumulative even when it is a security update", "Package_for_RollupFix", "Security Update", "", nil, C(osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE)},
		{"a release type naming cumulative", "Package_for_KB1", "Cumulative Update", "", nil, C(osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE)},
		{".NET in a product", "Package_for_DotNetRollup", "Security Update", "", []string{"Microsoft .NET Framework 4.8.1"}, C(osvcv1.Classification_CLASSIFICATION_DOTNET)},
		{".NET in the title", "Package_for_KB2", "Update", "Cumulative Update for .NET Framework 3.5 and 4.8.1", nil, C(osvcv1.Classification_CLASSIFICATION_DOTNET)},
		{"a security update", "Package_for_KB3", "Security Update", "", nil, C(osvcv1.Classification_CLASSIFICATION_SECURITY_UPDATE)},
		{"an update", "Package_for_KB4", "Update", "", nil, C(osvcv1.Classification_CLASSIFICATION_UPDATE)},
		{"a hotfix is an update", "Package_for_KB5", "Hotfix", "", nil, C(osvcv1.Classification_CLASSIFICATION_UPDATE)},
		{"no release type", "Package_for_KB6", "", "", nil, C(osvcv1.Classification_CLASSIFICATION_UNSPECIFIED)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := &Manifest{Identity: Identity{Name: tc.pkg}, ReleaseType: tc.rt, Title: tc.title, Products: tc.products}
			if got := m.Classify(); got != tc.want {
				t.Errorf("Classify() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestIdentityStringAndParse(t *testing.T) {
	t.Parallel()
	id := Identity{Name: "Package_for_RollupFix", PublicKeyToken: token, Arch: "amd64", Language: "neutral", Version: "22621.2428.1.10"}
	const s = "Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.2428.1.10"
	if id.String() != s {
		t.Errorf("String() = %q, want %q", id.String(), s)
	}
	got, err := ParseIdentity(s)
	if err != nil || got != id {
		t.Errorf("ParseIdentity(%q) = %+v, %v; want %+v", s, got, err, id)
	}
	for _, id := range []Identity{
		{Name: "Package_LP", PublicKeyToken: token, Arch: "x86", Language: "de-DE", Version: "1.0.0.0"},
		{Name: "Microsoft-Windows-NetFx3-OnDemand-Package", PublicKeyToken: token, Arch: "wow64", Language: "neutral", Version: "10.0.22621.1"},
	} {
		if got, err := ParseIdentity(id.String()); err != nil || got != id {
			t.Errorf("ParseIdentity(%q) = %+v, %v", id.String(), got, err)
		}
	}
	for _, bad := range []string{"", "KB5032190", "a~b~c~d", "P~31bf3856ad364e35~ia64~~1.0.0.0", "P~short~amd64~~1.0.0.0",
		"P~31bf3856ad364e35~amd64~~1.0", "~31bf3856ad364e35~amd64~~1.0.0.0", "P~31bf3856ad364e35~amd64~~1.0.0.0~extra"} {
		if _, err := ParseIdentity(bad); err == nil {
			t.Errorf("ParseIdentity(%q) succeeded", bad)
		}
	}
}

func TestSxSNames(t *testing.T) {
	t.Parallel()
	c := Component{Name: "Microsoft-Windows-Kernel_Extra", Version: "10.0.22621.2715", Arch: "amd64", PublicKeyToken: token}
	name := c.SxSName()
	if !strings.HasPrefix(name, "amd64_microsoft-windows-kernel_extra_31bf3856ad364e35_10.0.22621.2715_none_") || len(name) != len("amd64_microsoft-windows-kernel_extra_31bf3856ad364e35_10.0.22621.2715_none_")+16 {
		t.Errorf("SxSName() = %q", name)
	}
	got, ok := ParseSxSName(name)
	want := Component{Name: "microsoft-windows-kernel_extra", Version: c.Version, Arch: c.Arch, PublicKeyToken: c.PublicKeyToken}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("ParseSxSName(%q) = %+v, %v; want %+v", name, got, ok, want)
	}
	if other := kernel("10.0.22621.2716").SxSName(); other[len(other)-16:] == kernel("10.0.22621.2715").SxSName()[len(other)-16:] {
		t.Error("two versions share a hash")
	}
	for _, bad := range []string{
		"", "amd64_x", name[:len(name)-1] + "0",
		strings.Replace(name, "_none_", "_en-us_", 1),
		"amd64_microsoft-windows-kernel_31bf3856ad364e35_10.0.22621.2715_none_8f1e7d7e3c1b6c2a",
		strings.ToUpper(name),
	} {
		if _, ok := ParseSxSName(bad); ok {
			t.Errorf("ParseSxSName(%q) accepted it", bad)
		}
	}
}

func TestArchitecture(t *testing.T) {
	t.Parallel()
	for arch, want := range map[string]osvcv1.Architecture{
		"amd64": osvcv1.Architecture_ARCHITECTURE_X64, "x86": osvcv1.Architecture_ARCHITECTURE_X86,
		"arm64": osvcv1.Architecture_ARCHITECTURE_ARM64, "neutral": osvcv1.Architecture_ARCHITECTURE_NEUTRAL,
		"ia64": osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED,
	} {
		if got := (&Manifest{Identity: Identity{Arch: arch}}).Architecture(); got != want {
			t.Errorf("Architecture() of %s = %v, want %v", arch, got, want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"10.0.22621.2715", "10.0.22621.2715", 0},
		{"10.0.22621.2428", "10.0.22621.2715", -1},
		{"10.0.22621.10", "10.0.22621.9", 1},
		{"10.0.22631.1", "10.0.22621.9999", 1},
		{"bad", "1.0.0.0", -1},
	} {
		if got := CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	good, err := sampleManifest().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`<assembly xmlns="urn:schemas-microsoft-com:asm.v3"><package/></assembly>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			return
		}
		// Whatever parses must be a valid identity that marshals and reads back.
		if _, err := ParseIdentity(m.Identity.String()); err != nil {
			t.Fatalf("parsed identity %q does not parse: %v", m.Identity, err)
		}
		for _, c := range m.Components {
			if _, ok := ParseSxSName(c.SxSName()); !ok {
				t.Fatalf("component %+v has an SxS name that does not parse", c)
			}
		}
		if m.KB != "" && len(m.ApplicableBuilds) == len(uniq(m.ApplicableBuilds)) {
			again, err := m.Marshal()
			if err != nil {
				return // e.g. a component listed twice: refused on writing only
			}
			m2, err := ParseManifest(again)
			if err != nil {
				t.Fatalf("re-marshaled manifest does not parse: %v\n%s", err, again)
			}
			if m2.Identity != m.Identity || len(m2.Components) != len(m.Components) {
				t.Fatalf("round trip changed the manifest: %+v vs %+v", m2, m)
			}
		}
	})
}

func uniq(b []uint32) map[uint32]bool {
	m := map[uint32]bool{}
	for _, x := range b {
		m[x] = true
	}
	return m
}
