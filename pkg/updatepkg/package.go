package updatepkg

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/cab"
	"github.com/osvc/osvc/pkg/winpath"
)

// ErrUnsupported is returned for a file that is not a CAB or MSU update
// package osvc can read (e.g. an .exe, a driver cabinet, a Quantum cabinet).
var ErrUnsupported = errors.New("unsupported update file: not a CAB or MSU package osvc can read")

// ErrInvalid is wrapped by the error about a file that is an update package
// but one osvc refuses to install: damaged, or breaking a rule of the
// package shape (see the package documentation). The message names the
// file, says what is wrong and what to do.
var ErrInvalid = errors.New("invalid update package")

// ManifestName is the package manifest's member name.
const ManifestName = "update.mum"

// Package is an update file read and validated by Open: everything Stage
// will write is known, checked and fingerprinted.
type Package struct {
	Path string
	// Name is how errors name the file (its base name, or the name given
	// to OpenAs).
	Name string
	// MSU is true for an MSU: a cabinet of package cabinets.
	MSU bool
	// Manifest is the package's update.mum; for an MSU, its own package's (the one
	// its properties or unattend file names, else the last that is not a
	// servicing stack: see the package documentation).
	Manifest *Manifest
	// Manifests are the manifests of the packages Stage returns, in order:
	// one for a CAB, one per inner package for an MSU.
	Manifests []*Manifest
	// Properties is an MSU's properties file (<name>-pkgProperties.txt),
	// key to value; nil without one.
	Properties map[string]string
	// NotInstallable says why the wimlib engine cannot apply the file
	// faithfully, one reason each: a package Windows built (nested
	// packages, DCM-compressed manifests, PSF payload, Windows' catalogs
	// and WinSxS names), an MSU with PSF payload. osvc read it all the
	// same, for the catalog and the dism engine; Stage refuses it. Empty
	// for packages in osvc's shape.
	NotInstallable []string

	parts []*part
}

// part is one package of a file, as Open validated it.
type part struct {
	// label names it in errors: the file name, and for an MSU the inner cabinet's.
	label string
	// member is, in an MSU, the inner cabinet's member name; sum and size
	// fingerprint it.
	member string
	sum    [sha256.Size]byte
	size   int64

	manifest *Manifest
	// files are the members Stage writes, by stored member name.
	files map[string]stagedFile
	// notInstallable says why the wimlib engine does not install the
	// package (it is one Windows built); Stage writes nothing then.
	notInstallable []string
}

// stagedFile is one member Stage writes: where, and what it must hold.
type stagedFile struct {
	dest string // clean, '/'-separated, relative to the package's staging folder
	size int64
	sum  [sha256.Size]byte
}

func unsupported(name, format string, args ...any) error {
	return fmt.Errorf("%s: %w: "+format, append([]any{name, ErrUnsupported}, args...)...)
}

func invalid(name, format string, args ...any) error {
	return fmt.Errorf("%s: %w: "+format, append([]any{name, ErrInvalid}, args...)...)
}

// wrapCabErr classifies an error of the cabinet reader: a compression it
// cannot read makes the file unsupported, damage makes it invalid.
func wrapCabErr(name string, err error) error {
	switch {
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrUnsupported):
		return err
	case errors.Is(err, cab.ErrUnsupportedCompression):
		return fmt.Errorf("%s: %w: %w", name, ErrUnsupported, err)
	case errors.Is(err, cab.ErrDamaged), errors.Is(err, cab.ErrMultiPart):
		return fmt.Errorf("%s: %w: %w; download the file again, or rebuild it", name, ErrInvalid, err)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// openCab opens path as a cabinet; anything that is not one is ErrUnsupported.
func openCab(path, name string) (*os.File, *cab.Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open update %s: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("open update %s: %w", name, err)
	}
	r, err := cab.NewReader(f, st.Size())
	if err != nil {
		f.Close()
		if errors.Is(err, cab.ErrNotCabinet) {
			if IsWIM(path) {
				return nil, nil, unsupported(name, "the file is a WIM archive, as Microsoft packs some MSUs since Windows 11, version 24H2; osvc reads cabinets, the dism engine applies it")
			}
			return nil, nil, unsupported(name, "the file is not a cabinet")
		}
		return nil, nil, wrapCabErr(name, err)
	}
	return f, r, nil
}

