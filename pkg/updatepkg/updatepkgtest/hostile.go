// Package updatepkgtest makes hostile update packages for tests: every
// reader of packages (the package reader itself, the catalog's import and
// the engine's install) runs the same table and must refuse every row.
package updatepkgtest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/osvc/osvc/pkg/cab"
	"github.com/osvc/osvc/pkg/updatepkg"
)

// Case is one hostile update file.
type Case struct {
	// Name says what is wrong with the file, as a sentence.
	Name string
	// File is the file's name: a .cab or an .msu.
	File string
	Data []byte
	// Want is a piece of the refusal every reader must give.
	Want string
	// Claims is, for a file whose headers lie about sizes, the number of
	// bytes they claim; reading the file must not allocate anything near it.
	Claims int64
}

// Token is the public key token of the packages made here.
const Token = "31bf3856ad364e35"

// Build is the OS build the packages made here apply to: the sample
// image's, so that a package an engine did not refuse would be installed.
const Build = 22631

var released = time.Date(2026, 10, 13, 0, 0, 0, 0, time.UTC)

// Member is one cabinet member, its name stored as given.
type Member struct {
	Name string
	Data []byte
}

// Cabinet writes members into an MSZIP cabinet with pkg/cab's writer, which
// stores any name but one with a NUL.
func Cabinet(t testing.TB, members ...Member) []byte {
	t.Helper()
	var b bytes.Buffer
	w := cab.NewWriter(&b)
	for _, m := range members {
		fw, err := w.Create(m.Name, released)
		if err != nil {
			t.Fatalf("cabinet member %q: %v", m.Name, err)
		}
		if _, err := fw.Write(m.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// component is a component of a hostile package.
type component struct{ name, arch string }

func (c component) sxs() string {
	return updatepkg.Component{Name: c.name, Version: version(), Arch: c.arch, PublicKeyToken: Token}.SxSName()
}

func version() string { return fmt.Sprintf("10.0.%d.9001", Build) }

func identityXML(name, arch, extra string) string {
	v := version()
	if name != "" && strings.HasPrefix(name, "Package_") {
		v = fmt.Sprintf("%d.9001.1.1", Build)
	}
	return fmt.Sprintf(`<assemblyIdentity name="%s" version="%s" processorArchitecture="%s" language="neutral" publicKeyToken="%s" buildType="release"%s/>`,
		name, v, arch, Token, extra)
}

// mum is update.mum for a package of arch holding comps. doctype, when
// set, goes before the root element, and title is the displayName.
func mum(kb, arch, doctype, title string, comps ...component) []byte {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="utf-8" standalone="yes"?>` + "\n")
	b.WriteString(doctype)
	fmt.Fprintf(&b, `<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0" displayName="%s" creationTimeStamp="2026-10-13T00:00:00Z">`+"\n", title)
	b.WriteString("  " + identityXML("Package_for_"+kb, arch, "") + "\n")
	fmt.Fprintf(&b, `  <package identifier="%s" releaseType="Update">`+"\n", kb)
	fmt.Fprintf(&b, `    <parent buildCompare="EQ" revisionCompare="GE" integrate="separate" disposition="detect">%s</parent>`+"\n",
		strings.Replace(identityXML("Microsoft-Windows-Foundation-Package", arch, ""), version(), fmt.Sprintf("10.0.%d.0", Build), 1))
	for _, c := range comps {
		fmt.Fprintf(&b, `    <update name="%s"><component>%s</component></update>`+"\n", c.name, identityXML(c.name, c.arch, ` versionScope="nonSxS"`))
	}
	b.WriteString("  </package>\n</assembly>\n")
	return []byte(b.String())
}

// componentManifest lists files (stored as given) for c; doctype goes
// before the root element.
func componentManifest(c component, doctype string, files ...string) []byte {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="utf-8" standalone="yes"?>` + "\n")
	b.WriteString(doctype)
	b.WriteString(`<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0">` + "\n")
	b.WriteString("  " + identityXML(c.name, c.arch, ` versionScope="nonSxS"`) + "\n")
	for _, f := range files {
		fmt.Fprintf(&b, `  <file name="%s" sourceName="%s"/>`+"\n", f, f)
	}
	b.WriteString("</assembly>\n")
	return []byte(b.String())
}

// pkg is a package cabinet's members: update.mum, then per component its
// manifest and one payload file, hostile.dll.
type pkg struct {
	kb, arch string
	comps    []component
}

func newPkg(kb, arch string) *pkg {
	compArch := arch
	if arch == "neutral" {
		compArch = "msil"
	}
	return &pkg{kb: kb, arch: arch, comps: []component{{"Microsoft-Windows-Osvc-Hostile", compArch}}}
}

func (p *pkg) members() []Member {
	ms := []Member{{updatepkg.ManifestName, mum(p.kb, p.arch, "", "Hostile "+p.kb, p.comps...)}}
	for _, c := range p.comps {
		ms = append(ms, Member{c.sxs() + ".manifest", componentManifest(c, "", "hostile.dll")})
	}
	for _, c := range p.comps {
		ms = append(ms, Member{c.sxs() + "/hostile.dll", bytes.Repeat([]byte("MZ hostile payload "), 4000)})
	}
	return ms
}

// Package is a valid package cabinet for arch (amd64, arm64, x86 or
// neutral), applicable to Build: what the hostile rows start from.
func Package(t testing.TB, kb, arch string) []byte {
	t.Helper()
	return Cabinet(t, newPkg(kb, arch).members()...)
}

// PackageWith is a valid package cabinet for arch whose components are of
// the given architectures, one component each.
func PackageWith(t testing.TB, kb, arch string, componentArchs ...string) []byte {
	t.Helper()
	p := &pkg{kb: kb, arch: arch}
	for _, a := range componentArchs {
		p.comps = append(p.comps, component{"Microsoft-Windows-Osvc-" + a, a})
	}
	return Cabinet(t, p.members()...)
}

func msu(t testing.TB, members ...Member) []byte {
	t.Helper()
	return Cabinet(t, members...)
}

// Billion laughs: ten entities each expanding to ten of the previous one.
const billionLaughs = `<!DOCTYPE assembly [
 <!ENTITY lol0 "lol">
 <!ENTITY lol1 "&lol0;&lol0;&lol0;&lol0;&lol0;&lol0;&lol0;&lol0;&lol0;&lol0;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
`

const externalEntity = `<!DOCTYPE assembly [
 <!ENTITY xxe SYSTEM "file:///etc/passwd">
]>
`

const plainDoctype = "<!DOCTYPE assembly>\n"

// Hostile returns the table: path escapes, names Windows cannot hold,
// duplicates, mixed architectures, XML bombs and lying sizes, in CABs and
// in MSUs. Every row is refused by updatepkg.Open with Want in its error.
func Hostile(t testing.TB) []Case {
	t.Helper()
	const kb = "KB5099001"
	cabFile := "windows11.0-kb5099001-x64.cab"
	msuFile := "windows11.0-kb5099001-x64.msu"
	base := newPkg(kb, "amd64")
	sxs := base.comps[0].sxs()
	withMember := func(name string) []byte {
		return Cabinet(t, append(base.members(), Member{name, []byte("evil")})...)
	}
	// listing replaces the component's file list; payload is stored under
	// the names given.
	listing := func(files []string, payload ...string) []byte {
		ms := base.members()[:1]
		ms = append(ms, Member{sxs + ".manifest", componentManifest(base.comps[0], "", files...)})
		for _, p := range payload {
			ms = append(ms, Member{p, []byte("payload " + p)})
		}
		return Cabinet(t, ms...)
	}
	withMum := func(data []byte) []byte {
		ms := base.members()
		ms[0].Data = data
		return Cabinet(t, ms...)
	}
	withComponentManifest := func(data []byte) []byte {
		ms := base.members()
		ms[1].Data = data
		return Cabinet(t, ms...)
	}
	archs := func(pkgArch string, comps ...component) []byte {
		p := &pkg{kb: kb, arch: pkgArch, comps: comps}
		return Cabinet(t, p.members()...)
	}
	good := Package(t, kb, "amd64")

	var cases []Case
	add := func(name, file string, data []byte, want string) {
		cases = append(cases, Case{Name: name, File: file, Data: data, Want: want})
	}

	// Paths that escape, and names Windows cannot hold, as extra members.
	for _, tc := range []struct{ name, member, want string }{
		{"a member climbing out with ../", "../evil.dll", `contains ".."`},
		{"a member climbing out with ..\\", `..\..\evil.dll`, `contains ".."`},
		{"a member climbing out after cleaning", sxs + "/a/../../../evil.dll", `contains ".."`},
		{"a member climbing out with mixed separators", `a\..//..\evil.dll`, `contains ".."`},
		{"an absolute member /x", "/etc/evil.dll", "absolute path"},
		{"an absolute member \\x", `\Windows\evil.dll`, "absolute path"},
		{"a member with a drive letter C:\\", `C:\Windows\evil.dll`, "drive letter"},
		{"a member with a drive-relative path C:x", "C:evil.dll", "drive letter"},
		{"a UNC member \\\\host\\share", `\\host\share\evil.dll`, "UNC"},
		{"a device path member \\\\?\\", `\\?\C:\evil.dll`, "UNC"},
		{"a member with an NTFS stream", "evil.dll:stream", "':'"},
		{"a member with a control character", "evil\x07.dll", "control character"},
		{"a member with a newline", "evil\n.dll", "control character"},
		{"a member ending in a dot", sxs + "/hostile.dll.", "ends in a dot or a space"},
		{"a member ending in a space", "evil.dll ", "ends in a dot or a space"},
		{"a member named CON", "CON", "Windows device"},
		{"a member named aux.txt", "aux.txt", "Windows device"},
		{"a member in a folder named LPT1", "LPT1/evil.dll", "Windows device"},
		{"a member with a character Windows forbids", "evil?.dll", "< > \" | ? *"},
	} {
		add(tc.name+" is refused", cabFile, withMember(tc.member), tc.want)
	}
	// The same, as files a component manifest lists.
	add("a component file climbing out with ..\\ is refused", cabFile,
		listing([]string{`..\..\evil.dll`}, sxs+"/hostile.dll"), `contains ".."`)
	add("a component file with a drive letter is refused", cabFile,
		listing([]string{`C:\evil.dll`}, sxs+"/hostile.dll"), "drive letter")
	add("a component file with a NUL is refused", cabFile,
		listing([]string{"evil&#0;.dll"}, sxs+"/hostile.dll"), "U+0000")
	add("a component file the package does not hold is refused", cabFile,
		listing([]string{"hostile.dll", "missing.dll"}, sxs+"/hostile.dll"), "does not hold")
	add("a component file named nul.dll is refused", cabFile,
		listing([]string{"nul.dll"}, sxs+"/nul.dll"), "Windows device")

	// Duplicates.
	twoMums := func(second string) []byte {
		ms := base.members()
		other := newPkg("KB5099666", "amd64")
		return Cabinet(t, append(ms, Member{second, mum(other.kb, "amd64", "", "Another package", other.comps...)})...)
	}
	add("a cabinet holding update.mum twice is refused", cabFile, twoMums("update.mum"), "update.mum twice")
	add("a cabinet holding update.mum and UPDATE.MUM is refused", cabFile, twoMums("UPDATE.MUM"), "update.mum twice")
	add("a cabinet holding update.mum and .\\Update.mum is refused", cabFile, twoMums(`.\Update.mum`), "update.mum twice")
	add("a payload file twice in another case is refused", cabFile,
		listing([]string{"hostile.dll"}, sxs+"/hostile.dll", strings.ToUpper(sxs)+"/HOSTILE.DLL"), "one file on Windows")
	add("a payload file twice with other separators is refused", cabFile,
		listing([]string{`drivers\a.sys`}, sxs+`/drivers/a.sys`, sxs+`\drivers\a.sys`), "one file on Windows")
	add("a member that is a file where another needs a folder is refused", cabFile,
		listing([]string{"hostile.dll"}, sxs+"/hostile.dll", sxs+"/hostile.dll/inner.dll"), "needs it to be a folder")
	add("a component listed twice is refused", cabFile,
		withMum(mum(kb, "amd64", "", "Twice", base.comps[0], base.comps[0])), "listed twice")
	add("a component file listed twice in other cases is refused", cabFile,
		listing([]string{"hostile.dll", "HOSTILE.dll"}, sxs+"/hostile.dll"), "one file on Windows")

	// Architectures.
	add("an amd64 package carrying an arm64 component is refused", cabFile,
		archs("amd64", component{"Microsoft-Windows-Osvc-Hostile", "amd64"}, component{"Microsoft-Windows-Osvc-Other", "arm64"}), "cannot carry")
	add("an x86 package carrying an amd64 component is refused", "windows11.0-kb5099001-x86.cab",
		archs("x86", component{"Microsoft-Windows-Osvc-Hostile", "amd64"}), "cannot carry")
	add("an x86 package carrying a wow64 component is refused", "windows11.0-kb5099001-x86.cab",
		archs("x86", component{"Microsoft-Windows-Osvc-Hostile", "wow64"}), "cannot carry")
	add("a neutral package carrying an amd64 component is refused", "windows11.0-kb5099001.cab",
		archs("neutral", component{"Microsoft-Windows-Osvc-Hostile", "amd64"}), "cannot carry")

	// Its manifest could not even be stored: cabinet names stop at 255 bytes.
	add("a component whose WinSxS folder name is longer than Windows allows is refused", cabFile,
		Cabinet(t, Member{updatepkg.ManifestName, mum(kb, "amd64", "", "Long",
			component{"Microsoft-Windows-Osvc-" + strings.Repeat("Long", 44), "amd64"})}), "characters long")

	// XML that expands without bound or reads other files.
	add("billion laughs in update.mum is refused", cabFile,
		withMum(mum(kb, "amd64", billionLaughs, "&lol9;", base.comps...)), "<!DOCTYPE")
	add("an external entity in update.mum is refused", cabFile,
		withMum(mum(kb, "amd64", externalEntity, "&xxe;", base.comps...)), "<!DOCTYPE")
	add("a DOCTYPE in update.mum is refused", cabFile,
		withMum(mum(kb, "amd64", plainDoctype, "Hostile", base.comps...)), "<!DOCTYPE")
	add("billion laughs in a component manifest is refused", cabFile,
		withComponentManifest(componentManifest(base.comps[0], billionLaughs, "hostile.dll", "&lol9;")), "<!DOCTYPE")
	add("an external entity in a component manifest is refused", cabFile,
		withComponentManifest(componentManifest(base.comps[0], externalEntity, "&xxe;")), "<!DOCTYPE")
	add("a DOCTYPE in a component manifest is refused", cabFile,
		withComponentManifest(componentManifest(base.comps[0], plainDoctype, "hostile.dll")), "<!DOCTYPE")

	// Sizes the data does not back.
	cases = append(cases,
		Case{Name: "a member whose size claims 4 GiB is refused", File: cabFile,
			Data: patch(t, good, func(c *layout) { c.setFileSize(sxs+`\hostile.dll`, 0xFFFFFFF0) }), Want: "beyond", Claims: 0xFFFFFFF0},
		Case{Name: "a folder whose block count claims 2 GiB is refused", File: cabFile,
			Data: patch(t, good, func(c *layout) { c.setBlockCount(0xFFFF) }), Want: "damaged", Claims: 0xFFFF * 32768},
		Case{Name: "a member whose data ends early is refused", File: cabFile,
			Data: patch(t, good, func(c *layout) { c.growLastBlock(sxs+`\hostile.dll`, 1000) }), Want: "damaged"},
		Case{Name: "a block declaring 32 KiB far above its data is refused", File: cabFile,
			Data: patch(t, good, func(c *layout) { c.growLastBlock(sxs+`\hostile.dll`, -1) }), Want: "damaged"},
		Case{Name: "a truncated cabinet is refused", File: cabFile, Data: good[:len(good)-100], Want: "truncated"},
		Case{Name: "a truncated cabinet whose header agrees is refused", File: cabFile,
			Data: patch(t, good[:len(good)-100], func(c *layout) { c.setCabinetSize() }), Want: "damaged"},
	)

	// MSUs: every inner cabinet is read as a CAB is, and they must agree.
	inner := func(name string, data []byte) Member { return Member{name, data} }
	add("an MSU holding a.cab and A.CAB is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", good), inner("WINDOWS11.0-KB5099001-X64.CAB", good)), "one file on Windows")
	add("an MSU holding a cabinet that is not a package is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", good), inner("driver.cab", Cabinet(t, Member{"netdriver.inf", []byte("[Version]")}))), "not an update package")
	add("an MSU holding a .cab that is not a cabinet is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", good), inner("junk.cab", []byte("MZ not a cabinet"))), "not a cabinet")
	add("an MSU whose packages are for amd64 and arm64 is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", good), inner("Windows11.0-KB5099002-arm64.cab", Package(t, "KB5099002", "arm64"))), "different architectures")
	add("an MSU holding the same package twice is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", good), inner("Copy.cab", good)), "same package")
	add("an MSU whose inner cabinet holds update.mum twice is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", twoMums("UPDATE.MUM"))), "update.mum twice")
	add("an MSU whose inner cabinet has a member climbing out is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", withMember("../../evil.dll"))), `contains ".."`)
	add("an MSU with a member climbing out is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", good), inner("../evil.txt", []byte("evil"))), `contains ".."`)
	add("an MSU whose inner package carries a component of another architecture is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", archs("amd64", component{"Microsoft-Windows-Osvc-Hostile", "arm64"}))), "cannot carry")
	add("an MSU whose inner cabinet is truncated is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", good[:len(good)-100])), "truncated")

	// Windows' own packages and MSUs (see windows.go): what osvc reads of
	// them is checked as everything else is.
	lcu := KB5005565()
	withWindowsMum := func(mum string) []byte {
		ms := lcu.Members()
		ms[0].Data = []byte(mum)
		return Cabinet(t, ms...)
	}
	lcuMum := string(lcu.Mum())
	add("a <parent buildCompare> osvc does not read is refused", cabFile,
		withWindowsMum(strings.Replace(lcuMum, `buildCompare="EQ"`, `buildCompare="LT"`, 1)), "osvc reads EQ and GE")
	add("a nested package whose identity is not one is refused", cabFile,
		withWindowsMum(strings.Replace(lcuMum, `name="Package_1_for_KB5005565"`, `name="../Package_1"`, 1)), "package \"../Package_1\"")
	add("an update whose name holds control characters is refused", cabFile,
		withWindowsMum(strings.Replace(lcuMum, `<update name="5005565-1_neutral_PACKAGE">`, `<update name="evil&#10;name"><driver/></update><update name="x">`, 1)), "not a name")
	// An MSU as Microsoft ships it, one member changed, added or left out.
	windowsMSU := func(edit func(ms []Member) []Member) []byte {
		return msu(t, edit(MSUMembers(t, WindowsMSU{Packages: []WindowsPackage{lcu}, Main: lcu, Properties: true, Unattend: true, WindowsUpdate: true}))...)
	}
	set := func(name string, data []byte) func([]Member) []Member {
		return func(ms []Member) []Member {
			for i := range ms {
				if ms[i].Name == name {
					ms[i].Data = data
					return ms
				}
			}
			return append(ms, Member{name, data})
		}
	}
	props, unattend := lcu.FileName("-pkgProperties.txt"), lcu.FileName(".xml")
	goodProps := string(PropertiesFile(lcu))
	add("an MSU whose properties file is larger than 64 KiB is refused", msuFile,
		windowsMSU(set(props, []byte(goodProps+"Padding=\""+strings.Repeat("x", 64<<10)+"\"\r\n"))), "more than the 65536 allowed")
	add("an MSU whose properties file has a line that is not Key=value is refused", msuFile,
		windowsMSU(set(props, []byte(goodProps+"<script>\r\n"))), `is not Key="value"`)
	add("an MSU whose properties file has a key that is not a name is refused", msuFile,
		windowsMSU(set(props, []byte(goodProps+"<img src=x>=\"x\"\r\n"))), `is not Key="value"`)
	add("an MSU whose properties file sets a key twice is refused", msuFile,
		windowsMSU(set(props, []byte(goodProps+"KB Article Number=\"5099666\"\r\n"))), "KB Article Number is set twice")
	add("an MSU whose properties file has a value with unmatched quotes is refused", msuFile,
		windowsMSU(set(props, []byte(goodProps+"Company=\"Microsoft\r\n"))), "quotes do not match")
	add("an MSU whose properties file has a value longer than 4 KiB is refused", msuFile,
		windowsMSU(set(props, []byte(goodProps+"Padding=\""+strings.Repeat("x", 4097)+"\"\r\n"))), "longer than 4096 bytes")
	add("an MSU whose properties file has a control character in a value is refused", msuFile,
		windowsMSU(set(props, []byte(goodProps+"Title=\"evil\x1b[2Jtitle\"\r\n"))), "control characters")
	add("an MSU whose properties file is neither UTF-8 nor UTF-16 is refused", msuFile,
		windowsMSU(set(props, []byte("KB Article Number=\"\xff\xfe5005565\"\r\n"))), "neither UTF-8")
	add("an MSU whose properties file is UTF-16 of an odd length is refused", msuFile,
		windowsMSU(set(props, []byte("\xff\xfeK\x00B\x00="))), "odd number of bytes")
	add("an MSU whose properties file is UTF-16 with a lone surrogate is refused", msuFile,
		windowsMSU(set(props, []byte("\xff\xfeK\x00=\x00\x00\xd8"))), "not valid UTF-16")
	add("an MSU with two properties files is refused", msuFile,
		windowsMSU(set("Other-pkgProperties.txt", []byte(goodProps))), "2 properties files")
	add("an MSU whose properties file describes a cabinet it does not hold is refused", msuFile,
		windowsMSU(func(ms []Member) []Member {
			return set("Windows10.0-KB5099666-x64-pkgProperties.txt", []byte(goodProps))(slices.DeleteFunc(ms, func(m Member) bool { return m.Name == props || m.Name == unattend }))
		}), "describes Windows10.0-KB5099666-x64.cab, which the MSU does not hold")
	add("an MSU whose properties file says another architecture is refused", msuFile,
		windowsMSU(set(props, []byte(strings.Replace(goodProps, `Processor Architecture="amd64"`, `Processor Architecture="arm64"`, 1)))), `Processor Architecture "arm64"`)
	goodUnattend := string(UnattendFile(lcu))
	add("an MSU whose unattend file declares a document type is refused", msuFile,
		windowsMSU(set(unattend, []byte(strings.Replace(goodUnattend, "<unattend ", billionLaughs+"<unattend ", 1)))), "<!DOCTYPE")
	add("an MSU whose unattend file is larger than 1 MiB is refused", msuFile,
		windowsMSU(set(unattend, []byte(strings.Replace(goodUnattend, "<servicing>", "<servicing>"+strings.Repeat(" ", 1<<20), 1)))), "more than the 1048576 an unattend file may hold")
	add("an MSU whose .xml is not an unattend file is refused", msuFile,
		windowsMSU(set(unattend, []byte(`<?xml version="1.0"?><html><script>evil</script></html>`))), "not an unattend file")
	add("an MSU whose unattend file is of another namespace is refused", msuFile,
		windowsMSU(set(unattend, []byte(strings.Replace(goodUnattend, "urn:schemas-microsoft-com:unattend", "urn:evil", 1)))), `its namespace is "urn:evil"`)
	add("an MSU whose unattend file names a package without its identity is refused", msuFile,
		windowsMSU(set(unattend, []byte(`<unattend xmlns="urn:schemas-microsoft-com:unattend"><servicing><package><source location="x.cab"/></package></servicing></unattend>`))), "names no <assemblyIdentity>")
	add("an MSU whose unattend file names a package that is not an identity is refused", msuFile,
		windowsMSU(set(unattend, []byte(strings.Replace(goodUnattend, `name="Package_for_RollupFix"`, `name="..\..\evil"`, 1)))), "must be 1 to 200 letters")
	add("an MSU whose unattend file installs from a cabinet it does not hold is refused", msuFile,
		windowsMSU(set(unattend, []byte(strings.Replace(goodUnattend, lcu.FileName(".cab"), "Windows10.0-KB5099666-x64.cab", 1)))), "from Windows10.0-KB5099666-x64.cab, which the MSU does not hold")
	add("an MSU whose unattend file names another package for its cabinet is refused", msuFile,
		windowsMSU(set(unattend, []byte(strings.Replace(goodUnattend, lcu.Version, "19041.9999.1.1", 1)))), "but it holds")
	add("an MSU whose unattend file installs a package none of its cabinets holds is refused", msuFile,
		windowsMSU(set(unattend, []byte(strings.Replace(strings.Replace(goodUnattend, lcu.Version, "19041.9999.1.1", 1), `<source location="%configsetroot%\`+lcu.FileName(".cab")+`"/>`, "", 1)))), "none of its cabinets holds")

	// What one file may cost: a manifest past the 4 MiB each may hold, an
	// inner cabinet inflating to far more than its MSU (2 MiB of zeros
	// compress to kilobytes; the bound is twice the MSU and 1 MiB), refused
	// before it is written to disk.
	huge := componentManifest(base.comps[0], "", "hostile.dll")
	end := bytes.LastIndex(huge, []byte("</assembly>"))
	huge = slices.Concat(huge[:end], bytes.Repeat([]byte(" "), 4<<20+1-len(huge)), huge[end:])
	add("a component manifest larger than 4 MiB is refused", cabFile,
		withComponentManifest(huge), "more than the 4194304 allowed")
	add("an MSU whose inner cabinet inflates to far more than the MSU is refused", msuFile,
		msu(t, inner("Windows11.0-KB5099001-x64.cab", make([]byte, 2<<20))), "more than twice the MSU")
	return cases
}

// layout locates the fields of a cabinet written by pkg/cab's writer (no
// reserved areas) that the lying-size rows change.
type layout struct {
	t testing.TB
	b []byte
}

var le = binary.LittleEndian

func patch(t testing.TB, data []byte, f func(*layout)) []byte {
	t.Helper()
	c := &layout{t: t, b: append([]byte(nil), data...)}
	f(c)
	return c.b
}

// fileEntry returns the offset of the named CFFILE entry.
func (c *layout) fileEntry(name string) int {
	pos := int(le.Uint32(c.b[16:]))
	for range int(le.Uint16(c.b[28:])) {
		end := bytes.IndexByte(c.b[pos+16:], 0)
		if string(c.b[pos+16:pos+16+end]) == name {
			return pos
		}
		pos += 16 + end + 1
	}
	c.t.Fatalf("the cabinet has no member %q", name)
	return 0
}

func (c *layout) setFileSize(name string, size uint32) { le.PutUint32(c.b[c.fileEntry(name):], size) }

func (c *layout) setBlockCount(n uint16) { le.PutUint16(c.b[36+4:], n) }

func (c *layout) setCabinetSize() { le.PutUint32(c.b[8:], uint32(len(c.b))) }

// growLastBlock makes the folder's last block declare grow more
// uncompressed bytes than its data holds (-1: the most MSZIP allows), and
// the named member, which must end there, as much larger; the block's
// checksum is cleared, so only the data can tell.
func (c *layout) growLastBlock(name string, grow int) {
	pos := int(le.Uint32(c.b[36:]))
	n := int(le.Uint16(c.b[40:]))
	for range n - 1 {
		pos += 8 + int(le.Uint16(c.b[pos+4:]))
	}
	old := int(le.Uint16(c.b[pos+6:]))
	if grow < 0 {
		grow = 32768 - old
	}
	le.PutUint32(c.b[pos:], 0)
	le.PutUint16(c.b[pos+6:], uint16(old+grow))
	e := c.fileEntry(name)
	le.PutUint32(c.b[e:], le.Uint32(c.b[e:])+uint32(grow))
}
