package updatepkg

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/applicability"
	"github.com/osvc/osvc/pkg/winpath"
)

// Namespace is the XML namespace of update.mum and component manifests.
const Namespace = "urn:schemas-microsoft-com:asm.v3"

// ParentName is the package every applicability <parent> names: the OS
// foundation package, whose version 10.0.<build>.0 carries the build.
const ParentName = "Microsoft-Windows-Foundation-Package"

// Manifest is the content of a package's update.mum.
type Manifest struct {
	Identity Identity
	// KB is the package identifier, e.g. KB5032190.
	KB    string
	Title string
	// ReleaseType is e.g. "Security Update", "Update", "Servicing Stack Update".
	ReleaseType string
	// Classification follows from the other fields (see Classify);
	// ParseManifest fills it and Marshal checks it.
	Classification osvcv1.Classification
	Released       time.Time
	Products       []string
	// ApplicableBuilds lists the OS builds the package applies to exactly
	// (<parent buildCompare="EQ">); with MinBuild unset, empty means any.
	ApplicableBuilds []uint32
	// MinBuild, when not 0, makes the package apply to every OS build from
	// it on (<parent buildCompare="GE">), besides ApplicableBuilds.
	MinBuild uint32
	// Supersedes lists identities (Identity.String form) of packages this one replaces.
	Supersedes []string
	Components []Component

	// What Windows' own packages carry and osvc's do not (see the package
	// documentation, "Windows' own packages"): the engine reads them to
	// tell why it does not install such a package.

	// Packages are the packages update.mum's updates install
	// (<update><package>), as a Windows cumulative update installs
	// Package_1_for_KB..., Package_2_for_KB...; osvc does not install them.
	Packages []Identity
	// OtherUpdates names the <update> elements that install neither a
	// component nor a package (drivers, applicability rules).
	OtherUpdates []string
	// PSFName is package/@psfName: the PSF file beside the cabinet that
	// holds the payload.
	PSFName string
	// PackageFormat is customInformation/@PackageFormat, e.g. PSFX: the
	// payload is in a PSF file beside the cabinet.
	PackageFormat string
}

// XML shapes. Element and attribute names follow Windows' update.mum.

type xmlIdentity struct {
	Name                  string `xml:"name,attr"`
	Version               string `xml:"version,attr"`
	ProcessorArchitecture string `xml:"processorArchitecture,attr"`
	Language              string `xml:"language,attr"`
	PublicKeyToken        string `xml:"publicKeyToken,attr"`
	BuildType             string `xml:"buildType,attr,omitempty"`
	VersionScope          string `xml:"versionScope,attr,omitempty"`
}

type xmlAssembly struct {
	XMLName             xml.Name     `xml:"urn:schemas-microsoft-com:asm.v3 assembly"`
	ManifestVersion     string       `xml:"manifestVersion,attr"`
	Description         string       `xml:"description,attr,omitempty"`
	DisplayName         string       `xml:"displayName,attr,omitempty"`
	Company             string       `xml:"company,attr,omitempty"`
	Copyright           string       `xml:"copyright,attr,omitempty"`
	SupportInformation  string       `xml:"supportInformation,attr,omitempty"`
	CreationTimeStamp   string       `xml:"creationTimeStamp,attr,omitempty"`
	LastUpdateTimeStamp string       `xml:"lastUpdateTimeStamp,attr,omitempty"`
	Identity            *xmlIdentity `xml:"assemblyIdentity"`
	Package             *xmlPackage  `xml:"package"`
	Files               []xmlFile    `xml:"file"`
}

type xmlPackage struct {
	Identifier  string        `xml:"identifier,attr"`
	ReleaseType string        `xml:"releaseType,attr"`
	Restart     string        `xml:"restart,attr,omitempty"`
	Permanence  string        `xml:"permanence,attr,omitempty"`
	PSFName     string        `xml:"psfName,attr,omitempty"`
	Custom      []xmlCustom   `xml:"customInformation"`
	Parents     []xmlParent   `xml:"parent"`
	Supersedes  *xmlSupersede `xml:"supersededPackages"`
	Updates     []xmlUpdate   `xml:"update"`
}

type xmlCustom struct {
	PackageFormat string       `xml:"PackageFormat,attr,omitempty"`
	Products      []xmlProduct `xml:"product"`
}

type xmlProduct struct {
	Name string `xml:"name,attr"`
}