// IsWIM tells whether the file at path starts as a WIM archive does
// ("MSWIM\0\0\0"): W10UI.cmd opens MSUs of Windows 11 as WIMs.
func IsWIM(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, len(wimMagic))
	_, err = io.ReadFull(f, head)
	return err == nil && bytes.Equal(head, wimMagic)
}

var wimMagic = []byte("MSWIM\x00\x00\x00")

// members is a cabinet's member table as Windows sees it: by key
// (winpath.Key of the clean path), the stored name.
type members struct {
	byKey map[string]string
	// bad is the first member name winpath refuses, with why.
	bad error
	// dup is the first pair of stored names that are one file on Windows;
	// mumDup tells they are update.mum.
	dup    [2]string
	mumDup bool
	// clash is a member that is a file where another needs a folder.
	clash [2]string
}

func indexMembers(r *cab.Reader) *members {
	m := &members{byKey: map[string]string{}}
	for _, f := range r.Files() {
		c, err := winpath.Clean(f.Name)
		if err != nil {
			if m.bad == nil {
				m.bad = err
			}
			continue
		}
		k := winpath.Key(c)
		if prev, ok := m.byKey[k]; ok {
			if m.dup[0] == "" {
				m.dup = [2]string{prev, f.Name}
				m.mumDup = k == winpath.Key(ManifestName)
			}
			continue
		}
		m.byKey[k] = f.Name
	}
	// A member that is a file where another member needs a folder would
	// make extraction fail half-way.
	for k, stored := range m.byKey {
		for dir := path.Dir(k); dir != "."; dir = path.Dir(dir) {
			if file, ok := m.byKey[dir]; ok && m.clash[0] == "" {
				m.clash = [2]string{file, stored}
			}
		}
	}
	return m
}

// lookup returns the stored name of the member at clean path p.
func (m *members) lookup(p string) (string, bool) {
	s, ok := m.byKey[winpath.Key(p)]
	return s, ok
}

// check refuses a table with a name Windows cannot hold, two members that
// are one file on Windows, or a file where a folder is needed.
func (m *members) check(name string) error {
	switch {
	case m.bad != nil:
		return invalid(name, "a member has a name osvc refuses: %w; rebuild the package with plain relative names", m.bad)
	case m.mumDup:
		return invalid(name, "the cabinet holds %s twice (as %q and %q), so it would be read as one package here and another there; a package has one %s: rebuild it",
			ManifestName, m.dup[0], m.dup[1], ManifestName)
	case m.dup[0] != "":
		return invalid(name, "members %q and %q are one file on Windows, which compares names ignoring case and reads '\\' and '/' alike; rebuild the package with each file once",
			m.dup[0], m.dup[1])
	case m.clash[0] != "":
		return invalid(name, "member %q is a file, but member %q needs it to be a folder; rebuild the package", m.clash[0], m.clash[1])
	}
	return nil
}

// innerCabs lists an MSU's package cabinets in stored order, leaving out
// the cabinets that hold no package (isMetadataCab: WSUSSCAN.cab, Windows
// Update's scan metadata, and the deployment and metadata cabinets of
// Windows 11 MSUs).
func innerCabs(r *cab.Reader) []string {
	var out []string
	for _, f := range r.Files() {
		base := path.Base(f.Name)
		if strings.EqualFold(path.Ext(base), ".cab") && !isMetadataCab(base) {
			out = append(out, f.Name)
		}
	}
	return out
}

// membersEnding lists the members whose name ends in suffix, ignoring case.
func membersEnding(r *cab.Reader, suffix string) []string {
	var out []string
	for _, f := range r.Files() {
		if hasSuffixFold(f.Name, suffix) {
			out = append(out, f.Name)
		}
	}
	return out
}

// Open reads and validates the update file at path; errors name it by its
// base name. See OpenAs.
func Open(path string) (*Package, error) { return OpenAs(path, filepath.Base(path)) }

