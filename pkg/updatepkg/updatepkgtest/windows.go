package updatepkgtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

// Update files shaped as Microsoft ships them, built from their documented
// and observed structure (no field is invented; values that are not
// quoted from a source are test values):
//
//   - update.mum: the <assembly> attributes, <assemblyIdentity>,
//     <package identifier releaseType restart>, <parent buildCompare
//     revisionCompare integrate disposition> naming the foundation package,
//     and <update name><package integrate="hidden"> for each nested
//     package, as in real update.mum files found with find_string
//     `releaseType="Security Update"` (Windows 8.1's
//     Package_980_for_KB4577066, Windows 7's Package_16_for_KB4474419, with
//     displayName="default" and description "Fix for KB...") and the
//     element classes of BlueSkeye/WinUpd (WinUpdExplorer/Mum: Package,
//     Parent, Update with component, package, driver and applicable
//     children). The identity Package_for_RollupFix 19041.1237.1.4 of
//     KB5005565 and its parent Microsoft-Windows-Foundation-Package
//     10.0.19041.1 are the task's.
//   - <Name>~<token>~<arch>~~<version>.mum beside it for each nested
//     package, update.cat and a .cat per package: the package identity
//     form DISM prints (agent/engine/dism corpus).
//   - component manifests compressed with DCM: "DCM\x01" then a PA30
//     delta, as SafeBreach-Labs/WindowsDowndate reads them
//     (windows_downdate/manifest_utils.py); the delta bytes here are not a
//     real delta, and the WinSxS hash in their names is not Windows'.
//   - PSF payload: customInformation PackageFormat="PSFX" and a
//     <name>.psf.cix.xml member, with <name>.psf beside the cabinet, as
//     abbodi1406/BatUtil's W10UI.cmd expects them.
//   - MSUs: see WindowsMSU.

// WindowsPackage describes a package cabinet shaped as Windows' own.
type WindowsPackage struct {
	// KB is the package identifier, e.g. KB5005565.
	KB string
	// Name and Version are the package identity's, e.g.
	// Package_for_RollupFix and 19041.1237.1.4.
	Name, Version string
	// Arch is amd64, x86 or arm64.
	Arch        string
	ReleaseType string
	// BuildCompare is the <parent>'s buildCompare, EQ or GE, and
	// ParentVersion the foundation package's version, e.g. 10.0.19041.1.
	BuildCompare, ParentVersion string
	// Nested is how many packages update.mum installs
	// (Package_<n>_for_<KB>), each with one component.
	Nested int
	// Components are components update.mum itself lists.
	Components []string
	// Catalogs adds update.cat and a catalog per nested package.
	Catalogs bool
	// DCM compresses the component manifests with DCM.
	DCM bool
	// PSF marks the payload as being in a PSF file beside the cabinet.
	PSF bool
}

// KB5005565 is the cumulative update of the task: Windows 10, version
// 2004 and later (build 19041), x64, with two nested packages, Windows'
// catalogs and DCM-compressed manifests.
func KB5005565() WindowsPackage {
	return WindowsPackage{
		KB: "KB5005565", Name: "Package_for_RollupFix", Version: "19041.1237.1.4", Arch: "amd64",
		ReleaseType: "Security Update", BuildCompare: "EQ", ParentVersion: "10.0.19041.1",
		Nested: 2, Catalogs: true, DCM: true,
	}
}

// ServicingStack19041 is a servicing stack update for build 19041, as a
// combined MSU carries it beside the cumulative update (SSU-<version>-<arch>.cab).
func ServicingStack19041() WindowsPackage {
	return WindowsPackage{
		KB: "KB5005260", Name: "Package_for_ServicingStack_1161", Version: "19041.1161.1.1", Arch: "amd64",
		ReleaseType: "Update", BuildCompare: "EQ", ParentVersion: "10.0.19041.1",
		Components: []string{"Microsoft-Windows-ServicingStack"}, Catalogs: true, DCM: true,
	}
}

func windowsIdentity(name, version, arch, extra string) string {
	return fmt.Sprintf(`<assemblyIdentity name="%s" version="%s" processorArchitecture="%s" language="neutral" buildType="release" publicKeyToken="%s"%s/>`,
		name, version, arch, Token, extra)
}