type xmlParent struct {
	BuildCompare    string        `xml:"buildCompare,attr"`
	RevisionCompare string        `xml:"revisionCompare,attr"`
	Integrate       string        `xml:"integrate,attr"`
	Disposition     string        `xml:"disposition,attr"`
	Identities      []xmlIdentity `xml:"assemblyIdentity"`
}

type xmlSupersede struct {
	Identities []xmlIdentity `xml:"assemblyIdentity"`
}

type xmlUpdate struct {
	Name      string        `xml:"name,attr"`
	Component *xmlComponent `xml:"component"`
	// Package is a package the update installs, in Windows' own packages.
	Package *xmlComponent `xml:"package,omitempty"`
}

type xmlComponent struct {
	Identity *xmlIdentity `xml:"assemblyIdentity"`
}

type xmlFile struct {
	Name       string `xml:"name,attr"`
	SourceName string `xml:"sourceName,attr,omitempty"`
}

func toXMLIdentity(id Identity) xmlIdentity {
	lang := id.Language
	if lang == "" {
		lang = "neutral"
	}
	return xmlIdentity{Name: id.Name, Version: id.Version, ProcessorArchitecture: id.Arch, Language: lang,
		PublicKeyToken: id.PublicKeyToken, BuildType: "release"}
}

func (x xmlIdentity) identity() Identity {
	lang := x.Language
	if lang == "" || lang == "*" {
		lang = "neutral"
	}
	return Identity{Name: x.Name, PublicKeyToken: x.PublicKeyToken, Arch: x.ProcessorArchitecture, Language: lang, Version: x.Version}
}

// Classify derives a package's classification. The first rule that matches
// wins:
//  1. releaseType contains "Servicing Stack", or the
//     identity name starts with Package_for_ServicingStack → SERVICING_STACK
//  2. a product or the title contains ".NET", or the
//     identity name starts with Package_for_DotNetRollup   → DOTNET
//  3. the identity name starts with Package_for_RollupFix,
//     or releaseType contains "Cumulative"                → CUMULATIVE_UPDATE
//  4. releaseType contains "Security"                     → SECURITY_UPDATE
//  5. any other non-empty releaseType                     → UPDATE
//  6. no releaseType                                      → UNSPECIFIED
//
// Comparisons ignore case. The package names are those Windows gives its
// servicing stack, .NET and cumulative updates (W10UI.cmd looks for
// Package_for_ServicingStack, Package_for_DotNetRollup and
// Package_for_RollupFix among an image's packages).
func (m *Manifest) Classify() osvcv1.Classification {
	has := func(s, sub string) bool { return strings.Contains(strings.ToLower(s), strings.ToLower(sub)) }
	rt := strings.TrimSpace(m.ReleaseType)
	switch {
	case has(rt, "Servicing Stack") || strings.HasPrefix(strings.ToLower(m.Identity.Name), "package_for_servicingstack"):
		return osvcv1.Classification_CLASSIFICATION_SERVICING_STACK
	case has(m.Title, ".NET") || slices.ContainsFunc(m.Products, func(p string) bool { return has(p, ".NET") }) ||
		strings.HasPrefix(strings.ToLower(m.Identity.Name), "package_for_dotnetrollup"):
		return osvcv1.Classification_CLASSIFICATION_DOTNET
	case strings.HasPrefix(strings.ToLower(m.Identity.Name), "package_for_rollupfix") || has(rt, "Cumulative"):
		return osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE
	case has(rt, "Security"):
		return osvcv1.Classification_CLASSIFICATION_SECURITY_UPDATE
	case rt != "":
		return osvcv1.Classification_CLASSIFICATION_UPDATE
	}
	return osvcv1.Classification_CLASSIFICATION_UNSPECIFIED
}

// Architecture maps the identity's processorArchitecture: amd64→X64,
// x86→X86, arm64→ARM64, neutral→NEUTRAL.
func (m *Manifest) Architecture() osvcv1.Architecture { return architecture(m.Identity.Arch) }

func architecture(arch string) osvcv1.Architecture {
	switch strings.ToLower(arch) {
	case "amd64":
		return osvcv1.Architecture_ARCHITECTURE_X64
	case "x86":
		return osvcv1.Architecture_ARCHITECTURE_X86
	case "arm64":
		return osvcv1.Architecture_ARCHITECTURE_ARM64
	case "neutral":
		return osvcv1.Architecture_ARCHITECTURE_NEUTRAL
	}
	return osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED
}