// OpenAs reads and validates the update file at path, naming it name in
// errors (the name it was uploaded as, say). It is the one reading of a
// package: the catalog records what it returns and the engine installs
// what Stage then writes, which Stage checks is byte for byte what OpenAs
// read. It reads the whole file: every member's data must be whole and pass
// its checksum, and every rule of the package documentation must hold, for
// each inner package of an MSU too. Refusals wrap ErrInvalid; files that
// are not packages osvc reads (an .exe, a driver cabinet, Quantum compression)
// return ErrUnsupported.
func OpenAs(path, name string) (*Package, error) {
	f, r, err := openCab(path, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	budget := newManifestBudget(maxPackageManifestBytes)
	mt := indexMembers(r)
	if _, ok := mt.lookup(ManifestName); ok {
		if err := mt.check(name); err != nil {
			return nil, err
		}
		pt, err := readPart(name, r, mt, budget)
		if err != nil {
			return nil, err
		}
		return newPackage(path, name, false, []*part{pt}), nil
	}
	if err := mt.check(name); err != nil {
		return nil, err
	}
	// Since Windows 11, version 24H2, an MSU may carry its update as a
	// package inside a WIM (W10UI.cmd, see msu.go), which osvc does not
	// read: the catalog records it from its name, the dism engine applies it.
	if wims := membersEnding(r, ".wim"); len(wims) > 0 {
		return nil, unsupported(name, "it carries its update inside %s, a WIM osvc does not read; the dism engine applies it", listed(wims))
	}
	inner := innerCabs(r)
	if len(inner) == 0 {
		return nil, unsupported(name, "the cabinet holds neither %s nor package cabinets", ManifestName)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open update %s: %w", name, err)
	}
	msu, err := readMSU(name, r, inner, st.Size(), budget)
	if err != nil {
		return nil, err
	}
	p := newPackage(path, name, true, msu.parts)
	p.Properties = msu.properties
	if err := p.chooseMain(msu); err != nil {
		return nil, err
	}
	if psf := membersEnding(r, ".psf"); len(psf) > 0 {
		p.NotInstallable = append(p.NotInstallable, fmt.Sprintf("its payload is in %s (express), which the wimlib engine cannot expand", listed(psf)))
	}
	return p, nil
}

func newPackage(path, name string, msu bool, parts []*part) *Package {
	p := &Package{Path: path, Name: name, MSU: msu, parts: parts}
	for _, pt := range parts {
		p.Manifests = append(p.Manifests, pt.manifest)
		for _, reason := range pt.notInstallable {
			if msu {
				reason = pt.member + ": " + reason
			}
			p.NotInstallable = append(p.NotInstallable, reason)
		}
	}
	p.Manifest = p.Manifests[0]
	return p
}

// chooseMain makes Manifest the MSU's own package, the one its metadata
// describes, and checks the metadata against its packages: the cabinet
// its properties file is named for (<name>-pkgProperties.txt describes
// <name>.cab, as both readers named in msu.go find them), else the one
// its unattend file's source names, else the last that is not a servicing
// stack (a combined MSU installs its servicing stack first), else the
// first. The cabinets the metadata names must be in the MSU and hold the
// packages it names, and the properties' processor architecture must be
// the package's.
func (p *Package) chooseMain(msu *msuRead) error {
	byMember := map[string]int{}
	for i, pt := range msu.parts {
		byMember[strings.ToLower(path.Base(pt.member))] = i
	}
	main := -1
	for _, u := range msu.unattend {
		if u.Source == "" {
			if !slices.ContainsFunc(msu.parts, func(pt *part) bool { return strings.EqualFold(pt.manifest.Identity.String(), u.Identity.String()) }) {
				return invalid(p.Name, "its unattend file installs %s, which none of its cabinets holds; download it again", u.Identity)
			}
			continue
		}
		i, ok := byMember[strings.ToLower(u.Source)]
		if !ok {
			return invalid(p.Name, "its unattend file installs %s from %s, which the MSU does not hold; download it again", u.Identity, u.Source)
		}
		if got := msu.parts[i].manifest.Identity; !strings.EqualFold(got.String(), u.Identity.String()) {
			return invalid(p.Name, "its unattend file says %s holds %s, but it holds %s; download it again", u.Source, u.Identity, got)
		}
		main = i
	}
	if msu.propertiesName != "" {
		base := path.Base(msu.propertiesName)
		cabName := base[:len(base)-len(propertiesSuffix)] + ".cab"
		i, ok := byMember[strings.ToLower(cabName)]
		if !ok {
			return invalid(p.Name, "its properties file %s describes %s, which the MSU does not hold; download it again", base, cabName)
		}
		main = i
	}
	if main < 0 {
		main = 0
		for i, pt := range msu.parts {
			if pt.manifest.Classification != osvcv1.Classification_CLASSIFICATION_SERVICING_STACK {
				main = i
			}
		}
	}
	p.Manifest = msu.parts[main].manifest
	if arch := architecture(p.Properties["Processor Architecture"]); arch != osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED &&
		p.Manifest.Identity.Arch != "neutral" && arch != p.Manifest.Architecture() {
		return invalid(p.Name, "its properties file says Processor Architecture %q, but its package %s is %s; download it again",
			p.Properties["Processor Architecture"], p.Manifest.Identity, p.Manifest.Identity.Arch)
	}
	return nil
}

// hashingReader sums what is read through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

// manifestBudget is what is left of maxPackageManifestBytes for one Open:
// the manifests of every package of the file (each inner package of an MSU
// too) draw on it, judged from the sizes the cabinet declares (the reader
// yields exactly those) before they are decompressed.
type manifestBudget struct{ limit, left int64 }

func newManifestBudget(limit int64) *manifestBudget {
	return &manifestBudget{limit: limit, left: limit}
}

// spend takes n bytes of manifests of the package label; what names them.
func (b *manifestBudget) spend(label, what string, n int64) error {
	if n > b.left {
		return invalid(label, "%s would bring the manifests of the file to more than %d bytes; a package's manifests are a few megabytes at most: rebuild it",
			what, b.limit)
	}
	b.left -= n
	return nil
}

// readPart reads and validates one package cabinet whose member table
// passed check: its manifests, the rules on its components, and the data
// of every member, fingerprinting what Stage will write. Its manifests'
// declared sizes are spent from budget before each is decompressed.
//
// A package Windows built (see windowsShape; DCM-compressed manifests tell
// too) is read for its update.mum and the data of every member, and comes
// back with the reasons the wimlib engine does not install it: its
// component manifests are neither looked for nor parsed.
func readPart(label string, r *cab.Reader, mt *members, budget *manifestBudget) (*part, error) {
	declared := map[string]int64{}
	for _, f := range r.Files() {
		declared[f.Name] = f.Size
	}
	mumName, _ := mt.lookup(ManifestName)
	if err := budget.spend(label, mumName, declared[mumName]); err != nil {
		return nil, err
	}
	data, err := readMember(label, r, mumName)
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, invalid(label, "%v", err)
	}
	reasons := windowsShape(m, r)
	// Which member is which component's manifest, in osvc's shape; a
	// missing one is refused once the members show the package is not one
	// Windows built.
	manifestOf := map[string]int{}
	missing := -1
	if len(reasons) == 0 {
		if err := m.checkInstallable(); err != nil {
			return nil, invalid(label, "%v", err)
		}
		for i, c := range m.Components {
			stored, ok := mt.lookup(c.SxSName() + ".manifest")
			if !ok {
				if missing < 0 {
					missing = i
				}
				continue
			}
			manifestOf[stored] = i
		}
	}
	// All the component manifests are spent at once, before the pass that
	// decompresses them.
	var manifestBytes int64
	for stored := range manifestOf {
		manifestBytes += declared[stored]
	}
	if err := budget.spend(label, fmt.Sprintf("its %d component manifests (%d bytes)", len(manifestOf), manifestBytes), manifestBytes); err != nil {
		return nil, err
	}
	// One pass over every member: its data must be whole, what Stage
	// writes is fingerprinted, component manifests are parsed as they
	// come, wherever the packer put them among the payload, and every
	// manifest's first bytes tell whether Windows compressed it.
	sums := map[string]stagedFile{}
	var dcm []string
	err = r.ForEach(nil, func(f cab.File, content io.Reader) error {
		h := &hashingReader{r: content, h: sha256.New()}
		i, component := manifestOf[f.Name]
		switch {
		case component:
			// ParseComponentManifest refuses more than maxManifestBytes.
			data, err := io.ReadAll(io.LimitReader(h, maxManifestBytes+1))
			if err != nil {
				return err
			}
			if isDCM(data) {
				dcm = append(dcm, path.Base(f.Name))
				break
			}
			if len(dcm) > 0 {
				break // Windows built the package: its manifests are not osvc's to read
			}
			cm, err := parseComponentFor(m.Components[i], f.Name, data)
			if err != nil {
				return invalid(label, "%v", err)
			}
			m.Components[i].Files = cm.Files
		case hasSuffixFold(f.Name, ".manifest"):
			head := make([]byte, len(dcmMagic))
			n, err := io.ReadFull(h, head)
			if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				return err
			}
			if isDCM(head[:n]) {
				dcm = append(dcm, path.Base(f.Name))
			}
		}
		if _, err := io.Copy(io.Discard, h); err != nil {
			return err
		}
		sf := stagedFile{size: h.n}
		h.h.Sum(sf.sum[:0])
		sums[f.Name] = sf
		return nil
	})
	if err != nil {
		return nil, wrapCabErr(label, err)
	}
	if len(dcm) > 0 {
		reasons = append(reasons, dcmReason(dcm))
	}
	pt := &part{label: label, manifest: m, files: map[string]stagedFile{}, notInstallable: reasons}
	if len(reasons) > 0 {
		// Nothing is staged from a package Windows built.
		for i := range m.Components {
			m.Components[i].Files = nil
		}
		return pt, nil
	}
	if missing >= 0 {
		c := m.Components[missing]
		return nil, invalid(label, "the package lacks the manifest of component %s (%s.manifest); rebuild it", c.Name, c.SxSName())
	}
	want := func(stored, dest string) {
		sf := sums[stored]
		sf.dest = dest
		pt.files[stored] = sf
	}
	want(mumName, ManifestName)
	for _, c := range m.Components {
		sxs := c.SxSName()
		manifestName, _ := mt.lookup(sxs + ".manifest")
		want(manifestName, sxs+".manifest")
		for _, file := range c.Files {
			stored, ok := mt.lookup(sxs + "/" + file)
			if !ok {
				return nil, invalid(label, "component %s lists %s, which the package does not hold (as %s/%s); rebuild it", c.Name, file, sxs, file)
			}
			want(stored, sxs+"/"+file)
		}
	}
	return pt, nil
}

