package updatepkg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/cab"
	"github.com/osvc/osvc/pkg/cab/cabtest"
)

// samplePayload is payload for sampleManifest's components.
func samplePayload(m *Manifest) map[string]map[string][]byte {
	return map[string]map[string][]byte{
		m.Components[0].SxSName(): {
			"ntoskrnl.exe":     bytes.Repeat([]byte("kernel "), 20_000),
			"drivers/acpi.sys": []byte("acpi"),
		},
		m.Components[1].SxSName(): {
			"shell32.dll": []byte("shell"),
		},
	}
}

func buildFile(t testing.TB, dir, name string, m *Manifest, payload map[string]map[string][]byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := Build(&buf, m, payload); err != nil {
		t.Fatalf("Build: %v", err)
	}
	return writeFile(t, dir, name, buf.Bytes())
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantFiles is the manifest with Files filled as Open and Stage report them.
func wantFiles(m *Manifest) *Manifest {
	w := *m
	w.Components = append([]Component(nil), m.Components...)
	w.Components[0].Files = []string{"drivers/acpi.sys", "ntoskrnl.exe"}
	w.Components[1].Files = []string{"shell32.dll"}
	return &w
}

func checkStaged(t *testing.T, s *Staged, m *Manifest, payload map[string]map[string][]byte) {
	t.Helper()
	if !reflect.DeepEqual(s.Manifest, m) {
		t.Errorf("staged manifest\n got %+v\nwant %+v", s.Manifest, m)
	}
	if len(s.Components) != len(m.Components) {
		t.Fatalf("staged %d components, want %d", len(s.Components), len(m.Components))
	}
	for i, sc := range s.Components {
		c := m.Components[i]
		if !reflect.DeepEqual(sc.Component, c) {
			t.Errorf("staged component %+v, want %+v", sc.Component, c)
		}
		if filepath.Base(sc.PayloadDir) != c.SxSName() || filepath.Dir(sc.PayloadDir) != s.Dir {
			t.Errorf("payload folder %s, want %s under %s", sc.PayloadDir, c.SxSName(), s.Dir)
		}
		data, err := os.ReadFile(sc.ManifestPath)
		if err != nil {
			t.Fatalf("component manifest: %v", err)
		}
		if cm, err := ParseComponentManifest(data); err != nil || !reflect.DeepEqual(cm, c) {
			t.Errorf("component manifest at %s = %+v, %v; want %+v", sc.ManifestPath, cm, err, c)
		}
		for _, f := range c.Files {
			got, err := os.ReadFile(filepath.Join(sc.PayloadDir, filepath.FromSlash(f)))
			if err != nil || !bytes.Equal(got, payload[c.SxSName()][f]) {
				t.Errorf("payload %s of %s: %v, %d bytes, want %d", f, c.Name, err, len(got), len(payload[c.SxSName()][f]))
			}
		}
	}
}

func TestBuildOpenStageRoundTrips(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m := sampleManifest()
	payload := samplePayload(m)
	path := buildFile(t, dir, "windows11.0-kb5032190-x64.cab", m, payload)

	p, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	want := wantFiles(m)
	if p.MSU || p.Path != path || !reflect.DeepEqual(p.Manifest, want) {
		t.Errorf("Open = %+v\nmanifest %+v\nwant     %+v", p, p.Manifest, want)
	}
	staged, err := p.Stage(filepath.Join(dir, "stage"))
	if err != nil {
		t.Fatal(err)
	}
	if len(staged) != 1 || staged[0].Dir != filepath.Join(dir, "stage") {
		t.Fatalf("Stage = %+v, want one package in the staging folder", staged)
	}
	checkStaged(t, staged[0], want, payload)
	if _, err := os.Stat(filepath.Join(staged[0].Dir, ManifestName)); err != nil {
		t.Errorf("update.mum not staged: %v", err)
	}
}

func TestBuiltPackagesAreReadByCabextract(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m := sampleManifest()
	payload := samplePayload(m)
	path := buildFile(t, dir, "kb.cab", m, payload)
	out := filepath.Join(dir, "out")
	if msg, err := exec.Command("cabextract", "-q", "-d", out, path).CombinedOutput(); err != nil || len(msg) > 0 {
		t.Fatalf("cabextract: %v: %s", err, msg)
	}
	mum, err := os.ReadFile(filepath.Join(out, ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ParseManifest(mum); err != nil || got.Identity != m.Identity {
		t.Errorf("update.mum extracted by cabextract: %+v, %v", got, err)
	}
	k := m.Components[0].SxSName()
	if got, err := os.ReadFile(filepath.Join(out, k, "drivers", "acpi.sys")); err != nil || string(got) != "acpi" {
		t.Errorf("payload extracted by cabextract: %q, %v", got, err)
	}
}

func TestOpenReadsPackagesMadeByGcab(t *testing.T) {
	t.Parallel()
	// The same member layout, packed by Debian's gcab instead of Build.
	dir := t.TempDir()
	m := sampleManifest()
	m.Components = m.Components[:1]
	c := m.Components[0]
	c.Files = []string{"ntoskrnl.exe"}
	src := filepath.Join(dir, "src")
	mum, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	man, err := MarshalComponentManifest(c)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		ManifestName:                  mum,
		c.SxSName() + ".manifest":     man,
		c.SxSName() + "/ntoskrnl.exe": []byte("kernel"),
	} {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("gcab", "-c", "-z", filepath.Join(dir, "g.cab"), ManifestName, c.SxSName()+".manifest", c.SxSName()+"/ntoskrnl.exe")
	cmd.Dir = src
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcab: %v: %s", err, msg)
	}
	p, err := Open(filepath.Join(dir, "g.cab"))
	if err != nil {
		t.Fatal(err)
	}
	m.Components[0].Files = c.Files
	if !reflect.DeepEqual(p.Manifest, m) {
		t.Errorf("manifest %+v, want %+v", p.Manifest, m)
	}
	staged, err := p.Stage(filepath.Join(dir, "stage"))
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, staged[0], m, map[string]map[string][]byte{c.SxSName(): {"ntoskrnl.exe": []byte("kernel")}})
}

func TestOpenReadsLZXPackages(t *testing.T) {
	t.Parallel()
	// The same package repacked with LZX, as Microsoft packs its updates:
	// a 2 MiB window and E8 translation.
	dir := t.TempDir()
	m := sampleManifest()
	payload := samplePayload(m)
	var mszip bytes.Buffer
	if err := Build(&mszip, m, payload); err != nil {
		t.Fatal(err)
	}
	r, err := cab.NewReader(bytes.NewReader(mszip.Bytes()), int64(mszip.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var members []cabtest.Member
	err = r.ForEach(nil, func(f cab.File, content io.Reader) error {
		data, err := io.ReadAll(content)
		members = append(members, cabtest.Member{Name: strings.ReplaceAll(f.Name, "/", `\`), Data: data})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	lzx, err := cabtest.LZXCabinet(members, cabtest.LZXOptions{WindowBits: 21, E8Size: 12_000_000,
		BlockTypes: []int{cabtest.BlockAligned}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := Open(writeFile(t, dir, "windows11.0-kb5032190-x64.cab", lzx))
	if err != nil {
		t.Fatal(err)
	}
	want := wantFiles(m)
	if !reflect.DeepEqual(p.Manifest, want) {
		t.Errorf("manifest %+v, want %+v", p.Manifest, want)
	}
	staged, err := p.Stage(filepath.Join(dir, "stage"))
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, staged[0], want, payload)

	// Damaged LZX data is a damaged package, not an unsupported one.
	broken := append([]byte(nil), mszip.Bytes()...)
	binary.LittleEndian.PutUint16(broken[42:], 0x1503) // the folder's compression: LZX, 21-bit window
	if _, err := Open(writeFile(t, dir, "broken.cab", broken)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "LZX") {
		t.Errorf("Open(MSZIP data labelled LZX) = %v, want ErrInvalid naming LZX", err)
	}
}

func TestMSUStagesItsPackagesInOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ssu := &Manifest{
		Identity:    Identity{Name: "Package_for_ServicingStack_2500", PublicKeyToken: token, Arch: "amd64", Language: "neutral", Version: "22621.2500.1.0"},
		KB:          "KB5031592",
		Title:       "2023-10 Servicing Stack Update for Windows 11 Version 22H2 for x64-based Systems (KB5031592)",
		ReleaseType: "Servicing Stack Update",
		Components:  []Component{{Name: "Microsoft-Windows-ServicingStack", Version: "10.0.22621.2500", Arch: "amd64", PublicKeyToken: token}},
	}
	ssuPayload := map[string]map[string][]byte{ssu.Components[0].SxSName(): {"TrustedInstaller.exe": []byte("ti")}}
	lcu := sampleManifest()
	lcuPayload := samplePayload(lcu)
	var ssuCab, lcuCab bytes.Buffer
	if err := Build(&ssuCab, ssu, ssuPayload); err != nil {
		t.Fatal(err)
	}
	if err := Build(&lcuCab, lcu, lcuPayload); err != nil {
		t.Fatal(err)
	}

	// BuildMSU's own MSU, and one shaped like Microsoft's with the scan
	// cabinet and metadata files that Stage ignores.
	var built bytes.Buffer
	if err := BuildMSU(&built, map[string][]byte{
		"Windows11.0-KB5032190-x64.cab": lcuCab.Bytes(),
		"SSU-22621.2500-x64.cab":        ssuCab.Bytes(),
	}); err != nil {
		t.Fatal(err)
	}
	var msft bytes.Buffer
	w := cab.NewWriter(&msft)
	for _, mem := range []struct {
		name string
		data []byte
	}{
		{"WSUSSCAN.cab", ssuCab.Bytes()},
		{"SSU-22621.2500-x64.cab", ssuCab.Bytes()},
		{"Windows11.0-KB5032190-x64.cab", lcuCab.Bytes()},
		{"Windows11.0-KB5032190-x64-pkgProperties.txt", []byte("ApplicabilityInfo=\"Windows 11.0\"")},
		{"Windows11.0-KB5032190-x64.xml", []byte("<unattend/>")},
	} {
		fw, err := w.Create(mem.name, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(mem.data)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	for name, data := range map[string][]byte{"built by BuildMSU": built.Bytes(), "shaped like Microsoft's": msft.Bytes()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			path := writeFile(t, dir, "windows11.0-kb5032190-x64.msu", data)
			p, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			// Its own package is the cumulative update; the servicing stack comes first.
			if !p.MSU || p.Manifest.KB != "KB5032190" || len(p.Manifests) != 2 || p.Manifests[0].KB != "KB5031592" {
				t.Errorf("Open = MSU %v, package %s, packages %d; want an MSU of KB5032190 whose first package is KB5031592", p.MSU, p.Manifest.KB, len(p.Manifests))
			}
			stage := filepath.Join(dir, "stage")
			staged, err := p.Stage(stage)
			if err != nil {
				t.Fatal(err)
			}
			if len(staged) != 2 {
				t.Fatalf("staged %d packages, want 2", len(staged))
			}
			if staged[0].Dir != filepath.Join(stage, "package-01") || staged[1].Dir != filepath.Join(stage, "package-02") {
				t.Errorf("staged into %s and %s", staged[0].Dir, staged[1].Dir)
			}
			ssuWant := *ssu
			ssuWant.Classification = osvcv1.Classification_CLASSIFICATION_SERVICING_STACK
			ssuWant.Components = []Component{ssu.Components[0]}
			ssuWant.Components[0].Files = []string{"TrustedInstaller.exe"}
			checkStaged(t, staged[0], &ssuWant, ssuPayload)
			checkStaged(t, staged[1], wantFiles(lcu), lcuPayload)
		})
	}
}

func TestOpenRefusesWhatItCannotApply(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	driverCab := func() []byte {
		var b bytes.Buffer
		w := cab.NewWriter(&b)
		fw, _ := w.Create("netdriver.inf", time.Time{})
		fw.Write([]byte("[Version]"))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}()
	quantum := func() []byte {
		var b bytes.Buffer
		if err := Build(&b, sampleManifest(), samplePayload(sampleManifest())); err != nil {
			t.Fatal(err)
		}
		data := b.Bytes()
		binary.LittleEndian.PutUint16(data[42:], 0x1472) // the folder's compression: Quantum, level 7, 20-bit window
		return data
	}()
	for _, tc := range []struct {
		name, file string
		data       []byte
		contains   string
	}{
		{"an executable", "windows-kb890830-x64.exe", []byte("MZ\x90\x00\x03\x00\x00\x00\x04\x00"), "not a cabinet"},
		{"an empty file", "empty.cab", nil, "not a cabinet"},
		{"a driver cabinet", "driver.cab", driverCab, "neither update.mum nor package cabinets"},
		{"a Quantum cabinet", "quantum.cab", quantum, "cabinet uses Quantum compression, which osvc cannot read; repack it with MSZIP or LZX"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, dir, tc.file, tc.data)
			_, err := Open(path)
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Open = %v, want ErrUnsupported", err)
			}
			if !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not mention %q", err, tc.contains)
			}
		})
	}
	if _, err := Open(filepath.Join(dir, "missing.cab")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want ErrNotExist", err)
	}
}

func TestBuildRefusesInconsistentPayload(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(m *Manifest, p map[string]map[string][]byte)
		want string
	}{
		{"payload for no component", func(m *Manifest, p map[string]map[string][]byte) {
			p["x86_other_31bf3856ad364e35_1.0.0.0_none_0000000000000000"] = map[string][]byte{"a": nil}
		}, "names no component"},
		{"a listed file without payload", func(m *Manifest, p map[string]map[string][]byte) {
			m.Components[1].Files = []string{"shell32.dll", "missing.dll"}
		}, "has no such file"},
		{"payload not listed", func(m *Manifest, p map[string]map[string][]byte) {
			m.Components[1].Files = []string{"shell32.dll"}
			p[m.Components[1].SxSName()]["extra.dll"] = nil
		}, "does not list"},
		{"a payload path escaping its folder", func(m *Manifest, p map[string]map[string][]byte) {
			p[m.Components[1].SxSName()]["../../evil.dll"] = nil
		}, `contains ".."`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := sampleManifest()
			p := samplePayload(m)
			tc.edit(m, p)
			var b bytes.Buffer
			if err := Build(&b, m, p); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	var b bytes.Buffer
	if err := BuildMSU(&b, map[string][]byte{"a.exe": []byte("MSCF")}); err == nil {
		t.Error("BuildMSU accepted a member that is not a .cab")
	}
	if err := BuildMSU(&b, map[string][]byte{"a.cab": []byte("MZ")}); err == nil {
		t.Error("BuildMSU accepted a member that is not a cabinet")
	}
}

// maliciousCab is a package whose extra member tries to leave the staging folder.
func maliciousCab(t testing.TB, evil string) []byte {
	t.Helper()
	m := sampleManifest()
	var pkg bytes.Buffer
	if err := Build(&pkg, m, samplePayload(m)); err != nil {
		t.Fatal(err)
	}
	r, err := cab.NewReader(bytes.NewReader(pkg.Bytes()), int64(pkg.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	w := cab.NewWriter(&out)
	for _, f := range r.Files() {
		rc, err := r.Open(f.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		fw, err := w.Create(f.Name, f.Modified)
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(data)
	}
	fw, err := w.Create(evil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	fw.Write([]byte("evil"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func treeOf(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(root, p)
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	return out
}

func TestOpenRefusesMembersThatWouldEscape(t *testing.T) {
	t.Parallel()
	for _, evil := range []string{"../evil.dll", `..\..\evil.dll`, "/etc/evil.dll", `C:\Windows\evil.dll`} {
		t.Run(evil, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			bad := maliciousCab(t, evil)
			for _, kind := range []string{"cab", "msu"} {
				data := bad
				if kind == "msu" {
					var b bytes.Buffer
					if err := BuildMSU(&b, map[string][]byte{"inner.cab": bad}); err != nil {
						t.Fatal(err)
					}
					data = b.Bytes()
				}
				path := writeFile(t, root, "evil."+kind, data)
				_, err := Open(path)
				if !errors.Is(err, ErrInvalid) || !errors.Is(err, cab.ErrUnsafePath) {
					t.Errorf("%s: Open = %v, want ErrInvalid and ErrUnsafePath", kind, err)
				}
			}
			if got := treeOf(t, root); !reflect.DeepEqual(got, []string{".", "evil.cab", "evil.msu"}) {
				t.Errorf("Open wrote %v", got)
			}
		})
	}
}

func TestStageStagesOnlyWhatOpenRead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m := sampleManifest()
	path := buildFile(t, dir, "kb.cab", m, samplePayload(m))
	if _, err := (&Package{Path: path}).Stage(filepath.Join(dir, "unread")); err == nil {
		t.Error("Stage of a package Open did not read succeeded")
	}
	p, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// The same members, one payload file changed after Open.
	other := samplePayload(m)
	other[m.Components[1].SxSName()]["shell32.dll"] = []byte("SHELL")
	buildFile(t, dir, "kb.cab", m, other)
	stage := filepath.Join(dir, "stage")
	if _, err := p.Stage(stage); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "changed since") {
		t.Errorf("Stage of a file changed since Open = %v, want ErrInvalid saying it changed", err)
	}
}

func FuzzStage(f *testing.F) {
	m := sampleManifest()
	var good bytes.Buffer
	if err := Build(&good, m, samplePayload(m)); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	f.Add(maliciousCab(f, "../evil"))
	var msu bytes.Buffer
	if err := BuildMSU(&msu, map[string][]byte{"a.cab": good.Bytes()}); err != nil {
		f.Fatal(err)
	}
	f.Add(msu.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		path := writeFile(t, root, "pkg.cab", data)
		p, err := Open(path)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Open error %v is neither ErrInvalid nor ErrUnsupported", err)
			}
			return
		}
		if p.Manifest == nil || len(p.Manifests) == 0 {
			t.Fatal("Open returned a package without a manifest")
		}
		stage := filepath.Join(root, "stage")
		if _, err := p.Stage(stage); len(p.NotInstallable) > 0 {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Stage of a package osvc does not install = %v, want ErrUnsupported", err)
			}
		} else if err != nil {
			t.Fatalf("Stage of a package Open accepted: %v", err)
		}
		for _, p := range treeOf(t, root) {
			if p != "." && p != "pkg.cab" && p != "stage" && !strings.HasPrefix(p, "stage/") {
				t.Fatalf("Stage wrote %s outside its folder", p)
			}
		}
	})
}

// paddedPackage is a package cabinet whose update.mum lists n kernel
// components, each with a component manifest padded to about pad bytes.
func paddedPackage(t *testing.T, n, pad int) []byte {
	t.Helper()
	return paddedPackageOf(t, sampleManifest().Identity.Version, n, pad)
}

// paddedPackageOf is paddedPackage with the package identity's version.
func paddedPackageOf(t *testing.T, version string, n, pad int) []byte {
	t.Helper()
	m := sampleManifest()
	m.Identity.Version = version
	m.Components = nil
	for i := range n {
		m.Components = append(m.Components, kernel(fmt.Sprintf("10.0.22621.%d", i+1)))
	}
	mum, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	w := cab.NewWriter(&out)
	add := func(name string, data []byte) {
		fw, err := w.Create(name, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	add(ManifestName, mum)
	for _, c := range m.Components {
		data, err := MarshalComponentManifest(c)
		if err != nil {
			t.Fatal(err)
		}
		end := bytes.LastIndex(data, []byte("</assembly>"))
		padded := slices.Concat(data[:end], bytes.Repeat([]byte(" "), max(pad-len(data), 0)), data[end:])
		add(c.SxSName()+".manifest", padded)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestOpenBoundsTheManifestsItReads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bomb := func() []byte {
		var b bytes.Buffer
		w := cab.NewWriter(&b)
		fw, err := w.Create("Windows11.0-KB5032190-x64.cab", time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Write(make([]byte, 8<<20)); err != nil { // compresses to kilobytes
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}()
	for _, tc := range []struct {
		name, file string
		data       []byte
		contains   string
	}{
		{"a component manifest above the cap is refused", "big.cab", paddedPackage(t, 2, maxManifestBytes+1), "more than the 4194304 allowed"},
		{"an MSU whose inner cabinet expands past twice its size is refused", "bomb.msu", bomb, "decompresses to 8388608 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Open(writeFile(t, dir, tc.file, tc.data))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("Open = %v, want ErrInvalid mentioning %q", err, tc.contains)
			}
		})
	}
	// The package cap is 64 MiB; manifests of 64 KiB against a budget of
	// 300 KiB show the rule without building 64 MiB of cabinet.
	const budget = 300 << 10
	t.Run("manifests adding up to more than the file's cap are refused before they are decompressed", func(t *testing.T) {
		t.Parallel()
		// Five manifests of 64 KiB fill ten blocks; the last one's data is
		// damaged, which only decompressing it can tell.
		data := paddedPackage(t, 5, 64<<10)
		data[len(data)-1] ^= 0xFF
		path := writeFile(t, dir, "many.cab", data)
		f, r, err := openCab(path, "many.cab")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var total int64 // update.mum and the five manifests
		for _, m := range r.Files() {
			total += m.Size
		}
		_, err = readPart("many.cab", r, indexMembers(r), newManifestBudget(total-1))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "its 5 component manifests") ||
			!strings.Contains(err.Error(), fmt.Sprintf("more than %d bytes", total-1)) {
			t.Fatalf("readPart within %d bytes = %v, want the manifests' total refused before the damage is found", total-1, err)
		}
		_, err = readPart("many.cab", r, indexMembers(r), newManifestBudget(total))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "checksum") {
			t.Fatalf("readPart within %d bytes = %v, want the manifests read and the damaged block found", total, err)
		}
	})
	t.Run("the packages of an MSU draw on one budget", func(t *testing.T) {
		t.Parallel()
		// Each inner package is within the budget alone, not both together.
		first, second := paddedPackageOf(t, "22621.2715.1.8", 3, 64<<10), paddedPackageOf(t, "22621.2716.1.1", 3, 64<<10)
		readMSUWithin := func(name string, cabs map[string][]byte) error {
			var b bytes.Buffer
			if err := BuildMSU(&b, cabs); err != nil {
				t.Fatal(err)
			}
			path := writeFile(t, dir, name, b.Bytes())
			f, r, err := openCab(path, name)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			_, err = readMSU(name, r, innerCabs(r), int64(b.Len()), newManifestBudget(budget))
			return err
		}
		if err := readMSUWithin("one.msu", map[string][]byte{"a.cab": first}); err != nil {
			t.Fatalf("an MSU of one package within the budget: %v", err)
		}
		err := readMSUWithin("two.msu", map[string][]byte{"a.cab": first, "b.cab": second})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprintf("more than %d bytes", budget)) {
			t.Fatalf("readMSU = %v, want the second package's manifests refused", err)
		}
	})
	t.Run("each manifest is parsed as it is read, before the members after it are decompressed", func(t *testing.T) {
		t.Parallel()
		// A component manifest describing another version, then payload
		// whose last block is damaged: the manifest's refusal comes first
		// when it is parsed as the pass reads it, not once all are held.
		m := sampleManifest()
		m.Components = []Component{kernel("10.0.22621.1")}
		mum, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		other, err := MarshalComponentManifest(kernel("10.0.22621.2"))
		if err != nil {
			t.Fatal(err)
		}
		payload := bytes.Repeat([]byte("payload "), 32<<10) // 256 KiB: eight blocks
		var b bytes.Buffer
		w := cab.NewWriter(&b)
		for _, member := range []struct {
			name string
			data []byte
		}{{ManifestName, mum}, {m.Components[0].SxSName() + ".manifest", other}, {"payload.bin", payload}} {
			fw, err := w.Create(member.name, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fw.Write(member.data); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		data := b.Bytes()
		data[len(data)-1] ^= 0xFF
		_, err = Open(writeFile(t, dir, "mismatch.cab", data))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "describes") {
			t.Fatalf("Open = %v, want the mismatched manifest refused before the damaged block is reached", err)
		}
	})
	t.Run("padded manifests under both caps are read", func(t *testing.T) {
		t.Parallel()
		p, err := Open(writeFile(t, dir, "padded.cab", paddedPackage(t, 3, 1<<20)))
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Manifest.Components) != 3 {
			t.Errorf("%d components, want 3", len(p.Manifest.Components))
		}
	})
}

// A package with nothing to stage (one Windows built) writes nothing, even
// past Stage's refusal: the cabinet reader reads every member when asked
// for none.
func TestWriteMembersOfNoFilesWritesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m := sampleManifest()
	path := buildFile(t, dir, "kb.cab", m, samplePayload(m))
	f, r, err := openCab(path, "kb.cab")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stage := filepath.Join(dir, "stage")
	if err := writeMembers(r, "kb.cab", stage, map[string]stagedFile{}); err != nil {
		t.Fatal(err)
	}
	if got := treeOf(t, stage); !reflect.DeepEqual(got, []string{"."}) {
		t.Errorf("writeMembers of no files wrote %v", got)
	}
}