// Applicability is the package as the applicability rule sees it.
func (m *Manifest) Applicability() applicability.Package {
	return applicability.Package{
		Identity: m.Identity.String(),
		KB:       m.KB,
		Name:     m.Identity.Name,
		Arch:     m.Architecture(),
		Builds:   m.ApplicableBuilds,
		MinBuild: m.MinBuild,
	}
}

// maxManifestBytes bounds each update.mum and component manifest read into
// memory. Windows' manifests are kilobytes (a component's) to some hundreds
// of kilobytes (a cumulative update's update.mum, which lists every package
// it updates): 4 MiB leaves them ample room, and keeps what one import of a
// hostile package decodes at once to tens of megabytes (16 MiB allowed
// about a hundred).
const maxManifestBytes = 4 << 20

// maxPackageManifestBytes bounds all the manifests of one update file
// together (every package of an MSU included), judged from the sizes the
// cabinet declares before they are decompressed: each is parsed and dropped
// before the next, so this bounds the time an import spends, not its
// memory. A package of ten thousand components of a few kilobytes each
// stays under it.
const maxPackageManifestBytes = 64 << 20

// ParseManifest parses update.mum.
func ParseManifest(data []byte) (*Manifest, error) {
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("update.mum is %d bytes, more than the %d allowed", len(data), maxManifestBytes)
	}
	if isDCM(data) {
		return nil, errors.New("update.mum cannot be read: " + dcmError)
	}
	var a xmlAssembly
	if err := decodeXML(data, &a); err != nil {
		return nil, fmt.Errorf("update.mum is not a package manifest (<assembly xmlns=%q>): %w", Namespace, err)
	}
	if a.Identity == nil {
		return nil, errors.New("update.mum has no <assemblyIdentity>: it names no package")
	}
	if a.Package == nil {
		return nil, errors.New("update.mum has no <package> element: it is a component manifest, not a package manifest")
	}
	m := &Manifest{
		Identity:    a.Identity.identity(),
		KB:          strings.TrimSpace(a.Package.Identifier),
		Title:       strings.TrimSpace(a.DisplayName),
		ReleaseType: strings.TrimSpace(a.Package.ReleaseType),
	}
	if err := m.Identity.validate(packageArchs); err != nil {
		return nil, fmt.Errorf("update.mum package identity: %w", err)
	}
	if m.Title == "" || m.Title == "default" {
		m.Title = strings.TrimSpace(a.Description)
	}
	if ts := strings.TrimSpace(a.CreationTimeStamp); ts != "" {
		t, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			return nil, fmt.Errorf("update.mum creationTimeStamp %q is not an RFC 3339 time such as 2023-11-14T00:00:00Z", ts)
		}
		m.Released = t.UTC()
	}
	for _, c := range a.Package.Custom {
		for _, p := range c.Products {
			if name := strings.TrimSpace(p.Name); name != "" {
				m.Products = append(m.Products, name)
			}
		}
		if f := strings.TrimSpace(c.PackageFormat); f != "" && m.PackageFormat == "" {
			m.PackageFormat = f
		}
	}
	m.PSFName = strings.TrimSpace(a.Package.PSFName)
	if err := m.readParents(a.Package.Parents); err != nil {
		return nil, err
	}
	if a.Package.Supersedes != nil {
		for _, x := range a.Package.Supersedes.Identities {
			id := x.identity()
			if err := id.validate(packageArchs); err != nil {
				return nil, fmt.Errorf("update.mum superseded package %q: %w", x.Name, err)
			}
			m.Supersedes = append(m.Supersedes, id.String())
		}
	}
	for _, u := range a.Package.Updates {
		switch {
		case u.Component != nil && u.Component.Identity != nil:
			x := u.Component.Identity
			c := Component{Name: x.Name, Version: x.Version, Arch: x.ProcessorArchitecture, PublicKeyToken: x.PublicKeyToken}
			if err := c.validate(); err != nil {
				return nil, fmt.Errorf("update.mum component %q: %w", x.Name, err)
			}
			m.Components = append(m.Components, c)
		case u.Package != nil && u.Package.Identity != nil:
			// Windows' cumulative updates install packages of their own,
			// each a .mum beside update.mum in the cabinet.
			id := u.Package.Identity.identity()
			if err := id.validate(componentArchs); err != nil {
				return nil, fmt.Errorf("update.mum package %q of update %q: %w", id.Name, u.Name, err)
			}
			m.Packages = append(m.Packages, id)
		default:
			// A driver, an applicability rule or a kind osvc does not know.
			name := strings.TrimSpace(u.Name)
			if len(name) > maxUpdateNameLen || strings.ContainsFunc(name, unicode.IsControl) {
				return nil, fmt.Errorf("update.mum has an <update> whose name is not a name (%d bytes); rebuild the package", len(name))
			}
			m.OtherUpdates = append(m.OtherUpdates, name)
		}
	}
	m.Classification = m.Classify()
	return m, nil
}