func readMember(label string, r *cab.Reader, name string) ([]byte, error) {
	rc, err := r.Open(name)
	if err != nil {
		return nil, wrapCabErr(label, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestBytes+1))
	if err != nil {
		return nil, wrapCabErr(label, err)
	}
	if len(data) > maxManifestBytes {
		return nil, invalid(label, "%s is larger than %d bytes; a package manifest is small: rebuild the package", name, maxManifestBytes)
	}
	return data, nil
}

// msuRead is what readMSU read of an MSU: its packages in stored order,
// its properties file and the packages its unattend files name.
type msuRead struct {
	parts          []*part
	properties     map[string]string
	propertiesName string
	unattend       []unattendPackage
}

// readMSU validates every member of an MSU of size bytes, each inner
// package, its properties file and unattend files, and the rules between
// the packages: one architecture, each package once.
func readMSU(name string, r *cab.Reader, inner []string, size int64, budget *manifestBudget) (*msuRead, error) {
	isInner := map[string]bool{}
	for _, n := range inner {
		isInner[n] = true
	}
	// Every inner cabinet is copied to a temporary file to be read; one
	// that would decompress to more than twice the MSU is refused before
	// any is written. A cabinet is compressed already and compresses no
	// further, so only a decompression bomb expands that much, and it
	// would fill the temporary folder. The properties and unattend files
	// are read into memory, judged by the sizes the cabinet declares.
	limit := 2*size + innerCabSlackBytes
	props := membersEnding(r, propertiesSuffix)
	if len(props) > 1 {
		return nil, invalid(name, "it holds %d properties files (%s); an MSU has one: download it again", len(props), listed(props))
	}
	for _, f := range r.Files() {
		switch {
		case isInner[f.Name] && f.Size > limit:
			return nil, invalid(name, "inner cabinet %s decompresses to %d bytes, more than twice the MSU's %d; the file is damaged or hostile: download it again",
				f.Name, f.Size, size)
		case isPropertiesFile(f.Name) && f.Size > maxPropertiesBytes:
			return nil, invalid(name, "its properties file %s is %d bytes, more than the %d allowed; a properties file is a few lines: download the MSU again",
				f.Name, f.Size, maxPropertiesBytes)
		case hasSuffixFold(f.Name, ".xml") && f.Size > maxUnattendBytes:
			return nil, invalid(name, "%s is %d bytes, more than the %d an unattend file may hold; download the MSU again",
				f.Name, f.Size, maxUnattendBytes)
		}
	}
	msu := &msuRead{}
	err := r.ForEach(nil, func(f cab.File, content io.Reader) error {
		switch {
		case isInner[f.Name]:
			pt, err := readInner(name, f.Name, content, budget)
			if err != nil {
				return err
			}
			msu.parts = append(msu.parts, pt)
			return nil
		case isPropertiesFile(f.Name):
			data, err := io.ReadAll(content)
			if err != nil {
				return err
			}
			if msu.properties, err = parseProperties(data); err != nil {
				return invalid(name, "properties file %s: %v; download the MSU again", f.Name, err)
			}
			msu.propertiesName = f.Name
			return nil
		case hasSuffixFold(f.Name, ".xml"):
			data, err := io.ReadAll(content)
			if err != nil {
				return err
			}
			pkgs, err := parseUnattend(data)
			if err != nil {
				return invalid(name, "%s: %v; download the MSU again", f.Name, err)
			}
			msu.unattend = append(msu.unattend, pkgs...)
			return nil
		}
		_, err := io.Copy(io.Discard, content)
		return err
	})
	if err != nil {
		return nil, wrapCabErr(name, err)
	}
	// ForEach visits members in folder order; apply them in stored order.
	order := map[string]int{}
	for i, n := range inner {
		order[n] = i
	}
	parts := msu.parts
	slices.SortStableFunc(parts, func(a, b *part) int { return order[a.member] - order[b.member] })
	first := parts[0].manifest
	seen := map[string]string{}
	for _, pt := range parts {
		m := pt.manifest
		if m.Identity.Arch != first.Identity.Arch {
			return nil, invalid(name, "its packages are for different architectures (%s is %s, %s is %s); an MSU is for one architecture: split it",
				parts[0].member, first.Identity.Arch, pt.member, m.Identity.Arch)
		}
		id := strings.ToLower(m.Identity.String())
		if prev, ok := seen[id]; ok {
			return nil, invalid(name, "%s and %s are the same package %s; keep one", prev, pt.member, m.Identity)
		}
		seen[id] = pt.member
	}
	return msu, nil
}

