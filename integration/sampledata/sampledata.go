// Package sampledata creates a small but realistic Windows image and a set of
// update packages for it, so tests and demos service real files: a WIM
// captured with wimlib-imagex carrying Windows image properties, and CAB/MSU
// packages built with updatepkg whose components supersede the image's.
package sampledata

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/updatepkg"
)

// Defaults for Options.
const (
	DefaultPayloadBytes int64  = 4 << 20
	DefaultBuild        uint32 = 22631
	DefaultEdition             = "Enterprise"
)

// MaxUpdateFileBytes bounds Options.UpdateFileBytes: an update package is
// built in memory with up to six such files, and a real system binary is a
// few MiB (ntoskrnl.exe, shell32.dll), far from this.
const MaxUpdateFileBytes int64 = 256 << 20

// File names Create writes under Options.Dir.
const (
	WIMName     = "install.wim"
	UpdatesName = "updates"
)

// Options shape the sample.
type Options struct {
	// Dir receives the WIM and the updates folder; it is created if missing.
	Dir string
	// PayloadBytes is the amount of incompressible-ish payload spread over
	// the image's files; default about 4 MiB.
	PayloadBytes int64
	// Build is the OS build of the image; default 22631.
	Build uint32
	// Edition is the image's edition ID; default "Enterprise".
	Edition string
	// UpdateFileBytes is the payload of each file an update package
	// carries (a component's new ntoskrnl.exe, shell32.dll …), up to
	// MaxUpdateFileBytes. When set, the image's own component files are as
	// large (a new version of a binary is about the size of the old) and
	// take at most half of PayloadBytes, the loose files the rest: applied,
	// the updates rewrite that much of the image per file they replace.
	// 0 takes PayloadBytes/32 (at least 4 KiB) for the updates' files, and
	// 60% of the payload spread over the image's components.
	UpdateFileBytes int64
}

// Update is one update file of the sample.
type Update struct {
	// File is the update file's path.
	File string
	KB   string
	// Want is the expected result when the updates are applied to the
	// sample image in the order listed: APPLIED, NOT_APPLICABLE or UNSUPPORTED.
	Want           osvcv1.UpdateState
	Classification osvcv1.Classification
	// Title is the update's title as the catalog shows it.
	Title        string
	Released     time.Time
	Architecture osvcv1.Architecture
}

// Sample is what Create made.
type Sample struct {
	WIM        string
	UpdatesDir string
	// Updates in the order a servicing run applies them: servicing stack
	// first, then by release date, .NET last.
	Updates []Update
}

// Create builds the sample image and its updates under opts.Dir. The same
// options give byte-identical update packages and the same image content
// (the WIM itself carries a fresh GUID and timestamps).
func Create(ctx context.Context, opts Options) (*Sample, error) {
	if opts.Dir == "" {
		return nil, errors.New("sample: Options.Dir is empty: name the folder to create the sample in")
	}
	if opts.PayloadBytes == 0 {
		opts.PayloadBytes = DefaultPayloadBytes
	}
	if opts.PayloadBytes < 64<<10 {
		return nil, fmt.Errorf("sample: PayloadBytes %d is too small: use at least 64 KiB", opts.PayloadBytes)
	}
	if opts.UpdateFileBytes < 0 || opts.UpdateFileBytes > MaxUpdateFileBytes {
		return nil, fmt.Errorf("sample: UpdateFileBytes %d: give 1 to %d bytes (a large system binary is a few MiB), or 0 for 1/32 of PayloadBytes",
			opts.UpdateFileBytes, MaxUpdateFileBytes)
	}
	if opts.Build == 0 {
		opts.Build = DefaultBuild
	}
	if opts.Edition == "" {
		opts.Edition = DefaultEdition
	}
	if strings.ContainsAny(opts.Edition, "/\\\x00") {
		return nil, fmt.Errorf("sample: edition %q is not a plain name", opts.Edition)
	}
	g := newGenerator(opts)
	if n := g.componentFiles(); opts.UpdateFileBytes > 0 && n*opts.UpdateFileBytes > opts.PayloadBytes/2 {
		return nil, fmt.Errorf("sample: UpdateFileBytes %d: the image's %d component files, each as large, would take more than half of PayloadBytes %d: give at most %d",
			opts.UpdateFileBytes, n, opts.PayloadBytes, opts.PayloadBytes/2/n)
	}
	wimlib, err := exec.LookPath("wimlib-imagex")
	if err != nil {
		return nil, fmt.Errorf("sample: wimlib-imagex not found: install wimtools (apt-get install wimtools): %w", err)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	s := &Sample{
		WIM:        filepath.Join(opts.Dir, WIMName),
		UpdatesDir: filepath.Join(opts.Dir, UpdatesName),
	}
	if err := g.writeImage(ctx, wimlib, s.WIM); err != nil {
		return nil, fmt.Errorf("sample: image: %w", err)
	}
	if err := os.MkdirAll(s.UpdatesDir, 0o755); err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	for _, u := range g.updates() {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sample: %w", err)
		}
		path := filepath.Join(s.UpdatesDir, u.file)
		if err := g.writeUpdate(path, u); err != nil {
			return nil, fmt.Errorf("sample: update %s: %w", u.file, err)
		}
		s.Updates = append(s.Updates, Update{
			File:           path,
			KB:             u.kb,
			Want:           u.want,
			Classification: u.class,
			Title:          u.title,
			Released:       u.released,
			Architecture:   u.arch,
		})
	}
	return s, nil
}

