package sampledata

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/applicability"
	"github.com/osvc/osvc/pkg/updatepkg"
	"github.com/osvc/osvc/pkg/wiminfo"
)

func create(t *testing.T, opts Options) *Sample {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.PayloadBytes == 0 {
		opts.PayloadBytes = 512 << 10
	}
	s, err := Create(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTheImageInspectsAsAWindowsImage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		opts        Options
		wantBuild   uint32
		wantEdition string
		wantName    string
	}{
		{"defaults give Windows 11 23H2 Enterprise", Options{}, 22631, "Enterprise", "Windows 11 Enterprise"},
		{"build and edition are taken from the options", Options{Build: 26100, Edition: "Professional"}, 26100, "Professional", "Windows 11 Pro"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := create(t, tt.opts)
			idx, err := wiminfo.ReadFile(s.WIM)
			if err != nil {
				t.Fatal(err)
			}
			if len(idx) != 1 {
				t.Fatalf("indexes = %d, want 1", len(idx))
			}
			got := idx[0]
			if got.Arch != osvcv1.Architecture_ARCHITECTURE_X64 || got.Build != tt.wantBuild ||
				got.Edition != tt.wantEdition || got.Name != tt.wantName {
				t.Errorf("index = %s build %d edition %q name %q, want x64 %d %q %q", got.Arch,
					got.Build, got.Edition, got.Name, tt.wantBuild, tt.wantEdition, tt.wantName)
			}
			if len(got.Languages) == 0 || got.Languages[0] != "en-US" {
				t.Errorf("languages = %v, want en-US", got.Languages)
			}
			if got.TotalBytes < 512<<10 {
				t.Errorf("total bytes = %d, want at least the payload", got.TotalBytes)
			}
			out, err := exec.Command("wimlib-imagex", "dir", s.WIM, "1").CombinedOutput()
			if err != nil {
				t.Fatalf("wimlib-imagex dir: %v: %s", err, out)
			}
			for _, want := range []string{"/Windows/System32/kernel32.dll", "/Windows/servicing/Packages", "/Windows/WinSxS/Manifests"} {
				if !bytes.Contains(out, []byte(want+"\n")) {
					t.Errorf("the image has no %s", want)
				}
			}
		})
	}
}

