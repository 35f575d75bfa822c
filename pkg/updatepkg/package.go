package updatepkg

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/osvc/osvc/pkg/cab"
)

// ErrUnsupported is returned for a file that is not a CAB or MSU update
// package osvc can read (e.g. an .exe, a driver cabinet, an LZX cabinet).
var ErrUnsupported = errors.New("unsupported update file: not a CAB or MSU package osvc can read")

// ManifestName is the package manifest's member name.
const ManifestName = "update.mum"

// Package is an update file opened for inspection.
type Package struct {
	Path string
	// MSU is true for an MSU: a cabinet of package cabinets.
	MSU bool
	// Manifest is the package's update.mum; for an MSU, its first inner package's.
	Manifest *Manifest
}

func unsupported(path, format string, args ...any) error {
	return fmt.Errorf("%s: %w: "+format, append([]any{path, ErrUnsupported}, args...)...)
}

// openCab opens path as a cabinet; anything that is not one is ErrUnsupported.
func openCab(path string) (*os.File, *cab.Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open update: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("open update: %w", err)
	}
	r, err := cab.NewReader(f, st.Size())
	if err != nil {
		f.Close()
		if errors.Is(err, cab.ErrNotCabinet) {
			return nil, nil, unsupported(path, "the file is not a cabinet")
		}
		return nil, nil, fmt.Errorf("open update %s: %w", path, err)
	}
	return f, r, nil
}

// memberIndex maps lower-cased clean member paths to the stored names: names
// in a package are matched ignoring case, as Windows does.
func memberIndex(r *cab.Reader) map[string]string {
	idx := map[string]string{}
	for _, f := range r.Files() {
		if c, err := cab.CleanPath(f.Name); err == nil {
			if _, dup := idx[strings.ToLower(c)]; !dup {
				idx[strings.ToLower(c)] = c
			}
		}
	}
	return idx
}

// innerCabs lists an MSU's package cabinets in stored order, leaving out
// WSUSSCAN.cab (Windows Update's scan metadata).
func innerCabs(r *cab.Reader) []string {
	var out []string
	for _, f := range r.Files() {
		base := path.Base(f.Name)
		if strings.EqualFold(path.Ext(base), ".cab") && !strings.EqualFold(base, "WSUSSCAN.cab") {
			out = append(out, f.Name)
		}
	}
	return out
}