// maxUpdateNameLen bounds the name of an <update> osvc keeps to tell what
// it does not install; Windows names them by a KB and a number, or a hash.
const maxUpdateNameLen = 200

// readParents reads the OS builds the package applies to from its
// <parent> elements: each names the packages (the OS foundation, an
// edition) whose version's third part is the build. buildCompare says how
// the build compares: EQ (or no buildCompare) for that build alone, GE for
// it and every later one. Any parent that matches makes the package apply.
func (m *Manifest) readParents(parents []xmlParent) error {
	for _, p := range parents {
		cmp := strings.ToUpper(strings.TrimSpace(p.BuildCompare))
		if cmp != "" && cmp != "EQ" && cmp != "GE" {
			return fmt.Errorf("update.mum <parent buildCompare=%q>: osvc reads EQ and GE, so it cannot tell which OS builds the package applies to", p.BuildCompare)
		}
		for _, x := range p.Identities {
			v, err := parseVersion(x.Version)
			if err != nil {
				return fmt.Errorf("update.mum <parent> %s: %w", x.Name, err)
			}
			b := uint32(v[2])
			switch {
			case cmp == "GE":
				if m.MinBuild == 0 || b < m.MinBuild {
					m.MinBuild = b
				}
			case !slices.Contains(m.ApplicableBuilds, b):
				m.ApplicableBuilds = append(m.ApplicableBuilds, b)
			}
		}
	}
	if m.MinBuild == 0 {
		return nil
	}
	// A build the GE parent covers need not be listed.
	m.ApplicableBuilds = slices.DeleteFunc(m.ApplicableBuilds, func(b uint32) bool { return b >= m.MinBuild })
	if len(m.ApplicableBuilds) == 0 {
		m.ApplicableBuilds = nil
	}
	return nil
}

// decodeXML decodes one document, accepting a UTF-8 byte-order mark and an
// encoding="utf-8" declaration (Windows writes both). A document type
// declaration (<!DOCTYPE>, <!ENTITY>) is refused: Windows manifests have
// none, and one is how XML is made to expand without bound (billion laughs)
// or to read other files (external entities). Go's decoder expands neither,
// but refusing them says plainly what is wrong.
func decodeXML(data []byte, v any) error {
	data = bytes.TrimPrefix(data, []byte{0xEF, 0xBB, 0xBF})
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.CharsetReader = func(charset string, r io.Reader) (io.Reader, error) {
		if strings.EqualFold(charset, "utf-8") || strings.EqualFold(charset, "utf8") {
			return r, nil
		}
		return nil, fmt.Errorf("encoding %q is not supported; write the manifest in UTF-8", charset)
	}
	root := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			if !root {
				return errors.New("the document has no root element")
			}
			return nil
		}
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.Directive:
			word, _, _ := strings.Cut(strings.TrimSpace(string(t)), " ")
			return fmt.Errorf("it declares <!%s ...>: manifests carry no document type or entity declarations, which can expand without bound or read other files; remove it", word)
		case xml.StartElement:
			if root {
				return fmt.Errorf("a second root element <%s> follows the first", t.Name.Local)
			}
			root = true
			if err := dec.DecodeElement(v, &t); err != nil {
				return err
			}
		}
	}
}

// componentArchsOf lists the component architectures a package of each
// architecture may carry. They are those Windows itself installs on that
// platform: an x64 image holds amd64 components, wow64 ones (the 32-bit
// half of an OS component) and x86 ones (side-by-side assemblies for 32-bit
// programs, such as common controls, and the x86 servicing stack); an arm64
// image holds arm64, wow64 and x86 components, and amd64 ones for x64
// emulation; an x86 image only x86 ones. msil (.NET) and neutral
// components go anywhere. A neutral package applies to every image, so it
// may carry only msil and neutral components.
var componentArchsOf = map[string][]string{
	"amd64":   {"amd64", "wow64", "x86", "msil", "neutral"},
	"arm64":   {"arm64", "wow64", "x86", "amd64", "msil", "neutral"},
	"x86":     {"x86", "msil", "neutral"},
	"neutral": {"msil", "neutral"},
}