// componentVersion is the version of the package's components: 10.0 and
// the build and revision of the package's version.
func (p WindowsPackage) componentVersion() string {
	parts := strings.Split(p.Version, ".")
	return "10.0." + parts[0] + "." + parts[1]
}

// sxs is a WinSxS-style name for a component of the package; the hash is
// a stand-in, not Windows'.
func (p WindowsPackage) sxs(component string) string {
	sum := sha256.Sum256([]byte(component + p.componentVersion()))
	return strings.ToLower(fmt.Sprintf("%s_%s_%s_%s_none_%s", p.Arch, component, Token, p.componentVersion(), hex.EncodeToString(sum[:8])))
}

func (p WindowsPackage) nestedName(n int) string { return fmt.Sprintf("Package_%d_for_%s", n, p.KB) }

// Mum is the package's update.mum.
func (p WindowsPackage) Mum() []byte {
	var b strings.Builder
	number := strings.TrimPrefix(p.KB, "KB")
	b.WriteString(`<?xml version="1.0" encoding="utf-8"?>` + "\r\n")
	fmt.Fprintf(&b, `<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0" description="Fix for %s" displayName="default" company="Microsoft Corporation" copyright="Microsoft Corporation" supportInformation="https://support.microsoft.com/help/%s" creationTimeStamp="2021-09-03T21:17:36Z" lastUpdateTimeStamp="2021-09-03T21:17:36Z">`+"\r\n",
		p.KB, number)
	fmt.Fprintf(&b, "  %s\r\n", windowsIdentity(p.Name, p.Version, p.Arch, ""))
	fmt.Fprintf(&b, `  <package identifier="%s" releaseType="%s" restart="required" selfUpdate="false" permanence="removable">`+"\r\n", p.KB, p.ReleaseType)
	if p.PSF {
		b.WriteString(`    <mum2:customInformation xmlns:mum2="urn:schemas-microsoft-com:asm.v3" PackageFormat="PSFX"/>` + "\r\n")
	}
	fmt.Fprintf(&b, `    <parent buildCompare="%s" revisionCompare="GE" integrate="separate" disposition="detect">`+"\r\n", p.BuildCompare)
	fmt.Fprintf(&b, "      %s\r\n", windowsIdentity("Microsoft-Windows-Foundation-Package", p.ParentVersion, p.Arch, ""))
	b.WriteString("    </parent>\r\n")
	for n := 1; n <= p.Nested; n++ {
		fmt.Fprintf(&b, `    <update name="%s-%d_neutral_PACKAGE">`+"\r\n", number, n)
		b.WriteString(`      <package integrate="hidden">` + "\r\n")
		fmt.Fprintf(&b, "        %s\r\n", windowsIdentity(p.nestedName(n), p.Version, p.Arch, ""))
		b.WriteString("      </package>\r\n    </update>\r\n")
	}
	for _, c := range p.Components {
		fmt.Fprintf(&b, `    <update name="%s">`+"\r\n      <component>\r\n        %s\r\n      </component>\r\n    </update>\r\n",
			c, windowsIdentity(c, p.componentVersion(), p.Arch, ` versionScope="nonSxS"`))
	}
	b.WriteString("  </package>\r\n</assembly>\r\n")
	return []byte(b.String())
}

// nestedMum is the .mum of nested package n: one component.
func (p WindowsPackage) nestedMum(n int) []byte {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="utf-8" standalone="yes"?>` + "\r\n")
	b.WriteString(`<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0" copyright="Copyright (c) Microsoft Corporation. All Rights Reserved.">` + "\r\n")
	fmt.Fprintf(&b, "  %s\r\n", windowsIdentity(p.nestedName(n), p.Version, p.Arch, ""))
	fmt.Fprintf(&b, `  <package identifier="%s" releaseType="%s">`+"\r\n", p.KB, p.ReleaseType)
	fmt.Fprintf(&b, `    <update name="%s-%d">`+"\r\n      <component>\r\n        %s\r\n      </component>\r\n    </update>\r\n",
		strings.TrimPrefix(p.KB, "KB"), n, windowsIdentity(p.nestedComponent(n), p.componentVersion(), p.Arch, ` versionScope="nonSxS"`))
	b.WriteString("  </package>\r\n</assembly>\r\n")
	return []byte(b.String())
}

