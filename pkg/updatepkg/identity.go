package updatepkg

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Identity is a package identity as DISM prints it.
type Identity struct{ Name, PublicKeyToken, Arch, Language, Version string }

// String returns the DISM package identity Name~Token~Arch~Lang~Version. A
// "neutral" (or empty) language is written empty, as DISM does:
// Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.2428.1.10.
func (id Identity) String() string {
	lang := id.Language
	if strings.EqualFold(lang, "neutral") {
		lang = ""
	}
	return id.Name + "~" + id.PublicKeyToken + "~" + id.Arch + "~" + lang + "~" + id.Version
}

// ParseIdentity parses Name~Token~Arch~Lang~Version. An empty language
// reads as "neutral". It accepts every architecture DISM prints (also wow64
// and msil), not only those a package manifest may declare.
func ParseIdentity(s string) (Identity, error) {
	parts := strings.Split(s, "~")
	if len(parts) != 5 {
		return Identity{}, fmt.Errorf("package identity %q does not have the form Name~PublicKeyToken~Arch~Language~Version", s)
	}
	id := Identity{Name: parts[0], PublicKeyToken: parts[1], Arch: parts[2], Language: parts[3], Version: parts[4]}
	if id.Language == "" {
		id.Language = "neutral"
	}
	if err := id.validate(componentArchs); err != nil {
		return Identity{}, fmt.Errorf("package identity %q: %w", s, err)
	}
	return id, nil
}

// The architectures a package identity may name, and those of components
// (WinSxS also knows wow64 and msil components).
var (
	packageArchs   = []string{"amd64", "x86", "arm64", "neutral"}
	componentArchs = []string{"amd64", "x86", "arm64", "wow64", "msil", "neutral"}

	namePattern     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$`)
	tokenPattern    = regexp.MustCompile(`^[0-9a-fA-F]{16}$`)
	languagePattern = regexp.MustCompile(`^(neutral|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)$`)
)

func (id Identity) validate(archs []string) error {
	if !namePattern.MatchString(id.Name) {
		return fmt.Errorf("name %q must be 1 to 200 letters, digits, '.', '_' or '-'", id.Name)
	}
	if !tokenPattern.MatchString(id.PublicKeyToken) {
		return fmt.Errorf("publicKeyToken %q must be 16 hexadecimal digits, e.g. 31bf3856ad364e35", id.PublicKeyToken)
	}
	if err := checkArch(id.Arch, archs); err != nil {
		return err
	}
	if !languagePattern.MatchString(id.Language) {
		return fmt.Errorf("language %q must be \"neutral\" or a culture name such as en-US", id.Language)
	}
	if _, err := parseVersion(id.Version); err != nil {
		return err
	}
	return nil
}

func checkArch(arch string, archs []string) error {
	for _, a := range archs {
		if arch == a {
			return nil
		}
	}
	return fmt.Errorf("processorArchitecture %q must be one of %s", arch, strings.Join(archs, ", "))
}

// parseVersion reads a four-part version a.b.c.d, each part 0 to 65535.
func parseVersion(v string) ([4]uint16, error) {
	var out [4]uint16
	parts := strings.Split(v, ".")
	if len(parts) != 4 {
		return out, fmt.Errorf("version %q must have four numeric parts, e.g. 10.0.22621.2715", v)
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || p == "" || (len(p) > 1 && p[0] == '0') {
			return out, fmt.Errorf("version %q must have four numeric parts, e.g. 10.0.22621.2715", v)
		}
		out[i] = uint16(n)
	}
	return out, nil
}

// CompareVersions compares two four-part versions numerically: -1 if a < b,
// 0 if equal, +1 if a > b. A version that does not parse sorts first.
func CompareVersions(a, b string) int {
	va, ea := parseVersion(a)
	vb, eb := parseVersion(b)
	switch {
	case ea != nil && eb != nil:
		return strings.Compare(a, b)
	case ea != nil:
		return -1
	case eb != nil:
		return 1
	}
	for i := range va {
		if va[i] != vb[i] {
			if va[i] < vb[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// Component is one component a package installs. Files are paths relative
// to the component's payload folder, '/'-separated.
type Component struct {
	Name, Version, Arch, PublicKeyToken string
	Files                               []string
}

func (c Component) identity() Identity {
	return Identity{Name: c.Name, PublicKeyToken: c.PublicKeyToken, Arch: c.Arch, Language: "neutral", Version: c.Version}
}

func (c Component) validate() error {
	return c.identity().validate(componentArchs)
}

// sxsHash is the last field of a WinSxS folder name: the first 8 bytes of
// the SHA-256 of the lower-cased component identity, in hex.
func (c Component) sxsHash() string {
	sum := sha256.Sum256([]byte(strings.ToLower(c.identity().String())))
	return hex.EncodeToString(sum[:8])
}

// SxSName is the WinSxS folder name:
// <arch>_<name>_<token>_<version>_none_<16 hex of sha256(identity)>, all
// lower case like Windows' own, e.g.
// amd64_microsoft-windows-kernel_31bf3856ad364e35_10.0.22621.2715_none_6f0c0e2b5d7a4f1c.
// The identity hashed is the lower-cased name~token~arch~~version. It is
// also the name of the component's manifest (<SxSName>.manifest) and
// payload folder in a package.
func (c Component) SxSName() string {
	return strings.ToLower(c.Arch + "_" + c.Name + "_" + c.PublicKeyToken + "_" + c.Version + "_none_" + c.sxsHash())
}

// ParseSxSName parses a WinSxS folder name made by SxSName. The name comes
// back lower-cased. Folders whose hash does not match their fields (such as
// Windows' own, whose hash is computed differently) are not recognised.
func ParseSxSName(dir string) (Component, bool) {
	parts := strings.Split(dir, "_")
	n := len(parts)
	if n < 6 || parts[n-2] != "none" {
		return Component{}, false
	}
	c := Component{
		Arch:           parts[0],
		Name:           strings.Join(parts[1:n-4], "_"),
		PublicKeyToken: parts[n-4],
		Version:        parts[n-3],
	}
	if c.validate() != nil || c.SxSName() != dir {
		return Component{}, false
	}
	return c, true
}