// checkInstallable checks what installing the package needs beyond the
// manifest's syntax: each component once, of an architecture the package's
// architecture allows (componentArchsOf), with a WinSxS folder name the
// engine can write into an image. (The package's <identity>.mum always is
// one: identities are validated to short plain names.)
func (m *Manifest) checkInstallable() error {
	seen := map[string]bool{}
	for _, c := range m.Components {
		if !slices.Contains(componentArchsOf[m.Identity.Arch], c.Arch) {
			return fmt.Errorf("component %s is %s, which a package for %s cannot carry (it may carry %s); rebuild the package for one architecture",
				c.Name, c.Arch, m.Identity.Arch, strings.Join(componentArchsOf[m.Identity.Arch], ", "))
		}
		sxs := c.SxSName()
		if seen[sxs] {
			return fmt.Errorf("component %s is listed twice in %s; list each component once", c.identity(), ManifestName)
		}
		seen[sxs] = true
		if err := winpath.CheckName(sxs); err != nil {
			return fmt.Errorf("component %s cannot have a WinSxS folder: %w", c.Name, err)
		}
	}
	return nil
}

// validate checks what Marshal needs to write a manifest ParseManifest reads back.
func (m *Manifest) validate() error {
	if err := m.Identity.validate(packageArchs); err != nil {
		return fmt.Errorf("package identity: %w", err)
	}
	if strings.TrimSpace(m.KB) == "" {
		return errors.New("package has no KB (the <package identifier>), e.g. KB5032190")
	}
	if m.Classification != osvcv1.Classification_CLASSIFICATION_UNSPECIFIED && m.Classification != m.Classify() {
		return fmt.Errorf("classification %s does not follow from releaseType %q, name, title and products (they give %s); see Manifest.Classify",
			m.Classification, m.ReleaseType, m.Classify())
	}
	if len(m.Packages) > 0 || len(m.OtherUpdates) > 0 || m.PSFName != "" || m.PackageFormat != "" {
		return errors.New("nested packages, other updates and PSF payload are Windows' own package shape, which osvc reads but does not write")
	}
	for _, s := range m.Supersedes {
		if _, err := ParseIdentity(s); err != nil {
			return fmt.Errorf("superseded package: %w", err)
		}
	}
	for _, c := range m.Components {
		if err := c.validate(); err != nil {
			return fmt.Errorf("component %q: %w", c.Name, err)
		}
		if _, err := c.cleanFiles(); err != nil {
			return err
		}
	}
	// Marshal writes only what Open accepts.
	return m.checkInstallable()
}

// Marshal returns the update.mum XML.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("update.mum: %w", err)
	}
	id := toXMLIdentity(m.Identity)
	a := xmlAssembly{
		ManifestVersion:    "1.0",
		Description:        "Fix for " + m.KB,
		DisplayName:        m.Title,
		Company:            "Microsoft Corporation",
		Copyright:          "Microsoft Corporation",
		SupportInformation: "https://support.microsoft.com/help/" + strings.TrimPrefix(strings.ToUpper(m.KB), "KB"),
		Identity:           &id,
		Package: &xmlPackage{
			Identifier:  m.KB,
			ReleaseType: m.ReleaseType,
			Restart:     "possible",
			Permanence:  "removable",
		},
	}
	if m.Title == "" {
		a.DisplayName = "default"
	}
	if !m.Released.IsZero() {
		a.CreationTimeStamp = m.Released.UTC().Format(time.RFC3339)
		a.LastUpdateTimeStamp = a.CreationTimeStamp
	}
	if len(m.Products) > 0 {
		custom := xmlCustom{}
		for _, p := range m.Products {
			custom.Products = append(custom.Products, xmlProduct{Name: p})
		}
		a.Package.Custom = []xmlCustom{custom}
	}
	parent := func(compare string, b uint32) error {
		if b > 65535 {
			return fmt.Errorf("update.mum: applicable build %d is not a Windows build number", b)
		}
		a.Package.Parents = append(a.Package.Parents, xmlParent{
			BuildCompare: compare, RevisionCompare: "GE", Integrate: "separate", Disposition: "detect",
			Identities: []xmlIdentity{toXMLIdentity(Identity{
				Name: ParentName, PublicKeyToken: m.Identity.PublicKeyToken, Arch: m.Identity.Arch,
				Language: "neutral", Version: fmt.Sprintf("10.0.%d.0", b),
			})},
		})
		return nil
	}
	for _, b := range m.ApplicableBuilds {
		if m.MinBuild != 0 && b >= m.MinBuild {
			return nil, fmt.Errorf("update.mum: applicable build %d is covered by MinBuild %d; list only earlier builds", b, m.MinBuild)
		}
		if err := parent("EQ", b); err != nil {
			return nil, err
		}
	}
	if m.MinBuild != 0 {
		if err := parent("GE", m.MinBuild); err != nil {
			return nil, err
		}
	}
	if len(m.Supersedes) > 0 {
		a.Package.Supersedes = &xmlSupersede{}
		for _, s := range m.Supersedes {
			sid, _ := ParseIdentity(s) // checked by validate
			a.Package.Supersedes.Identities = append(a.Package.Supersedes.Identities, toXMLIdentity(sid))
		}
	}
	for _, c := range m.Components {
		x := componentXMLIdentity(c)
		a.Package.Updates = append(a.Package.Updates, xmlUpdate{Name: c.Name, Component: &xmlComponent{Identity: &x}})
	}
	return marshalXML(a)
}