// generator derives everything from the options, so runs are repeatable.
type generator struct {
	opts    Options
	seed    [32]byte
	product string // "Windows 11"
	release string // "23H2"
	// ubr is the image's update build revision (SPBUILD).
	ubr uint32
}

func newGenerator(opts Options) *generator {
	product, release := windowsRelease(opts.Build)
	seed := sha256.Sum256(fmt.Appendf(nil, "osvc-sample|%d|%s|%d", opts.Build, opts.Edition, opts.PayloadBytes))
	return &generator{opts: opts, seed: seed, product: product, release: release, ubr: 2428}
}

// windowsRelease names the Windows release of a build, as update titles do.
func windowsRelease(build uint32) (product, release string) {
	switch build {
	case 19045:
		return "Windows 10", "22H2"
	case 22621:
		return "Windows 11", "22H2"
	case 22631:
		return "Windows 11", "23H2"
	case 26100:
		return "Windows 11", "24H2"
	case 26200:
		return "Windows 11", "25H2"
	}
	if build < 22000 {
		return "Windows 10", "build " + strconv.FormatUint(uint64(build), 10)
	}
	return "Windows 11", "build " + strconv.FormatUint(uint64(build), 10)
}

// data returns n bytes of incompressible-ish content for one named file:
// seeded random data with a short readable header, so a file looks like a
// file and LZX cannot shrink the sample to nothing.
func (g *generator) data(name string, n int64) []byte {
	h := sha256.New()
	h.Write(g.seed[:])
	h.Write([]byte(name))
	var seed [32]byte
	copy(seed[:], h.Sum(nil))
	r := rand.NewChaCha8(seed)
	buf := make([]byte, n)
	_, _ = r.Read(buf)
	header := "MZ osvc sample file " + name + "\r\n"
	copy(buf, header)
	return buf
}

// version is a component version of this image's build at a revision.
func (g *generator) version(rev uint32) string {
	return fmt.Sprintf("10.0.%d.%d", g.opts.Build, rev)
}

const (
	windowsToken = "31bf3856ad364e35"
	netfxToken   = "b03f5f7f11d50a3a"
	netfxBase    = "4.0.15912.1000"
	netfxUpdate  = "4.0.15912.1290"
)

// componentSpec is a component with its payload file names.
type componentSpec struct {
	name, token string
	files       []string
}

// Components the image ships and the updates replace.
var (
	servicingStack = componentSpec{"microsoft-windows-servicingstack", windowsToken, []string{"CbsCore.dll", "TiWorker.exe", "wcp.dll"}}
	osKernel       = componentSpec{"microsoft-windows-os-kernel", windowsToken, []string{"ntoskrnl.exe"}}
	kernelBase     = componentSpec{"microsoft-windows-kernelbase", windowsToken, []string{"KernelBase.dll"}}
	ntdll          = componentSpec{"microsoft-windows-ntdll", windowsToken, []string{"ntdll.dll"}}
	shell32        = componentSpec{"microsoft-windows-shell32", windowsToken, []string{"shell32.dll"}}
	win32k         = componentSpec{"microsoft-windows-win32k", windowsToken, []string{"win32k.sys", "win32kfull.sys"}}
	notepad        = componentSpec{"microsoft-windows-notepad", windowsToken, []string{"notepad.exe"}}
	netfxCLR       = componentSpec{"netfx4-clr_dll", netfxToken, []string{"clr.dll"}}
	netfxMscorlib  = componentSpec{"netfx4-mscorlib_dll", netfxToken, []string{"mscorlib.dll"}}
)