// innerCabSlackBytes lets a small MSU's inner cabinet grow a little when a
// packer compressed it again.
const innerCabSlackBytes = 1 << 20

// readInner copies one inner cabinet of an MSU to a temporary file (the
// cabinet reader needs random access), fingerprinting it, and validates
// the package it holds.
func readInner(msu, member string, content io.Reader, budget *manifestBudget) (*part, error) {
	label := msu + ": inner cabinet " + member
	tmp, err := os.CreateTemp("", "osvc-msu-*.cab")
	if err != nil {
		return nil, fmt.Errorf("read MSU %s: %w", msu, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := &hashingReader{r: content, h: sha256.New()}
	if _, err := io.Copy(tmp, h); err != nil {
		return nil, err
	}
	f, r, err := openCab(tmp.Name(), label)
	if errors.Is(err, ErrUnsupported) {
		return nil, invalid(label, "it is not a cabinet; an MSU holds package cabinets: rebuild it")
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mt := indexMembers(r)
	if _, ok := mt.lookup(ManifestName); !ok {
		return nil, invalid(label, "it holds no %s, so it is not an update package; an MSU holds package cabinets: rebuild it", ManifestName)
	}
	if err := mt.check(label); err != nil {
		return nil, err
	}
	pt, err := readPart(label, r, mt, budget)
	if err != nil {
		return nil, err
	}
	pt.member = member
	pt.size = h.n
	h.h.Sum(pt.sum[:0])
	return pt, nil
}

// parseComponentFor parses a component manifest and checks it describes
// the component update.mum lists.
func parseComponentFor(c Component, name string, data []byte) (Component, error) {
	cm, err := ParseComponentManifest(data)
	if err != nil {
		return Component{}, fmt.Errorf("%s: %w", name, err)
	}
	if !strings.EqualFold(cm.Name, c.Name) || cm.Version != c.Version || !strings.EqualFold(cm.Arch, c.Arch) ||
		!strings.EqualFold(cm.PublicKeyToken, c.PublicKeyToken) {
		return Component{}, fmt.Errorf("%s describes %s, but %s lists %s", name, cm.identity(), ManifestName, c.identity())
	}
	return cm, nil
}

// Staged is one package extracted into a staging folder.
type Staged struct {
	Manifest   *Manifest
	Dir        string
	Components []StagedComponent
}

// StagedComponent is one component of a staged package: its manifest file
// and the folder holding its payload (Component.Files are relative to it).
type StagedComponent struct {
	Component    Component
	ManifestPath string
	PayloadDir   string
}

// Stage writes the package's files under dir, never outside it, and returns
// the packages to apply in order: one for a CAB, each inner one for an MSU.
// It writes exactly what Open validated, at the names the package
// documentation gives (update.mum, <SxSName>.manifest, <SxSName>/<file>),
// and checks each file is byte for byte what Open read: a file changed
// since is refused. A CAB is staged into dir itself; an MSU's inner
// cabinets into dir/msu and their packages into dir/package-01, -02, ...
func (p *Package) Stage(dir string) ([]*Staged, error) {
	if len(p.parts) == 0 {
		return nil, fmt.Errorf("stage %s: the package was not read by Open", p.Name)
	}
	if len(p.NotInstallable) > 0 {
		return nil, unsupported(p.Name, "osvc does not install it: %s", strings.Join(p.NotInstallable, "; "))
	}
	f, r, err := openCab(p.Path, p.Name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if !p.MSU {
		s, err := stagePart(r, p.parts[0], dir)
		if err != nil {
			return nil, err
		}
		return []*Staged{s}, nil
	}
	msuDir := filepath.Join(dir, "msu")
	out := make([]*Staged, 0, len(p.parts))
	for i, pt := range p.parts {
		cabName := fmt.Sprintf("%02d.cab", i+1)
		if err := writeMembers(r, p.Name, msuDir, map[string]stagedFile{pt.member: {dest: cabName, size: pt.size, sum: pt.sum}}); err != nil {
			return nil, err
		}
		s, err := func() (*Staged, error) {
			f, ir, err := openCab(filepath.Join(msuDir, cabName), pt.label)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			return stagePart(ir, pt, filepath.Join(dir, fmt.Sprintf("package-%02d", i+1)))
		}()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// stagePart writes one package's files into dir.
func stagePart(r *cab.Reader, pt *part, dir string) (*Staged, error) {
	if err := writeMembers(r, pt.label, dir, pt.files); err != nil {
		return nil, err
	}
	m := pt.manifest
	s := &Staged{Manifest: m, Dir: dir}
	for _, c := range m.Components {
		sxs := c.SxSName()
		payloadDir := filepath.Join(dir, sxs)
		if err := os.MkdirAll(payloadDir, 0o755); err != nil {
			return nil, fmt.Errorf("stage %s: %w", pt.label, err)
		}
		s.Components = append(s.Components, StagedComponent{
			Component:    c,
			ManifestPath: filepath.Join(dir, sxs+".manifest"),
			PayloadDir:   payloadDir,
		})
	}
	return s, nil
}

// writeMembers writes the given members (by stored name) to their
// destinations under dir, through an os.Root so nothing can leave dir, and
// refuses any whose bytes are not the ones Open fingerprinted.
func writeMembers(r *cab.Reader, label, dir string, files map[string]stagedFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("stage %s: %w", label, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("stage %s: %w", label, err)
	}
	defer root.Close()
	names := make([]string, 0, len(files))
	for stored := range files {
		names = append(names, stored)
	}
	if len(names) == 0 {
		return nil // ForEach reads every member when it is given no names
	}
	err = r.ForEach(names, func(f cab.File, content io.Reader) error {
		want := files[f.Name] // ForEach passes only the names asked for
		dest := filepath.FromSlash(want.dest)
		if err := root.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return err
		}
		out, err := root.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		h := &hashingReader{r: content, h: sha256.New()}
		_, err = io.Copy(out, h)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		var sum [sha256.Size]byte
		h.h.Sum(sum[:0])
		if h.n != want.size || sum != want.sum {
			return invalid(label, "%s changed since the package was opened; open it again", f.Name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("stage: %w", wrapCabErr(label, err))
	}
	return nil
}

// Build writes a package CAB: update.mum from m, each component's manifest,
// and payload[c.SxSName()][file] data. A component without Files takes the
// sorted file names of its payload. Every payload entry must belong to a
// component of m, and every listed file must have payload.
func Build(w io.Writer, m *Manifest, payload map[string]map[string][]byte) error {
	mum, err := m.Marshal()
	if err != nil {
		return fmt.Errorf("build package: %w", err)
	}
	cw := cab.NewWriter(w)
	add := func(name string, data []byte) error {
		fw, err := cw.Create(name, m.Released)
		if err != nil {
			return err
		}
		_, err = fw.Write(data)
		return err
	}
	if err := add(ManifestName, mum); err != nil {
		return fmt.Errorf("build package: %w", err)
	}
	// All manifests come first, payload after: Open then reads only the
	// start of the folder, however large the payload.
	type payloadFile struct {
		name string
		data []byte
	}
	var files []payloadFile
	used := map[string]bool{}
	for _, c := range m.Components {
		sxs := c.SxSName()
		used[sxs] = true
		list, data, err := componentFiles(c, payload[sxs])
		if err != nil {
			return fmt.Errorf("build package: %w", err)
		}
		comp := c
		comp.Files = list
		man, err := MarshalComponentManifest(comp)
		if err != nil {
			return fmt.Errorf("build package: %w", err)
		}
		if err := add(sxs+".manifest", man); err != nil {
			return fmt.Errorf("build package: %w", err)
		}
		for _, f := range list {
			files = append(files, payloadFile{sxs + "/" + f, data[f]})
		}
	}
	for k := range payload {
		if !used[k] {
			return fmt.Errorf("build package: payload[%q] names no component of the manifest (keys are Component.SxSName())", k)
		}
	}
	for _, f := range files {
		if err := add(f.name, f.data); err != nil {
			return fmt.Errorf("build package: %w", err)
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("build package: %w", err)
	}
	return nil
}

// componentFiles checks a component's payload against its file list and
// returns the clean list (the sorted payload names when c.Files is empty)
// and the payload by clean name.
func componentFiles(c Component, payload map[string][]byte) ([]string, map[string][]byte, error) {
	sxs := c.SxSName()
	data := map[string][]byte{}
	for name, b := range payload {
		clean, err := winpath.Clean(name)
		if err != nil {
			return nil, nil, fmt.Errorf("component %s payload: %w", c.Name, err)
		}
		data[clean] = b
	}
	list := make([]string, 0, len(c.Files))
	for _, f := range c.Files {
		clean, err := winpath.Clean(f)
		if err != nil {
			return nil, nil, fmt.Errorf("component %s: %w", c.Name, err)
		}
		if _, ok := data[clean]; !ok {
			return nil, nil, fmt.Errorf("component %s lists %s but payload[%q] has no such file", c.Name, f, sxs)
		}
		list = append(list, clean)
	}
	if len(c.Files) == 0 {
		for name := range data {
			list = append(list, name)
		}
		slices.Sort(list)
	}
	listed := make(map[string]bool, len(list))
	for _, f := range list {
		listed[f] = true
	}
	for name := range data {
		if !listed[name] {
			return nil, nil, fmt.Errorf("payload[%q] holds %s, which component %s does not list", sxs, name, c.Name)
		}
	}
	return list, data, nil
}

// BuildMSU wraps package CABs (name → bytes) in an MSU. The cabinets are
// stored in name order, which is the order Stage applies them in: name them
// so that order is right (e.g. a servicing stack update first).
func BuildMSU(w io.Writer, cabs map[string][]byte) error {
	if len(cabs) == 0 {
		return errors.New("build MSU: no package cabinets")
	}
	names := make([]string, 0, len(cabs))
	for name := range cabs {
		names = append(names, name)
	}
	slices.Sort(names)
	cw := cab.NewWriter(w)
	for _, name := range names {
		switch {
		case strings.ContainsAny(name, `/\:`) || !strings.EqualFold(filepath.Ext(name), ".cab"):
			return fmt.Errorf("build MSU: member %q must be a plain file name ending in .cab", name)
		case strings.EqualFold(name, "WSUSSCAN.cab"):
			return fmt.Errorf("build MSU: %q is the name of Windows Update's scan cabinet, which Stage skips", name)
		case !cab.IsCabinet(cabs[name]):
			return fmt.Errorf("build MSU: member %q is not a cabinet", name)
		}
		fw, err := cw.Create(name, time.Time{})
		if err != nil {
			return fmt.Errorf("build MSU: %w", err)
		}
		if _, err := fw.Write(cabs[name]); err != nil {
			return fmt.Errorf("build MSU: %w", err)
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("build MSU: %w", err)
	}
	return nil
}
