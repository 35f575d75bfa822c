// Package applicability holds the one rule that says whether an update
// package applies to an image index. The catalog asks it when it lists the
// updates applicable to an image, and the engines ask it before they install
// a package, so both answer alike.
//
// A package applies to an index when
//   - its architecture is NEUTRAL (or not known: a file that is no package)
//     or the index's,
//   - it names no OS build, or its builds hold the index's build, or the
//     index's build is its minimum build or later,
//   - it is not installed in the index, and
//   - no package installed in the index supersedes it (by identity or KB).
package applicability

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Package is what the rule needs to know of an update package.
type Package struct {
	// Identity is the package identity, e.g.
	// Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.2428.1.0; empty
	// for a file that is not a package (an .exe).
	Identity string
	// KB is the package's KB, e.g. KB5031354, in any case or spelling.
	KB string
	// Name is what the package is called in messages (the catalog's name
	// or the identity's name part).
	Name string
	// Update is the catalog's name of the update (updates/{id}), when known.
	Update string
	// Arch is the package's processor architecture.
	Arch osvcv1.Architecture
	// Builds lists the OS builds the package applies to exactly; with
	// MinBuild 0, empty means any.
	Builds []uint32
	// MinBuild, when not 0, makes the package apply to every OS build from
	// it on, besides Builds.
	MinBuild uint32
}

// appliesToBuild tells whether the package's OS builds take build.
func (p Package) appliesToBuild(build uint32) bool {
	if len(p.Builds) == 0 && p.MinBuild == 0 {
		return true
	}
	return slices.Contains(p.Builds, build) || (p.MinBuild != 0 && build >= p.MinBuild)
}

// BuildsText says which OS builds the package applies to, for messages:
// "22621, 22631", "19041 and later", "any".
func (p Package) BuildsText() string {
	parts := make([]string, 0, len(p.Builds)+1)
	for _, b := range p.Builds {
		parts = append(parts, strconv.FormatUint(uint64(b), 10))
	}
	if p.MinBuild != 0 {
		parts = append(parts, strconv.FormatUint(uint64(p.MinBuild), 10)+" and later")
	}
	if len(parts) == 0 {
		return "any"
	}
	return strings.Join(parts, ", ")
}

// Installed is a package installed in an index.
type Installed struct {
	Identity string
	KB       string
	// Update is the catalog's name of the installed update, when known.
	Update string
	// Supersedes lists the identities (or KBs) of the packages this one
	// replaces, as its manifest (or its catalog update) says.
	Supersedes []string
}

// Index is an image index with what it has installed.
type Index struct {
	Number int
	Arch   osvcv1.Architecture
	Build  uint32

	installed map[string]bool // lower-cased identities and catalog names
	// superseded maps lower-cased identities and normalized KBs to the
	// identity of the installed package that supersedes them.
	superseded map[string]string
}

// NewIndex describes index number of architecture arch and build, with the
// packages installed in it.
func NewIndex(number int, arch osvcv1.Architecture, build uint32, installed []Installed) *Index {
	ix := &Index{Number: number, Arch: arch, Build: build, installed: map[string]bool{}, superseded: map[string]string{}}
	for _, in := range installed {
		if in.Identity != "" {
			ix.installed[strings.ToLower(in.Identity)] = true
		}
		if in.Update != "" {
			ix.installed[in.Update] = true
		}
		by := cmp.Or(in.Identity, in.Update, in.KB)
		for _, s := range in.Supersedes {
			ix.superseded[strings.ToLower(s)] = by
			if kb := NormalizeKB(s); kb != "" {
				ix.superseded[kb] = by
			}
		}
	}
	return ix
}

// Verdict is the rule's answer.
type Verdict int

const (
	// Applies: the package should be installed.
	Applies Verdict = iota
	// WrongArchitecture: the package is for another architecture.
	WrongArchitecture
	// WrongBuild: the package is for other OS builds.
	WrongBuild
	// AlreadyInstalled: the index has the package installed.
	AlreadyInstalled
	// Superseded: a package installed in the index replaces this one.
	Superseded
)

func (v Verdict) String() string {
	switch v {
	case Applies:
		return "applies"
	case WrongArchitecture:
		return "wrong architecture"
	case WrongBuild:
		return "wrong build"
	case AlreadyInstalled:
		return "already installed"
	case Superseded:
		return "superseded"
	}
	return "unknown"
}

// Check applies the rule and says why a package does not apply, in a
// sentence an administrator reads in a run's results.
func Check(p Package, ix *Index) (Verdict, string) {
	name := p.Name
	if name == "" {
		name = p.Identity
	}
	switch p.Arch {
	case osvcv1.Architecture_ARCHITECTURE_NEUTRAL, osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED, ix.Arch:
	default:
		return WrongArchitecture, fmt.Sprintf("%s is for %s; index %d is %s", name, ArchName(p.Arch), ix.Number, ArchName(ix.Arch))
	}
	if !p.appliesToBuild(ix.Build) {
		return WrongBuild, fmt.Sprintf("%s applies to OS builds %s; index %d is build %d", name, p.BuildsText(), ix.Number, ix.Build)
	}
	if (p.Identity != "" && ix.installed[strings.ToLower(p.Identity)]) || (p.Update != "" && ix.installed[p.Update]) {
		return AlreadyInstalled, fmt.Sprintf("%s is already installed in index %d", name, ix.Number)
	}
	if by, ok := ix.supersededBy(p.Identity, p.KB); ok {
		return Superseded, fmt.Sprintf("%s is superseded by installed package %s in index %d", name, by, ix.Number)
	}
	return Applies, ""
}

// Supersedes tells whether a package whose supersedes list is list
// replaces the package of identity (or KB), as Check matches them.
func Supersedes(list []string, identity, kb string) bool {
	_, ok := NewIndex(0, 0, 0, []Installed{{Supersedes: list}}).supersededBy(identity, kb)
	return ok
}

// supersededBy names the installed package that supersedes the package of
// identity (or KB).
func (ix *Index) supersededBy(identity, kb string) (string, bool) {
	if identity != "" {
		if by, ok := ix.superseded[strings.ToLower(identity)]; ok {
			return by, true
		}
	}
	if kb = NormalizeKB(kb); kb != "" {
		if by, ok := ix.superseded[kb]; ok {
			return by, true
		}
	}
	return "", false
}

// NormalizeKB writes a KB as KB5031354 whatever its case, and returns ""
// for a string that is not a KB (an identity, say).
func NormalizeKB(s string) string {
	s = strings.TrimSpace(s)
	digits, ok := strings.CutPrefix(strings.ToUpper(s), "KB")
	if !ok || digits == "" {
		return ""
	}
	for _, r := range digits {
		if r < '0' || r > '9' {
			return ""
		}
	}
	return "KB" + digits
}

// ArchName is the architecture as administrators write it: x86, x64,
// arm64, neutral.
func ArchName(a osvcv1.Architecture) string {
	switch a {
	case osvcv1.Architecture_ARCHITECTURE_X64:
		return "x64"
	case osvcv1.Architecture_ARCHITECTURE_X86:
		return "x86"
	case osvcv1.Architecture_ARCHITECTURE_ARM64:
		return "arm64"
	case osvcv1.Architecture_ARCHITECTURE_NEUTRAL:
		return "neutral"
	}
	return "an unknown architecture"
}