func (p WindowsPackage) nestedComponent(n int) string {
	return fmt.Sprintf("Microsoft-Windows-Osvc-Test-Component-%d", n)
}

// componentManifest is a component's manifest: DCM-compressed, or plain.
func (p WindowsPackage) componentManifest(component string) []byte {
	if p.DCM {
		// "DCM\x01", then what would be a PA30 delta against Windows' base manifest.
		return append([]byte("DCM\x01PA30"), []byte("\x00\x01 not a real delta "+component)...)
	}
	return []byte(`<?xml version="1.0" encoding="utf-8" standalone="yes"?>` + "\r\n" +
		`<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0">` +
		windowsIdentity(component, p.componentVersion(), p.Arch, ` versionScope="nonSxS"`) + "</assembly>\r\n")
}

// identityName is a package's identity as its .mum and .cat are named.
func (p WindowsPackage) identityName(name string) string {
	return fmt.Sprintf("%s~%s~%s~~%s", name, Token, p.Arch, p.Version)
}

// Members are the cabinet's members: update.mum, the nested packages'
// .mum files, catalogs, component manifests and the PSF index.
func (p WindowsPackage) Members() []Member {
	ms := []Member{{"update.mum", p.Mum()}}
	catalog := []byte("0\x82\x01\x00 test catalog, not signed")
	if p.Catalogs {
		ms = append(ms, Member{"update.cat", catalog})
	}
	components := append([]string(nil), p.Components...)
	for n := 1; n <= p.Nested; n++ {
		ms = append(ms, Member{p.identityName(p.nestedName(n)) + ".mum", p.nestedMum(n)})
		if p.Catalogs {
			ms = append(ms, Member{p.identityName(p.nestedName(n)) + ".cat", catalog})
		}
		components = append(components, p.nestedComponent(n))
	}
	for _, c := range components {
		ms = append(ms, Member{p.sxs(c) + ".manifest", p.componentManifest(c)})
	}
	if p.PSF {
		ms = append(ms, Member{p.FileName(".psf.cix.xml"), []byte(`<?xml version="1.0" encoding="utf-8"?><Container/>`)})
	}
	return ms
}

// FileName is the name Microsoft gives the package's files:
// Windows10.0-KB5005565-x64 and ext; a servicing stack's cabinet in an
// MSU is SSU-<build>.<revision>-<arch>.
func (p WindowsPackage) FileName(ext string) string {
	arch := map[string]string{"amd64": "x64", "x86": "x86", "arm64": "arm64"}[p.Arch]
	if strings.HasPrefix(p.Name, "Package_for_ServicingStack") {
		parts := strings.Split(p.Version, ".")
		return fmt.Sprintf("SSU-%s.%s-%s%s", parts[0], parts[1], arch, ext)
	}
	windows := "Windows10.0"
	if strings.HasPrefix(p.ParentVersion, "10.0.2") {
		windows = "Windows11.0" // builds 22000 and later
	}
	return fmt.Sprintf("%s-%s-%s%s", windows, p.KB, arch, ext)
}

// WindowsCab is the package's cabinet (MSZIP), with extra members after its own.
func WindowsCab(t testing.TB, p WindowsPackage, extra ...Member) []byte {
	t.Helper()
	return Cabinet(t, append(p.Members(), extra...)...)
}

// Edited is a copy of p changed by edit.
func (p WindowsPackage) Edited(edit func(*WindowsPackage)) WindowsPackage {
	edit(&p)
	return p
}

// WindowsMSU describes an MSU as Microsoft ships it: per KB934307
// ("Description of the Windows Update Standalone Installer") its package
// cabinets, Windows Update metadata (WSUSSCAN.cab), an unattend .xml and a
// properties file <name>-pkgProperties.txt; per W10UI.cmd, Windows 11's
// also DesktopDeployment.cab, DesktopDeployment_x86.cab,
// <name>.AggregatedMetadata.cab and the update's payload as <name>.psf.
type WindowsMSU struct {
	// Packages are the package cabinets, in the MSU's order (a combined
	// MSU's servicing stack first).
	Packages []WindowsPackage
	// Main is the package the MSU is named for and its metadata describes.
	Main WindowsPackage
	// Properties and Unattend add <name>-pkgProperties.txt and <name>.xml.
	Properties, Unattend bool
	// WindowsUpdate adds WSUSSCAN.cab; Deployment the deployment and
	// metadata cabinets of Windows 11 MSUs.
	WindowsUpdate, Deployment bool
	// Extra members, after the others.
	Extra []Member
}