func (c componentSpec) at(arch, version string) updatepkg.Component {
	return updatepkg.Component{Name: c.name, Version: version, Arch: arch, PublicKeyToken: c.token, Files: c.files}
}

// baseComponents are the image's WinSxS components.
func (g *generator) baseComponents() []updatepkg.Component {
	v := g.version(g.ubr)
	var out []updatepkg.Component
	for _, c := range []componentSpec{servicingStack, osKernel, kernelBase, ntdll, shell32, win32k, notepad} {
		out = append(out, c.at("amd64", v))
	}
	for _, c := range []componentSpec{netfxCLR, netfxMscorlib} {
		out = append(out, c.at("amd64", netfxBase))
	}
	return out
}

// componentFiles counts the files of the image's components.
func (g *generator) componentFiles() int64 {
	var n int64
	for _, c := range g.baseComponents() {
		n += int64(len(c.Files))
	}
	return n
}

// system32Files are the image's loose files, with their share of the payload
// in tenths.
var system32Files = []struct {
	name   string
	tenths int64
}{
	{"Windows/System32/config/SOFTWARE", 3},
	{"Windows/System32/config/SYSTEM", 2},
	{"Windows/System32/drivers/ntfs.sys", 1},
	{"Windows/System32/drivers/tcpip.sys", 1},
	{"Windows/System32/kernel32.dll", 1},
	{"Windows/System32/user32.dll", 1},
	{"Windows/explorer.exe", 1},
}