// Open reads the package's manifest without extracting payload. Returns
// ErrUnsupported for files that are not CAB/MSU packages.
func Open(path string) (*Package, error) {
	f, r, err := openCab(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, ok := memberIndex(r)[ManifestName]; ok {
		m, err := readManifest(path, r)
		if err != nil {
			return nil, err
		}
		return &Package{Path: path, Manifest: m}, nil
	}
	inner := innerCabs(r)
	if len(inner) == 0 {
		return nil, unsupported(path, "the cabinet holds neither %s nor package cabinets", ManifestName)
	}
	m, err := readInnerManifest(path, r, inner[0])
	if err != nil {
		return nil, err
	}
	return &Package{Path: path, MSU: true, Manifest: m}, nil
}

// readInnerManifest copies one inner cabinet of an MSU to a temporary file
// (the cabinet reader needs random access) and reads its manifest.
func readInnerManifest(msuPath string, r *cab.Reader, name string) (*Manifest, error) {
	src, err := r.Open(name)
	if err != nil {
		return nil, wrapCabErr(msuPath, err)
	}
	defer src.Close()
	tmp, err := os.CreateTemp("", "osvc-msu-*.cab")
	if err != nil {
		return nil, fmt.Errorf("read MSU %s: %w", msuPath, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, src); err != nil {
		return nil, fmt.Errorf("read MSU %s member %s: %w", msuPath, name, wrapCabErr(msuPath, err))
	}
	innerPath := msuPath + "/" + name
	f, ir, err := openCab(tmp.Name())
	if err != nil {
		return nil, fmt.Errorf("MSU %s member %s: %w", msuPath, name, err)
	}
	defer f.Close()
	if _, ok := memberIndex(ir)[ManifestName]; !ok {
		return nil, unsupported(innerPath, "the inner cabinet has no %s", ManifestName)
	}
	return readManifest(innerPath, ir)
}

// wrapCabErr marks compressions the cabinet reader cannot read as unsupported.
func wrapCabErr(path string, err error) error {
	if errors.Is(err, cab.ErrUnsupportedCompression) {
		return fmt.Errorf("%s: %w: %w", path, ErrUnsupported, err)
	}
	return fmt.Errorf("%s: %w", path, err)
}

func readMember(path string, r *cab.Reader, name string) ([]byte, error) {
	rc, err := r.Open(name)
	if err != nil {
		return nil, wrapCabErr(path, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestBytes+1))
	if err != nil {
		return nil, wrapCabErr(path, err)
	}
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%s: %s is larger than %d bytes", path, name, maxManifestBytes)
	}
	return data, nil
}

// readManifest reads update.mum and the component manifests, which give
// each component's files.
func readManifest(path string, r *cab.Reader) (*Manifest, error) {
	members := memberIndex(r)
	data, err := readMember(path, r, members[ManifestName])
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// One pass over the cabinet for all component manifests, wherever the
	// packer put them among the payload.
	names := make([]string, len(m.Components))
	for i, c := range m.Components {
		name, ok := members[strings.ToLower(c.SxSName()+".manifest")]
		if !ok {
			return nil, fmt.Errorf("%s: the package lacks the manifest of component %s (%s.manifest)", path, c.Name, c.SxSName())
		}
		names[i] = name
	}
	if len(names) == 0 {
		return m, nil
	}
	manifests := map[string][]byte{}
	err = r.ForEach(names, func(f cab.File, content io.Reader) error {
		data, err := io.ReadAll(io.LimitReader(content, maxManifestBytes+1))
		if err != nil {
			return err
		}
		if len(data) > maxManifestBytes {
			return fmt.Errorf("%s is larger than %d bytes", f.Name, maxManifestBytes)
		}
		if c, err := cab.CleanPath(f.Name); err == nil {
			manifests[c] = data
		}
		return nil
	})
	if err != nil {
		return nil, wrapCabErr(path, err)
	}
	for i, c := range m.Components {
		cm, err := parseComponentFor(c, names[i], manifests[names[i]])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		m.Components[i].Files = cm.Files
	}
	return m, nil
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

// Stage extracts the package under dir (never writing outside it) and
// returns the packages to apply in order: one for a CAB, each inner one for
// an MSU, in the MSU's stored order. A CAB is extracted into dir itself; an
// MSU's inner cabinets into dir/msu and their packages into
// dir/package-01, dir/package-02, ...
func (p *Package) Stage(dir string) ([]*Staged, error) {
	f, r, err := openCab(p.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, ok := memberIndex(r)[ManifestName]; ok {
		s, err := stageCab(p.Path, r, dir)
		if err != nil {
			return nil, err
		}
		return []*Staged{s}, nil
	}
	inner := innerCabs(r)
	if len(inner) == 0 {
		return nil, unsupported(p.Path, "the cabinet holds neither %s nor package cabinets", ManifestName)
	}
	msuDir := filepath.Join(dir, "msu")
	if err := r.ExtractFiles(msuDir, inner...); err != nil {
		return nil, fmt.Errorf("stage MSU %s: %w", p.Path, wrapCabErr(p.Path, err))
	}
	var out []*Staged
	for i, name := range inner {
		clean, err := cab.CleanPath(name)
		if err != nil {
			return nil, err // ExtractFiles has refused it already
		}
		innerPath := filepath.Join(msuDir, filepath.FromSlash(clean))
		s, err := func() (*Staged, error) {
			f, ir, err := openCab(innerPath)
			if err != nil {
				return nil, fmt.Errorf("MSU %s member %s: %w", p.Path, name, err)
			}
			defer f.Close()
			return stageCab(p.Path+"/"+name, ir, filepath.Join(dir, fmt.Sprintf("package-%02d", i+1)))
		}()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func stageCab(path string, r *cab.Reader, dir string) (*Staged, error) {
	members := memberIndex(r)
	if _, ok := members[ManifestName]; !ok {
		return nil, unsupported(path, "the cabinet has no %s", ManifestName)
	}
	if err := r.ExtractAll(dir); err != nil {
		return nil, fmt.Errorf("stage %s: %w", path, wrapCabErr(path, err))
	}
	data, err := readStaged(dir, members[ManifestName])
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", path, err)
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", path, err)
	}
	s := &Staged{Manifest: m, Dir: dir}
	for i, c := range m.Components {
		sxs := c.SxSName()
		name, ok := members[strings.ToLower(sxs+".manifest")]
		if !ok {
			return nil, fmt.Errorf("stage %s: the package lacks the manifest of component %s (%s.manifest)", path, c.Name, sxs)
		}
		data, err := readStaged(dir, name)
		if err != nil {
			return nil, fmt.Errorf("stage %s: %w", path, err)
		}
		cm, err := parseComponentFor(c, name, data)
		if err != nil {
			return nil, fmt.Errorf("stage %s: %w", path, err)
		}
		m.Components[i].Files = cm.Files
		payloadDir := filepath.Join(dir, sxs)
		for _, file := range cm.Files {
			stored, ok := members[strings.ToLower(sxs+"/"+file)]
			if !ok {
				return nil, fmt.Errorf("stage %s: component %s lists %s, which the package does not hold", path, c.Name, file)
			}
			// The folder as stored, should its case differ from SxSName's.
			payloadDir = filepath.Join(dir, strings.SplitN(stored, "/", 2)[0])
		}
		if len(cm.Files) == 0 {
			if err := os.MkdirAll(payloadDir, 0o755); err != nil {
				return nil, fmt.Errorf("stage %s: %w", path, err)
			}
		}
		s.Components = append(s.Components, StagedComponent{
			Component:    m.Components[i],
			ManifestPath: filepath.Join(dir, filepath.FromSlash(name)),
			PayloadDir:   payloadDir,
		})
	}
	return s, nil
}

func readStaged(dir, name string) ([]byte, error) {
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(name)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, maxManifestBytes)
	}
	return data, nil
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
		clean, err := cab.CleanPath(name)
		if err != nil {
			return nil, nil, fmt.Errorf("component %s payload: %w", c.Name, err)
		}
		data[clean] = b
	}
	list := make([]string, 0, len(c.Files))
	for _, f := range c.Files {
		clean, err := cab.CleanPath(f)
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