// PropertiesFile is an MSU's properties file for p, with the keys the
// readers of such files read (tksh164/updb.dnc's
// UpdatePackagePropertiesFromPropertyFile.cs; the MSU reader of the
// WinToolkit code found with find_string "pkgProperties"), one Key="value"
// per CRLF line; the values are test values.
func PropertiesFile(p WindowsPackage) []byte {
	arch := p.Arch
	number := strings.TrimPrefix(p.KB, "KB")
	lines := [][2]string{
		{"ApplicabilityInfo", "Windows 10.0 Client SKUs"},
		{"Applies to", "Windows 10"},
		{"Build Date", "2021/09/03"},
		{"Company", "Microsoft Corporation"},
		{"File Version", "10.0.19041.1237"},
		{"Installation Type", "FULL"},
		{"Installer Engine", "Component Based Servicing"},
		{"Installer Version", "6.0"},
		{"KB Article Number", number},
		{"Language", "ALL"},
		{"Package Type", p.ReleaseType},
		{"Processor Architecture", arch},
		{"Product Name", "Windows 10"},
		{"Support Link", "https://support.microsoft.com/help/" + number},
	}
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s=\"%s\"\r\n", l[0], l[1])
	}
	return []byte(b.String())
}

// UnattendFile is an MSU's unattend file installing p from its cabinet:
// /unattend/servicing/package/assemblyIdentity and source/@location under
// %configsetroot%, as tksh164/updb.dnc's UpdatePackageMetadataFromXmlFile.cs
// reads it.
func UnattendFile(p WindowsPackage) []byte {
	return []byte(`<?xml version="1.0" encoding="utf-8" standalone="yes"?>` + "\r\n" +
		`<unattend xmlns="urn:schemas-microsoft-com:unattend">` + "\r\n" +
		"  <servicing>\r\n    <package>\r\n" +
		"      " + strings.Replace(windowsIdentity(p.Name, p.Version, p.Arch, ""), ` buildType="release"`, "", 1) + "\r\n" +
		`      <source location="%configsetroot%\` + p.FileName(".cab") + `"/>` + "\r\n" +
		"    </package>\r\n  </servicing>\r\n</unattend>\r\n")
}

// MSUMembers are the members of the MSU.
func MSUMembers(t testing.TB, m WindowsMSU) []Member {
	t.Helper()
	var ms []Member
	if m.Deployment {
		ms = append(ms,
			Member{"DesktopDeployment.cab", Cabinet(t, Member{"UpdateAgent.dll", []byte("MZ test")})},
			Member{"DesktopDeployment_x86.cab", Cabinet(t, Member{"UpdateAgent.dll", []byte("MZ test x86")})},
			Member{m.Main.FileName(".AggregatedMetadata.cab"), Cabinet(t, Member{"LCUCompDB_" + m.Main.KB + ".xml.cab", []byte("test")})},
		)
	}
	if m.WindowsUpdate {
		ms = append(ms, Member{"WSUSSCAN.cab", Cabinet(t, Member{"package.xml", []byte("<test/>")})})
	}
	for _, p := range m.Packages {
		ms = append(ms, Member{p.FileName(".cab"), WindowsCab(t, p)})
	}
	if m.Properties {
		ms = append(ms, Member{m.Main.FileName("-pkgProperties.txt"), PropertiesFile(m.Main)})
	}
	if m.Unattend {
		ms = append(ms, Member{m.Main.FileName(".xml"), UnattendFile(m.Main)})
	}
	return append(ms, m.Extra...)
}

// WindowsMSUFile is the MSU's bytes.
func WindowsMSUFile(t testing.TB, m WindowsMSU) []byte {
	t.Helper()
	return Cabinet(t, MSUMembers(t, m)...)
}