// writeImage builds the tree in a folder beside the WIM and captures it.
func (g *generator) writeImage(ctx context.Context, wimlib, wim string) error {
	tree, err := os.MkdirTemp(filepath.Dir(wim), ".sample-tree-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	write := func(rel string, data []byte) error {
		p := filepath.Join(tree, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, data, 0o644)
	}
	// 40% of the payload in loose files, 60% in WinSxS components; with
	// UpdateFileBytes the components' files are that large, the loose
	// files the rest.
	loose := g.opts.PayloadBytes * 4 / 10
	if g.opts.UpdateFileBytes > 0 {
		loose = g.opts.PayloadBytes - g.componentFiles()*g.opts.UpdateFileBytes
	}
	for _, f := range system32Files {
		if err := write(f.name, g.data(f.name, loose*f.tenths/10)); err != nil {
			return err
		}
	}
	texts := map[string]string{
		"Windows/System32/drivers/etc/hosts":  "# Copyright (c) 1993-2009 Microsoft Corp.\r\n#\r\n# This is a sample HOSTS file used by Microsoft TCP/IP for Windows.\r\n",
		"Windows/win.ini":                     "; for 16-bit app support\r\n[fonts]\r\n[extensions]\r\n[mci extensions]\r\n[files]\r\n[Mail]\r\nMAPI=1\r\n",
		"Windows/System32/license.rtf":        "{\\rtf1\\ansi MICROSOFT SOFTWARE LICENSE TERMS (sample image built by osvc)\\par}\r\n",
		"Users/Default/NTUSER.DAT":            "regf",
		"Program Files/Common Files/.keep":    "",
		"ProgramData/Microsoft/Windows/.keep": "",
	}
	for name, text := range texts {
		if err := write(name, []byte(text)); err != nil {
			return err
		}
	}
	comps := g.baseComponents()
	perComponent := (g.opts.PayloadBytes - loose) / int64(len(comps))
	for _, c := range comps {
		sxs := c.SxSName()
		size := perComponent / int64(len(c.Files))
		if g.opts.UpdateFileBytes > 0 {
			size = g.opts.UpdateFileBytes
		}
		for _, f := range c.Files {
			if err := write("Windows/WinSxS/"+sxs+"/"+f, g.data(sxs+"/"+f, size)); err != nil {
				return err
			}
		}
		manifest, err := updatepkg.MarshalComponentManifest(c)
		if err != nil {
			return err
		}
		if err := write("Windows/WinSxS/Manifests/"+sxs+".manifest", manifest); err != nil {
			return err
		}
	}
	for _, name := range []string{"Microsoft-Windows-Foundation-Package", "Microsoft-Windows-Client-Desktop-Required-Package"} {
		id := updatepkg.Identity{Name: name, PublicKeyToken: windowsToken, Arch: "amd64", Language: "neutral", Version: g.version(g.ubr)}
		if err := write("Windows/servicing/Packages/"+id.String()+".mum", packageManifest(id)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(tree, "Windows", "Temp"), 0o755); err != nil {
		return err
	}
	return g.capture(ctx, wimlib, tree, wim)
}

// capture runs wimlib-imagex capture with the Windows image properties DISM
// and Configuration Manager read.
func (g *generator) capture(ctx context.Context, wimlib, tree, wim string) error {
	edition := g.opts.Edition
	name := g.product + " " + editionName(edition)
	props := [][2]string{
		{"WINDOWS/ARCH", "9"}, // PROCESSOR_ARCHITECTURE_AMD64
		{"WINDOWS/PRODUCTNAME", "Microsoft® Windows® Operating System"},
		{"WINDOWS/EDITIONID", edition},
		{"WINDOWS/INSTALLATIONTYPE", "Client"},
		{"WINDOWS/PRODUCTTYPE", "WinNT"},
		{"WINDOWS/PRODUCTSUITE", "Terminal Server"},
		{"WINDOWS/HAL", "acpiapic"},
		{"WINDOWS/SYSTEMROOT", "WINDOWS"},
		{"WINDOWS/LANGUAGES/LANGUAGE", "en-US"},
		{"WINDOWS/LANGUAGES/DEFAULT", "en-US"},
		{"WINDOWS/VERSION/MAJOR", "10"},
		{"WINDOWS/VERSION/MINOR", "0"},
		{"WINDOWS/VERSION/BUILD", strconv.FormatUint(uint64(g.opts.Build), 10)},
		{"WINDOWS/VERSION/SPBUILD", strconv.FormatUint(uint64(g.ubr), 10)},
		{"WINDOWS/VERSION/SPLEVEL", "0"},
		{"FLAGS", edition},
		{"DISPLAYNAME", name},
		{"DISPLAYDESCRIPTION", name},
	}
	tmp := wim + ".partial"
	_ = os.Remove(tmp)
	args := []string{"capture", tree, tmp, name, name}
	for _, p := range props {
		args = append(args, "--image-property", p[0]+"="+p[1])
	}
	cmd := exec.CommandContext(ctx, wimlib, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("wimlib-imagex capture: %w: %s", err, lastLine(out.String()))
	}
	return os.Rename(tmp, wim)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// editionName is the edition as image names spell it.
func editionName(edition string) string {
	switch edition {
	case "Professional":
		return "Pro"
	case "Core":
		return "Home"
	}
	return edition
}

// packageManifest is the .mum of a package the image was built with.
func packageManifest(id updatepkg.Identity) []byte {
	return fmt.Appendf(nil, "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\r\n"+
		"<assembly xmlns=\"urn:schemas-microsoft-com:asm.v3\" manifestVersion=\"1.0\">\r\n"+
		"  <assemblyIdentity name=\"%s\" version=\"%s\" processorArchitecture=\"%s\" language=\"neutral\" publicKeyToken=\"%s\" />\r\n"+
		"  <package identifier=\"%s\" releaseType=\"Foundation\" />\r\n"+
		"</assembly>\r\n", id.Name, id.Version, id.Arch, id.PublicKeyToken, id.Name)
}

// updateSpec describes one update file of the sample.
type updateSpec struct {
	file     string
	kb       string
	title    string
	class    osvcv1.Classification
	want     osvcv1.UpdateState
	released time.Time
	arch     osvcv1.Architecture
	// manifest is nil for a file that is not an update package (the .exe).
	manifest *updatepkg.Manifest
	// msu wraps the package CAB in an MSU, as Windows cumulative updates ship.
	msu bool
}

func day(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }

// updates lists the sample's updates in the order a run applies them.
func (g *generator) updates() []updateSpec {
	b := g.opts.Build
	for1 := func(arch string) string {
		if arch == "arm64" {
			return "arm64-based Systems"
		}
		return "x64-based Systems"
	}
	release := g.product + " Version " + g.release
	if strings.HasPrefix(g.release, "build ") {
		release = g.product + " " + g.release
	}
	pkgVersion := func(build, rev uint32) string { return fmt.Sprintf("%d.%d.1.1", build, rev) }
	ident := func(name, arch, version string) updatepkg.Identity {
		return updatepkg.Identity{Name: name, PublicKeyToken: windowsToken, Arch: arch, Language: "neutral", Version: version}
	}
	comps := func(arch, version string, specs ...componentSpec) []updatepkg.Component {
		var out []updatepkg.Component
		for _, s := range specs {
			out = append(out, s.at(arch, version))
		}
		return out
	}
	manifest := func(u *updateSpec, id updatepkg.Identity, releaseType string, builds []uint32, supersedes []string, cs []updatepkg.Component) {
		products := []string{g.product}
		if u.class == osvcv1.Classification_CLASSIFICATION_DOTNET {
			products = append(products, ".NET Framework 4.8.1")
		}
		u.manifest = &updatepkg.Manifest{
			Identity:         id,
			KB:               u.kb,
			Title:            u.title,
			ReleaseType:      releaseType,
			Classification:   u.class,
			Released:         u.released,
			Products:         products,
			ApplicableBuilds: builds,
			Supersedes:       supersedes,
			Components:       cs,
		}
	}

	ssu := updateSpec{
		file:     "windows11.0-kb5045935-x64.cab",
		kb:       "KB5045935",
		title:    fmt.Sprintf("2026-10 Servicing Stack Update for %s for %s (KB5045935)", release, for1("amd64")),
		class:    osvcv1.Classification_CLASSIFICATION_SERVICING_STACK,
		want:     osvcv1.UpdateState_UPDATE_STATE_APPLIED,
		released: day(2026, time.October, 13),
		arch:     osvcv1.Architecture_ARCHITECTURE_X64,
	}
	manifest(&ssu, ident("Package_for_ServicingStack_4311", "amd64", pkgVersion(b, 4311)), "Servicing Stack Update",
		[]uint32{b}, nil, comps("amd64", g.version(4311), servicingStack))

	cuSep := updateSpec{
		file:     "windows11.0-kb5065431-x64.cab",
		kb:       "KB5065431",
		title:    fmt.Sprintf("2026-09 Cumulative Update for %s for %s (KB5065431)", release, for1("amd64")),
		class:    osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		want:     osvcv1.UpdateState_UPDATE_STATE_APPLIED,
		released: day(2026, time.September, 8),
		arch:     osvcv1.Architecture_ARCHITECTURE_X64,
	}
	sepID := ident("Package_for_RollupFix", "amd64", pkgVersion(b, 4169))
	manifest(&cuSep, sepID, "Security Update", []uint32{b}, nil,
		comps("amd64", g.version(4169), osKernel, kernelBase, ntdll, shell32))

	cuOct := updateSpec{
		file:     "windows11.0-kb5066793-x64.msu",
		kb:       "KB5066793",
		title:    fmt.Sprintf("2026-10 Cumulative Update for %s for %s (KB5066793)", release, for1("amd64")),
		class:    osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		want:     osvcv1.UpdateState_UPDATE_STATE_APPLIED,
		released: day(2026, time.October, 13),
		arch:     osvcv1.Architecture_ARCHITECTURE_X64,
		msu:      true,
	}
	manifest(&cuOct, ident("Package_for_RollupFix", "amd64", pkgVersion(b, 4317)), "Security Update", []uint32{b},
		[]string{sepID.String()},
		comps("amd64", g.version(4317), osKernel, kernelBase, ntdll, shell32, win32k))

	// The same build on another architecture: it never applies to this x64
	// image, for its architecture alone.
	armSameBuild := updateSpec{
		file:     "windows11.0-kb5067112-arm64.msu",
		kb:       "KB5067112",
		title:    fmt.Sprintf("2026-10 Cumulative Update Preview for %s for %s (KB5067112)", release, for1("arm64")),
		class:    osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		want:     osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE,
		released: day(2026, time.October, 27),
		arch:     osvcv1.Architecture_ARCHITECTURE_ARM64,
		msu:      true,
	}
	// Like Windows' arm64 updates it carries the 32-bit (wow64) half of
	// a component too.
	manifest(&armSameBuild, ident("Package_for_RollupFix", "arm64", pkgVersion(b, 4320)), "Update", []uint32{b}, nil,
		append(comps("arm64", g.version(4320), osKernel, kernelBase, ntdll), comps("wow64", g.version(4320), ntdll)...))

	dotnet := updateSpec{
		file:     "windows11.0-kb5066131-x64-ndp481.cab",
		kb:       "KB5066131",
		title:    fmt.Sprintf("2026-10 Cumulative Update for .NET Framework 3.5 and 4.8.1 for %s for x64 (KB5066131)", strings.Replace(release, "Version", "version", 1)),
		class:    osvcv1.Classification_CLASSIFICATION_DOTNET,
		want:     osvcv1.UpdateState_UPDATE_STATE_APPLIED,
		released: day(2026, time.October, 13),
		arch:     osvcv1.Architecture_ARCHITECTURE_X64,
	}
	manifest(&dotnet, ident("Package_for_DotNetRollup_481", "amd64", "10.0.9290.1"), "Security Update", []uint32{b}, nil,
		comps("amd64", netfxUpdate, netfxCLR, netfxMscorlib))

	mrt := updateSpec{
		file:     "windows-kb890830-x64-v5.138.exe",
		kb:       "KB890830",
		title:    "Windows Malicious Software Removal Tool x64 - v5.138 (KB890830)",
		class:    osvcv1.Classification_CLASSIFICATION_UPDATE,
		want:     osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED,
		released: day(2026, time.October, 13),
		arch:     osvcv1.Architecture_ARCHITECTURE_X64,
	}

	// Another architecture and release: 24H2 on arm64 never applies to this image.
	arm := updateSpec{
		file:     "windows11.0-kb5066835-arm64.cab",
		kb:       "KB5066835",
		title:    fmt.Sprintf("2026-10 Cumulative Update for Windows 11 Version 24H2 for %s (KB5066835)", for1("arm64")),
		class:    osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		want:     osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE,
		released: day(2026, time.October, 13),
		arch:     osvcv1.Architecture_ARCHITECTURE_ARM64,
	}
	armVersion := func(rev uint32) string { return fmt.Sprintf("10.0.26100.%d", rev) }
	manifest(&arm, ident("Package_for_RollupFix", "arm64", pkgVersion(26100, 6899)), "Security Update", []uint32{26100}, nil,
		comps("arm64", armVersion(6899), osKernel, kernelBase, ntdll))

	return []updateSpec{ssu, cuSep, cuOct, armSameBuild, dotnet, mrt, arm}
}

// componentBytes is the payload of one updated component file.
func (g *generator) componentBytes() int64 {
	if g.opts.UpdateFileBytes > 0 {
		return g.opts.UpdateFileBytes
	}
	return max(g.opts.PayloadBytes/32, 4<<10)
}

// writeUpdate writes one update file.
func (g *generator) writeUpdate(path string, u updateSpec) error {
	var data []byte
	if u.manifest == nil {
		data = g.exe(u.file)
	} else {
		payload := map[string]map[string][]byte{}
		for _, c := range u.manifest.Components {
			sxs := c.SxSName()
			files := map[string][]byte{}
			for _, f := range c.Files {
				files[f] = g.data(sxs+"/"+f, g.componentBytes())
			}
			payload[sxs] = files
		}
		var cab bytes.Buffer
		if err := updatepkg.Build(&cab, u.manifest, payload); err != nil {
			return err
		}
		data = cab.Bytes()
		if u.msu {
			inner := strings.TrimSuffix(filepath.Base(u.file), filepath.Ext(u.file)) + ".cab"
			var msu bytes.Buffer
			if err := updatepkg.BuildMSU(&msu, map[string][]byte{inner: data}); err != nil {
				return err
			}
			data = msu.Bytes()
		}
	}
	tmp := path + ".partial"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// exe is a small PE-looking file: an update binary no engine here applies.
func (g *generator) exe(name string) []byte {
	body := g.data(name, 48<<10)
	copy(body, "MZ")
	binary.LittleEndian.PutUint32(body[0x3c:], 0x80) // e_lfanew
	copy(body[0x40:], "This program cannot be run in DOS mode.\r\r\n$")
	copy(body[0x80:], "PE\x00\x00")
	return body
}
