package updatepkg

import (
	"bytes"
	"fmt"
	"path"
	"strings"

	"github.com/osvc/osvc/pkg/cab"
)

// dcmMagic starts a component manifest Windows compressed as a delta
// against a base manifest kept in its servicing stack (wcp.dll), which only
// Windows' delta API expands. SafeBreach-Labs/WindowsDowndate
// (windows_downdate/manifest_utils.py) reads such manifests by their
// "DCM\x01" header.
var dcmMagic = []byte("DCM\x01")

// isDCM tells whether data is a DCM-compressed manifest.
func isDCM(data []byte) bool { return bytes.HasPrefix(data, dcmMagic) }

// dcmError is how a DCM-compressed manifest is refused where osvc needs to
// read it.
const dcmError = "it is compressed with Windows' DCM delta format (it starts with DCM\\x01), which only Windows' servicing stack expands; osvc's packages carry plain XML manifests"

// listed names a few of names for a message: "a, b, c and 4 more".
func listed(names []string) string { return listedUpTo(names, 3) }

// listedUpTo names at most most of names for a message: "a and 4 more".
func listedUpTo(names []string, most int) string {
	if len(names) <= most {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:most], ", "), len(names)-most)
}

func hasSuffixFold(name, suffix string) bool {
	return len(name) >= len(suffix) && strings.EqualFold(name[len(name)-len(suffix):], suffix)
}

// windowsShape lists why a package cabinet is one Windows built rather than
// one in osvc's shape, from its member table and update.mum; none means
// osvc's shape. Such a package is read for what the catalog records, but
// the wimlib engine does not install it: each reason says what it would
// leave out. (DCM-compressed manifests are found when the members are read.)
func windowsShape(m *Manifest, r *cab.Reader) []string {
	var cats, cabs, cix []string
	for _, f := range r.Files() {
		base := path.Base(f.Name)
		switch {
		case hasSuffixFold(base, ".cat"):
			cats = append(cats, base)
		case hasSuffixFold(base, ".cab"):
			cabs = append(cabs, f.Name)
		case hasSuffixFold(base, ".psf.cix.xml"):
			cix = append(cix, base)
		}
	}
	var reasons []string
	if len(cats) > 0 {
		reasons = append(reasons, fmt.Sprintf("it is signed with Windows' catalogs (%s), so Windows built it: its components are named by Windows' own WinSxS hash, which the wimlib engine does not reproduce", listedUpTo(cats, 1)))
	}
	if len(m.Packages) > 0 {
		names := make([]string, len(m.Packages))
		for i, id := range m.Packages {
			names[i] = id.Name
		}
		reasons = append(reasons, fmt.Sprintf("update.mum installs packages of its own (%d: %s), which the wimlib engine does not install", len(m.Packages), listedUpTo(names, 2)))
	}
	if len(m.OtherUpdates) > 0 {
		reasons = append(reasons, fmt.Sprintf("update.mum has updates that install no component (drivers or applicability rules, %d: %s), which the wimlib engine does not install", len(m.OtherUpdates), listed(m.OtherUpdates)))
	}
	var psf []string
	if m.PSFName != "" {
		psf = append(psf, "psfName "+m.PSFName)
	}
	if strings.EqualFold(m.PackageFormat, "PSFX") {
		psf = append(psf, "PackageFormat PSFX")
	}
	psf = append(psf, cix...)
	if len(psf) > 0 {
		reasons = append(reasons, fmt.Sprintf("its payload is in a PSF file beside the cabinet (express: %s), which the wimlib engine cannot expand", listed(psf)))
	}
	if len(cabs) > 0 {
		reasons = append(reasons, fmt.Sprintf("it holds cabinets (%s), which the wimlib engine does not install", listed(cabs)))
	}
	return reasons
}

// dcmReason says why a package whose manifests are DCM-compressed is not installed.
func dcmReason(names []string) string {
	return fmt.Sprintf("its component manifests are compressed with Windows' DCM delta format (%d of them), which only Windows' servicing stack (wcp.dll) expands", len(names))
}