func TestEveryUpdateIsWhatItClaims(t *testing.T) {
	t.Parallel()
	s := create(t, Options{})
	idx, err := wiminfo.ReadFile(s.WIM)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[osvcv1.UpdateState]int{}
	for _, u := range s.Updates {
		t.Run(filepath.Base(u.File), func(t *testing.T) {
			counts[u.Want]++
			if !strings.Contains(u.Title, "("+u.KB+")") {
				t.Errorf("title %q does not name %s", u.Title, u.KB)
			}
			if filepath.Dir(u.File) != s.UpdatesDir {
				t.Errorf("%s is not in %s", u.File, s.UpdatesDir)
			}
			p, err := updatepkg.Open(u.File)
			if u.Want == osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED {
				if err == nil {
					t.Fatalf("updatepkg.Open succeeded on an update expected unsupported")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Manifest.KB != u.KB || p.Manifest.Classification != u.Classification {
				t.Errorf("manifest says %s %s, want %s %s", p.Manifest.KB, p.Manifest.Classification, u.KB, u.Classification)
			}
			ix := applicability.NewIndex(idx[0].Index, idx[0].Arch, idx[0].Build, nil)
			verdict, reason := applicability.Check(p.Manifest.Applicability(), ix)
			if wantApplies := u.Want == osvcv1.UpdateState_UPDATE_STATE_APPLIED; (verdict == applicability.Applies) != wantApplies {
				t.Errorf("applicability = %s (%s), want applies %t", verdict, reason, wantApplies)
			}
			staged, err := p.Stage(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if len(staged) == 0 || len(staged[0].Components) == 0 {
				t.Fatalf("staged %d packages, want one with components", len(staged))
			}
			cabextractAll(t, u.File)
		})
	}
	want := map[osvcv1.UpdateState]int{
		osvcv1.UpdateState_UPDATE_STATE_APPLIED:        4,
		osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE: 2,
		osvcv1.UpdateState_UPDATE_STATE_UNSUPPORTED:    1,
	}
	for state, n := range want {
		if counts[state] != n {
			t.Errorf("%d updates expected %s, want %d", counts[state], state, n)
		}
	}
}

func TestAnUpdateOfTheImagesBuildForArm64IsNotApplicableForItsArchitecture(t *testing.T) {
	t.Parallel()
	s := create(t, Options{})
	idx, err := wiminfo.ReadFile(s.WIM)
	if err != nil {
		t.Fatal(err)
	}
	ix := applicability.NewIndex(idx[0].Index, idx[0].Arch, idx[0].Build, nil)
	found := 0
	for _, u := range s.Updates {
		if u.Architecture != osvcv1.Architecture_ARCHITECTURE_ARM64 {
			continue
		}
		p, err := updatepkg.Open(u.File)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(p.Manifest.ApplicableBuilds, idx[0].Build) {
			continue
		}
		found++
		verdict, reason := applicability.Check(p.Manifest.Applicability(), ix)
		if u.Want != osvcv1.UpdateState_UPDATE_STATE_NOT_APPLICABLE || verdict != applicability.WrongArchitecture ||
			!strings.Contains(reason, "arm64") || !strings.Contains(reason, "x64") {
			t.Errorf("%s: want %s, verdict %s (%s); want NOT_APPLICABLE for its architecture", filepath.Base(u.File), u.Want, verdict, reason)
		}
	}
	if found != 1 {
		t.Errorf("%d arm64 updates for build %d, want 1", found, idx[0].Build)
	}
}

// cabextractAll extracts a CAB, or an MSU and the CABs inside it, with
// Debian's cabextract, which must agree with our reader.
func cabextractAll(t *testing.T, file string) {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("cabextract", "-q", "-d", dir, file).CombinedOutput()
	if err != nil {
		t.Fatalf("cabextract %s: %v: %s", filepath.Base(file), err, out)
	}
	inner, _ := filepath.Glob(filepath.Join(dir, "*.cab"))
	for _, c := range inner {
		cabextractAll(t, c)
	}
	if len(inner) == 0 {
		if _, err := os.Stat(filepath.Join(dir, "update.mum")); err != nil {
			t.Errorf("cabextract of %s gave no update.mum", filepath.Base(file))
		}
	}
}

func TestTheNewerCumulativeUpdateSupersedesTheOlder(t *testing.T) {
	t.Parallel()
	s := create(t, Options{})
	var cus []*updatepkg.Manifest
	for _, u := range s.Updates {
		if u.Classification == osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE && u.Want == osvcv1.UpdateState_UPDATE_STATE_APPLIED {
			p, err := updatepkg.Open(u.File)
			if err != nil {
				t.Fatal(err)
			}
			cus = append(cus, p.Manifest)
		}
	}
	if len(cus) != 2 {
		t.Fatalf("%d applicable cumulative updates, want 2", len(cus))
	}
	older, newer := cus[0], cus[1]
	if !newer.Released.After(older.Released) {
		t.Errorf("newer released %s, older %s", newer.Released, older.Released)
	}
	found := false
	for _, s := range newer.Supersedes {
		found = found || s == older.Identity.String() || s == older.KB
	}
	if !found {
		t.Errorf("newer supersedes %v, want %s", newer.Supersedes, older.Identity)
	}
	oldVersions := map[string]string{}
	for _, c := range older.Components {
		oldVersions[c.Name] = c.Version
	}
	for _, c := range newer.Components {
		if v, ok := oldVersions[c.Name]; ok && v >= c.Version {
			t.Errorf("component %s: newer %s is not above older %s", c.Name, c.Version, v)
		}
	}
}

func TestAnUpdatesFilesCarryUpdateFileBytesOr1Of32OfThePayload(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
		want int64
	}{
		{"by default 1/32 of the payload", Options{PayloadBytes: 512 << 10}, 16 << 10},
		{"UpdateFileBytes when given", Options{PayloadBytes: 512 << 10, UpdateFileBytes: 20 << 10}, 20 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := create(t, tt.opts)
			p, err := updatepkg.Open(s.Updates[0].File)
			if err != nil {
				t.Fatal(err)
			}
			staged, err := p.Stage(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range staged[0].Components {
				for _, f := range c.Component.Files {
					if got := fileSize(t, filepath.Join(c.PayloadDir, f)); got != tt.want {
						t.Errorf("%s/%s has %d bytes, want %d", c.Component.Name, f, got, tt.want)
					}
				}
			}
		})
	}
}

func TestWithUpdateFileBytesTheImagesComponentFilesAreAsLarge(t *testing.T) {
	t.Parallel()
	opts := Options{PayloadBytes: 512 << 10, UpdateFileBytes: 20 << 10, Build: DefaultBuild}
	s := create(t, opts)
	dir := t.TempDir()
	g := newGenerator(opts)
	for _, c := range g.baseComponents() {
		for _, f := range c.Files {
			path := "/Windows/WinSxS/" + c.SxSName() + "/" + f
			out, err := exec.Command("wimlib-imagex", "extract", s.WIM, "1", path, "--dest-dir="+dir, "--no-acls").CombinedOutput()
			if err != nil {
				t.Fatalf("wimlib-imagex extract %s: %v: %s", path, err, out)
			}
			if got := fileSize(t, filepath.Join(dir, f)); got != opts.UpdateFileBytes {
				t.Errorf("%s has %d bytes, want %d", path, got, opts.UpdateFileBytes)
			}
		}
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Size()
}

func TestCreateIsDeterministic(t *testing.T) {
	t.Parallel()
	a := create(t, Options{})
	b := create(t, Options{})
	other := create(t, Options{Build: 22621})
	for i := range a.Updates {
		da, err := os.ReadFile(a.Updates[i].File)
		if err != nil {
			t.Fatal(err)
		}
		db, err := os.ReadFile(b.Updates[i].File)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(da, db) {
			t.Errorf("%s differs between two runs with the same options", filepath.Base(a.Updates[i].File))
		}
		do, err := os.ReadFile(other.Updates[i].File)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(da, do) && a.Updates[i].Want == osvcv1.UpdateState_UPDATE_STATE_APPLIED {
			t.Errorf("%s is the same for another build", filepath.Base(a.Updates[i].File))
		}
	}
}

func TestCreateRefusesBadOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
	}{
		{"no folder", Options{}},
		{"a payload too small to be an image", Options{Dir: t.TempDir(), PayloadBytes: 10}},
		{"an edition that is a path", Options{Dir: t.TempDir(), Edition: "../x"}},
		{"a negative update file size", Options{Dir: t.TempDir(), UpdateFileBytes: -1}},
		{"update files larger than any system binary", Options{Dir: t.TempDir(), UpdateFileBytes: MaxUpdateFileBytes + 1}},
		{"component files taking more than half the payload", Options{Dir: t.TempDir(), PayloadBytes: 512 << 10, UpdateFileBytes: 32 << 10}},
	}
	for _, tt := range tests {
		if _, err := Create(context.Background(), tt.opts); err == nil {
			t.Errorf("%s: Create succeeded, want an error", tt.name)
		}
	}
}
