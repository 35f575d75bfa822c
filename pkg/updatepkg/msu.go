package updatepkg

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// What an MSU holds besides its package cabinets, as Microsoft ships it.
// Microsoft's "Description of the Windows Update Standalone Installer"
// (KB934307) lists Windows Update metadata (WSUSSCAN.cab), one or more
// .cab files, an .xml file (the unattend file Pkgmgr.exe and DISM take) and
// a properties file read by Wusa.exe (<name>-pkgProperties.txt).
// abbodi1406/BatUtil's W10UI.cmd (W10MUI/Updates/W10UI.cmd) handles the
// MSUs of Windows 11: beside the cabinets of the update and its servicing
// stack (SSU-<version>-<arch>.cab) they may hold DesktopDeployment.cab,
// DesktopDeployment_x86.cab and <name>.AggregatedMetadata.cab, the
// update's payload as <name>.psf, and the update itself as <name>.wim; and
// an MSU may itself be a WIM archive rather than a cabinet.

// propertiesSuffix ends the name of an MSU's properties file.
const propertiesSuffix = "-pkgProperties.txt"

// maxPropertiesBytes bounds an MSU's properties file: fourteen short
// key="value" lines in Microsoft's MSUs.
const maxPropertiesBytes = 64 << 10

// maxUnattendBytes bounds an MSU's unattend .xml: one <package> per
// cabinet, a kilobyte or so.
const maxUnattendBytes = 1 << 20

// maxPropertyValueLen bounds one value of a properties file (the longest,
// ApplicabilityInfo, lists the Windows editions the update is for).
const maxPropertyValueLen = 4096

var propertyKeyPattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9 ._-]{0,63}$`)

// isMetadataCab tells the cabinets of an MSU that hold no package: Windows
// Update's scan metadata and the deployment and metadata cabinets of
// Windows 11 MSUs.
func isMetadataCab(base string) bool {
	lower := strings.ToLower(base)
	return lower == "wsusscan.cab" || strings.HasPrefix(lower, "desktopdeployment") ||
		strings.Contains(lower, ".aggregatedmetadata")
}

// isPropertiesFile tells an MSU's properties file by its name.
func isPropertiesFile(name string) bool { return hasSuffixFold(path.Base(name), propertiesSuffix) }

// parseProperties reads an MSU's properties file: lines Key="value"
// (Microsoft's MSUs quote every value; an unquoted one is taken as is),
// in UTF-8 or, with a byte-order mark, UTF-16. tksh164/updb.dnc
// (src/updblib/Gathering/UpdatePackagePropertiesFromPropertyFile.cs) reads
// the same lines, keys ApplicabilityInfo, Applies to, Build Date, Company,
// File Version, Installation Type, Installer Engine, Installer Version, KB
// Article Number, Language, Package Type, Processor Architecture, Product
// Name and Support Link. Keys osvc does not use are kept; a line that is
// not Key=value, a key twice, or a control character refuses the file.
func parseProperties(data []byte) (map[string]string, error) {
	text, err := decodeText(data)
	if err != nil {
		return nil, err
	}
	props := map[string]string{}
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch {
		case !ok || !propertyKeyPattern.MatchString(key):
			return nil, fmt.Errorf("line %d is not Key=\"value\" with a key of letters, digits and spaces", n+1)
		case len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"':
			value = value[1 : len(value)-1]
		case strings.Contains(value, `"`):
			return nil, fmt.Errorf("line %d (%s): the value's quotes do not match", n+1, key)
		}
		if len(value) > maxPropertyValueLen || strings.ContainsFunc(value, unicode.IsControl) {
			return nil, fmt.Errorf("line %d (%s): the value is longer than %d bytes or holds control characters", n+1, key, maxPropertyValueLen)
		}
		if _, dup := props[key]; dup {
			return nil, fmt.Errorf("line %d: %s is set twice", n+1, key)
		}
		props[key] = value
	}
	return props, nil
}

// decodeText decodes a text file in UTF-8 (a byte-order mark is accepted)
// or, with a byte-order mark, UTF-16.
func decodeText(data []byte) (string, error) {
	var units []uint16
	switch {
	case bytes.HasPrefix(data, []byte{0xEF, 0xBB, 0xBF}):
		data = data[3:]
	case bytes.HasPrefix(data, []byte{0xFF, 0xFE}), bytes.HasPrefix(data, []byte{0xFE, 0xFF}):
		if len(data)%2 != 0 {
			return "", errors.New("it is UTF-16 with an odd number of bytes")
		}
		for i := 2; i < len(data); i += 2 {
			if data[0] == 0xFF {
				units = append(units, uint16(data[i])|uint16(data[i+1])<<8)
			} else {
				units = append(units, uint16(data[i])<<8|uint16(data[i+1]))
			}
		}
		text := string(utf16.Decode(units))
		if strings.ContainsRune(text, utf8.RuneError) {
			return "", errors.New("it is not valid UTF-16")
		}
		return text, nil
	}
	if !utf8.Valid(data) {
		return "", errors.New("it is neither UTF-8 nor UTF-16 with a byte-order mark")
	}
	return string(data), nil
}