func componentXMLIdentity(c Component) xmlIdentity {
	x := toXMLIdentity(c.identity())
	x.VersionScope = "nonSxS"
	return x
}

func marshalXML(a xmlAssembly) ([]byte, error) {
	out, err := xml.MarshalIndent(a, "", "  ")
	if err != nil {
		return nil, err
	}
	// Windows writes these elements, which never have content, self-closed.
	for _, el := range []string{"assemblyIdentity", "product", "file"} {
		out = bytes.ReplaceAll(out, []byte("></"+el+">"), []byte("/>"))
	}
	return append([]byte(`<?xml version="1.0" encoding="utf-8" standalone="yes"?>`+"\n"), append(out, '\n')...), nil
}

// MarshalComponentManifest returns a component's manifest
// (<SxSName>.manifest): its identity and one <file> per payload file.
func MarshalComponentManifest(c Component) ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("component manifest %q: %w", c.Name, err)
	}
	x := componentXMLIdentity(c)
	a := xmlAssembly{ManifestVersion: "1.0", Identity: &x}
	files, err := c.cleanFiles()
	if err != nil {
		return nil, fmt.Errorf("component manifest: %w", err)
	}
	for _, clean := range files {
		name := strings.ReplaceAll(clean, "/", `\`)
		a.Files = append(a.Files, xmlFile{Name: name, SourceName: name})
	}
	return marshalXML(a)
}

// ParseComponentManifest parses a component manifest (<SxSName>.manifest).
// File names come back '/'-separated; a name that would escape the payload
// folder is an error.
func ParseComponentManifest(data []byte) (Component, error) {
	if len(data) > maxManifestBytes {
		return Component{}, fmt.Errorf("component manifest is %d bytes, more than the %d allowed", len(data), maxManifestBytes)
	}
	if isDCM(data) {
		return Component{}, errors.New("the component manifest cannot be read: " + dcmError)
	}
	var a xmlAssembly
	if err := decodeXML(data, &a); err != nil {
		return Component{}, fmt.Errorf("not a component manifest (<assembly xmlns=%q>): %w", Namespace, err)
	}
	if a.Identity == nil {
		return Component{}, errors.New("component manifest has no <assemblyIdentity>")
	}
	x := a.Identity
	c := Component{Name: x.Name, Version: x.Version, Arch: x.ProcessorArchitecture, PublicKeyToken: x.PublicKeyToken}
	if err := c.validate(); err != nil {
		return Component{}, fmt.Errorf("component manifest identity: %w", err)
	}
	for _, f := range a.Files {
		c.Files = append(c.Files, f.Name)
	}
	files, err := c.cleanFiles()
	if err != nil {
		return Component{}, err
	}
	c.Files = files
	return c, nil
}

// cleanFiles returns the component's file names clean (see package
// winpath), refusing a name Windows cannot hold or two names that are one
// file on Windows.
func (c Component) cleanFiles() ([]string, error) {
	var out []string
	seen := map[string]string{}
	for _, f := range c.Files {
		clean, err := winpath.Clean(f)
		if err != nil {
			return nil, fmt.Errorf("component %s file: %w", c.Name, err)
		}
		if prev, ok := seen[winpath.Key(clean)]; ok {
			return nil, fmt.Errorf("component %s lists %q and %q, which are one file on Windows; list each file once", c.Name, prev, f)
		}
		seen[winpath.Key(clean)] = f
		out = append(out, clean)
	}
	return out, nil
}