// unattendNamespace is the namespace of the unattend .xml of an MSU.
const unattendNamespace = "urn:schemas-microsoft-com:unattend"

// unattendPackage is one <servicing><package> of an MSU's unattend file:
// the package identity and the cabinet that holds it,
// %configsetroot%\<name>.cab (tksh164/updb.dnc,
// src/updblib/Gathering/UpdatePackageMetadataFromXmlFile.cs, reads the
// same: /unattend/servicing/package/assemblyIdentity and source/@location).
type unattendPackage struct {
	Identity Identity
	// Source is the base name of the cabinet, as the location gives it.
	Source string
}

type xmlUnattend struct {
	XMLName   xml.Name `xml:"unattend"`
	Servicing []struct {
		Packages []struct {
			Identity *xmlIdentity `xml:"assemblyIdentity"`
			Source   *struct {
				Location string `xml:"location,attr"`
			} `xml:"source"`
		} `xml:"package"`
	} `xml:"servicing"`
}

// parseUnattend reads the packages an MSU's unattend file names. It must
// be an <unattend> document without a document type declaration.
func parseUnattend(data []byte) ([]unattendPackage, error) {
	var u xmlUnattend
	if err := decodeXML(data, &u); err != nil {
		return nil, fmt.Errorf("not an unattend file (<unattend xmlns=%q>): %w", unattendNamespace, err)
	}
	if u.XMLName.Space != "" && u.XMLName.Space != unattendNamespace {
		return nil, fmt.Errorf("not an unattend file: its namespace is %q, not %q", u.XMLName.Space, unattendNamespace)
	}
	var out []unattendPackage
	for _, s := range u.Servicing {
		for _, p := range s.Packages {
			if p.Identity == nil {
				return nil, errors.New("a <package> names no <assemblyIdentity>")
			}
			up := unattendPackage{Identity: p.Identity.identity()}
			if err := up.Identity.validate(packageArchs); err != nil {
				return nil, fmt.Errorf("package %q: %w", p.Identity.Name, err)
			}
			if p.Source != nil {
				loc := strings.TrimSpace(p.Source.Location)
				up.Source = loc[strings.LastIndexAny(loc, `\/`)+1:]
			}
			out = append(out, up)
		}
	}
	return out, nil
}

// What the catalog records of a package: the MSU's own package's manifest,
// completed by the MSU's properties file and the file's name.

var (
	kbIdentifierPattern = regexp.MustCompile(`(?i)^KB(\d{1,10})$`)
	kbNumberPattern     = regexp.MustCompile(`(?i)^(?:KB)?(\d{1,10})$`)
	kbInNamePattern     = regexp.MustCompile(`(?i)KB(\d{1,10})`)
)

// KB is the package's Knowledge Base article, written KB<number>: from
// update.mum's package identifier when that is one (Windows' feature and
// language packages are identified by name), else the properties file's
// "KB Article Number", else the file name's KB<number>; empty when none
// has one.
func (p *Package) KB() string {
	if m := kbIdentifierPattern.FindStringSubmatch(strings.TrimSpace(p.Manifest.KB)); m != nil {
		return "KB" + m[1]
	}
	if m := kbNumberPattern.FindStringSubmatch(p.Properties["KB Article Number"]); m != nil {
		return "KB" + m[1]
	}
	if m := kbInNamePattern.FindStringSubmatch(p.Name); m != nil {
		return "KB" + m[1]
	}
	return ""
}

// Title is the package's title: update.mum's displayName; when Windows
// left that "default" (its packages do, their description being "Fix for
// KB<number>"), "<Package Type> for <Product Name> (<KB>)" from the
// properties file; else the description; else the file name.
func (p *Package) Title() string {
	m := p.Manifest
	described := m.Title == "" || strings.EqualFold(m.Title, "Fix for "+strings.TrimSpace(m.KB))
	if !described {
		return m.Title
	}
	kind, product := p.Properties["Package Type"], p.Properties["Product Name"]
	if kind != "" && product != "" {
		if kb := p.KB(); kb != "" {
			return fmt.Sprintf("%s for %s (%s)", kind, product, kb)
		}
		return kind + " for " + product
	}
	if m.Title != "" {
		return m.Title
	}
	return p.Name
}

// Products are the products update.mum names, else the properties file's
// "Product Name".
func (p *Package) Products() []string {
	if len(p.Manifest.Products) > 0 {
		return slices.Clone(p.Manifest.Products)
	}
	if name := p.Properties["Product Name"]; name != "" {
		return []string{name}
	}
	return nil
}
