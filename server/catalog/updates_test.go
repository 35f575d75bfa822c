package catalog_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/updatepkg"
	"github.com/osvc/osvc/server/catalog"
)

const token = "31bf3856ad364e35"

// Release types, from which updatepkg derives the classification (a
// Package_for_RollupFix is always a cumulative update).
const (
	securityUpdate = "Security Update"
	plainUpdate    = "Update"
	servicingStack = "Servicing Stack Update"
)

// manifest describes a package for buildCAB.
func manifest(name, arch, version, kb, releaseType string, builds []uint32, supersedes ...string) *updatepkg.Manifest {
	return &updatepkg.Manifest{
		Identity:         updatepkg.Identity{Name: name, PublicKeyToken: token, Arch: arch, Language: "neutral", Version: version},
		KB:               kb,
		Title:            fmt.Sprintf("2023-10 Update for Windows 11 (%s)", kb),
		ReleaseType:      releaseType,
		Released:         time.Date(2023, 10, 10, 0, 0, 0, 0, time.UTC),
		Products:         []string{"Windows 11"},
		ApplicableBuilds: builds,
		Supersedes:       supersedes,
		Components: []updatepkg.Component{{
			Name: "Microsoft-Windows-Osvc-" + kb, Version: version, Arch: componentArch(arch), PublicKeyToken: token,
			Files: []string{"osvc.dll"},
		}},
	}
}

func componentArch(arch string) string {
	if arch == "neutral" {
		return "msil"
	}
	return arch
}

// buildCAB writes a real package CAB for m.
func buildCAB(t *testing.T, m *updatepkg.Manifest) []byte {
	t.Helper()
	payload := map[string]map[string][]byte{}
	for _, c := range m.Components {
		files := map[string][]byte{}
		for _, f := range c.Files {
			files[f] = []byte("payload of " + c.Name + " " + f)
		}
		payload[c.SxSName()] = files
	}
	var buf bytes.Buffer
	if err := updatepkg.Build(&buf, m, payload); err != nil {
		t.Fatalf("updatepkg.Build: %v", err)
	}
	return buf.Bytes()
}

func (f *fixture) file(t *testing.T, name string, data []byte) *osvcv1.UpdateFile {
	t.Helper()
	c := f.put(t, data)
	return &osvcv1.UpdateFile{FileName: name, Sha256: c.Sha256}
}

func (f *fixture) importOne(t *testing.T, file *osvcv1.UpdateFile) *osvcv1.Update {
	t.Helper()
	us, err := f.cat.ImportUpdates(context.Background(), []*osvcv1.UpdateFile{file})
	if err != nil {
		t.Fatalf("ImportUpdates(%s): %v", file.FileName, err)
	}
	if len(us) != 1 {
		t.Fatalf("ImportUpdates(%s) = %d updates, want 1", file.FileName, len(us))
	}
	return us[0]
}

func (f *fixture) countUpdates(t *testing.T) int {
	t.Helper()
	us, _, err := f.cat.ListUpdates(context.Background(), nil, 1000, "")
	if err != nil {
		t.Fatal(err)
	}
	return len(us)
}

func TestImportUpdatesReadsThePackageManifest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	m := manifest("Package_for_RollupFix", "amd64", "22621.2428.1.0", "KB5031354",
		securityUpdate, []uint32{22621, 22631},
		"Package_for_RollupFix~"+token+"~amd64~~22621.2361.1.0")
	cab := f.file(t, "windows11.0-kb5031354-x64.cab", buildCAB(t, m))

	u := f.importOne(t, cab)
	if u.Name != "updates/kb5031354-x64" {
		t.Errorf("name = %s, want updates/kb5031354-x64", u.Name)
	}
	if u.Kb != "KB5031354" || u.Architecture != osvcv1.Architecture_ARCHITECTURE_X64 ||
		u.Classification != osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE || u.Title != m.Title {
		t.Errorf("update = %v", u)
	}
	if u.PackageIdentity != m.Identity.String() {
		t.Errorf("package_identity = %q, want %q", u.PackageIdentity, m.Identity.String())
	}
	if fmt.Sprint(u.ApplicableBuilds) != "[22621 22631]" || fmt.Sprint(u.Supersedes) != fmt.Sprint(m.Supersedes) ||
		fmt.Sprint(u.Products) != "[Windows 11]" {
		t.Errorf("builds %v, supersedes %v, products %v", u.ApplicableBuilds, u.Supersedes, u.Products)
	}
	if !u.ReleaseTime.AsTime().Equal(m.Released) {
		t.Errorf("release_time = %v, want %v", u.ReleaseTime.AsTime(), m.Released)
	}
	if len(u.Files) != 1 || u.Files[0].Sha256 != cab.Sha256 || u.Files[0].SizeBytes == 0 || u.Files[0].FileName != cab.FileName {
		t.Errorf("files = %v", u.Files)
	}
	if len(u.UpdateId) != 36 || strings.Count(u.UpdateId, "-") != 4 {
		t.Errorf("update_id = %q, want a UUID", u.UpdateId)
	}
	got, err := f.cat.GetUpdate(ctx, u.Name)
	if err != nil {
		t.Fatalf("GetUpdate: %v", err)
	}
	if got.UpdateId != u.UpdateId || got.PackageIdentity != u.PackageIdentity {
		t.Errorf("GetUpdate = %v, want %v", got, u)
	}
}

func TestImportingAKnownPackageAgainReturnsTheExistingUpdate(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	m := manifest("Package_for_KB5030000", "amd64", "22621.2300.1.0", "KB5030000", securityUpdate, nil)
	first := f.importOne(t, f.file(t, "kb5030000.cab", buildCAB(t, m)))

	t.Run("the same file", func(t *testing.T) {
		again := f.importOne(t, &osvcv1.UpdateFile{FileName: "kb5030000.cab", Sha256: first.Files[0].Sha256})
		if again.Name != first.Name || again.UpdateId != first.UpdateId {
			t.Errorf("re-import = %s (%s), want %s (%s)", again.Name, again.UpdateId, first.Name, first.UpdateId)
		}
	})
	t.Run("another file with the same package identity", func(t *testing.T) {
		m2 := manifest("Package_for_KB5030000", "amd64", "22621.2300.1.0", "KB5030000", securityUpdate, nil)
		m2.Title = "a different title, same identity"
		again := f.importOne(t, f.file(t, "copy-of-kb5030000.cab", buildCAB(t, m2)))
		if again.Name != first.Name {
			t.Errorf("re-import = %s, want the existing %s", again.Name, first.Name)
		}
	})
	t.Run("twice in one request", func(t *testing.T) {
		file := &osvcv1.UpdateFile{FileName: "kb5030000.cab", Sha256: first.Files[0].Sha256}
		us, err := f.cat.ImportUpdates(context.Background(), []*osvcv1.UpdateFile{file, file})
		if err != nil {
			t.Fatal(err)
		}
		if len(us) != 2 || us[0].Name != first.Name || us[1].Name != first.Name {
			t.Errorf("updates = %v, want %s twice", us, first.Name)
		}
	})
	if n := f.countUpdates(t); n != 1 {
		t.Errorf("%d updates in the catalog, want 1", n)
	}
}

func TestImportUpdatesRecordsOtherFilesFromTheirName(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	exe := f.file(t, "ndp481-kb5029921-x64-allos-enu.exe", []byte("MZ an installer"))
	u := f.importOne(t, exe)
	if u.Name != "updates/kb5029921-x64" || u.Kb != "KB5029921" || u.Title != exe.FileName ||
		u.Architecture != osvcv1.Architecture_ARCHITECTURE_X64 || u.PackageIdentity != "" {
		t.Errorf("update = %v", u)
	}

	tests := []struct {
		file     string
		wantArch osvcv1.Architecture
		wantKB   string
	}{
		{"windows-kb890830-arm64-v5.119.exe", osvcv1.Architecture_ARCHITECTURE_ARM64, "KB890830"},
		{"windows-kb890830-x86.exe", osvcv1.Architecture_ARCHITECTURE_X86, "KB890830"},
		{"setup.exe", osvcv1.Architecture_ARCHITECTURE_NEUTRAL, ""},
		{"Defender_Update_AMD64.exe", osvcv1.Architecture_ARCHITECTURE_X64, ""},
	}
	for _, tt := range tests {
		t.Run(tt.file+" is "+tt.wantArch.String(), func(t *testing.T) {
			u := f.importOne(t, f.file(t, tt.file, []byte("MZ "+tt.file)))
			if u.Architecture != tt.wantArch || u.Kb != tt.wantKB {
				t.Errorf("architecture %v, kb %q; want %v, %q", u.Architecture, u.Kb, tt.wantArch, tt.wantKB)
			}
			if _, err := catalog.UpdateID(u.Name); err != nil {
				t.Errorf("name %q is not a valid update name: %v", u.Name, err)
			}
		})
	}

	t.Run("another file with the same KB gets its own id", func(t *testing.T) {
		other := f.importOne(t, f.file(t, "ndp481-kb5029921-x64-v2.exe", []byte("MZ another installer")))
		if other.Name == u.Name || !strings.HasPrefix(other.Name, "updates/kb5029921-x64-") {
			t.Errorf("name = %s, want a fresh kb5029921-x64-N", other.Name)
		}
	})
	t.Run("the same file again is the same update", func(t *testing.T) {
		again := f.importOne(t, exe)
		if again.Name != u.Name {
			t.Errorf("name = %s, want %s", again.Name, u.Name)
		}
	})
}

func TestImportUpdatesRefusesBadFilesAndWritesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	good := f.file(t, "kb5031000.cab", buildCAB(t, manifest("Package_for_KB5031000", "amd64", "1.0.0.0", "KB5031000", plainUpdate, nil)))
	damaged := f.file(t, "kb5039999-x64.cab", append([]byte("MSCF"), randomBytes(t, 200)...))
	missing := "1111111111111111111111111111111111111111111111111111111111111111"

	tests := []struct {
		name      string
		file      *osvcv1.UpdateFile
		wantErr   error
		wantField string
		wantText  string
	}{
		{"a damaged CAB", damaged, errdefs.ErrInvalidArgument, "files[1]", "kb5039999-x64.cab"},
		{"a file name with a path", &osvcv1.UpdateFile{FileName: "../evil.cab", Sha256: good.Sha256}, errdefs.ErrInvalidArgument, "files[1].file_name", ""},
		{"a file name with a backslash", &osvcv1.UpdateFile{FileName: `..\evil.cab`, Sha256: good.Sha256}, errdefs.ErrInvalidArgument, "files[1].file_name", ""},
		{"no file name", &osvcv1.UpdateFile{Sha256: good.Sha256}, errdefs.ErrInvalidArgument, "files[1].file_name", ""},
		{"a file name with a newline", &osvcv1.UpdateFile{FileName: "kb1\nforged log line.cab", Sha256: good.Sha256}, errdefs.ErrInvalidArgument, "files[1].file_name", ""},
		{"a file name of 300 characters", &osvcv1.UpdateFile{FileName: strings.Repeat("k", 296) + ".cab", Sha256: good.Sha256}, errdefs.ErrInvalidArgument, "files[1].file_name", ""},
		{"a .cab that is not a cabinet", &osvcv1.UpdateFile{FileName: "kb5038888.cab", Sha256: f.put(t, []byte("MZ an exe named .cab")).Sha256}, errdefs.ErrInvalidArgument, "files[1]", "kb5038888.cab"},
		{"an .msu that is neither a cabinet nor a WIM", &osvcv1.UpdateFile{FileName: "kb5038889.msu", Sha256: f.put(t, []byte("MZ an exe named .msu")).Sha256}, errdefs.ErrInvalidArgument, "files[1]", "kb5038889.msu"},
		{"a malformed sha256", &osvcv1.UpdateFile{FileName: "a.cab", Sha256: "XYZ"}, errdefs.ErrInvalidArgument, "files[1].sha256", ""},
		{"a file not uploaded", &osvcv1.UpdateFile{FileName: "kb1.cab", Sha256: missing}, errdefs.ErrFailedPrecondition, "", "kb1.cab"},
		{"a wrong size", &osvcv1.UpdateFile{FileName: "kb5031000.cab", Sha256: good.Sha256, SizeBytes: 1}, errdefs.ErrInvalidArgument, "files[1].size_bytes", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			// The good file first: the bad second one must stop the whole request.
			_, err := f.cat.ImportUpdates(context.Background(), []*osvcv1.UpdateFile{good, tt.file})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ImportUpdates: got %v, want %v", err, tt.wantErr)
			}
			if got := fieldOf(err); got != tt.wantField {
				t.Errorf("field = %q, want %q (%v)", got, tt.wantField, err)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not name %q", err, tt.wantText)
			}
		})
	}
	if _, err := f.cat.ImportUpdates(context.Background(), nil); fieldOf(err) != "files" {
		t.Errorf("no files: got %v, want InvalidArgument on files", err)
	}
	if n := f.countUpdates(t); n != 0 {
		t.Errorf("refused requests left %d updates in the catalog", n)
	}
}

func TestListUpdatesFilters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	cu := manifest("Package_for_RollupFix", "amd64", "22621.2428.1.0", "KB5031354", securityUpdate, nil)
	cu.Title = "2023-10 Cumulative Update for Windows 11"
	arm := manifest("Package_for_RollupFix", "arm64", "22621.2428.1.0", "KB5031354", securityUpdate, nil)
	arm.Title = "2023-10 Cumulative Update for Windows 11 for ARM64"
	ssu := manifest("Package_for_ServicingStack", "amd64", "22621.2420.1.0", "KB5031590", servicingStack, nil)
	ssu.Title = "Servicing Stack Update"
	ssu.Products = []string{"Windows Server 2022"}
	for name, m := range map[string]*updatepkg.Manifest{"cu-x64.cab": cu, "cu-arm64.cab": arm, "ssu.cab": ssu} {
		f.importOne(t, f.file(t, name, buildCAB(t, m)))
	}
	f.importOne(t, f.file(t, "tool-kb5000001.exe", []byte("MZ neutral")))

	tests := []struct {
		name   string
		filter *osvcv1.UpdateFilter
		want   string
	}{
		{"no filter keeps everything", nil, "[updates/kb5000001 updates/kb5031354-arm64 updates/kb5031354-x64 updates/kb5031590-x64]"},
		{"a KB in lower case", &osvcv1.UpdateFilter{Text: "kb5031354"}, "[updates/kb5031354-arm64 updates/kb5031354-x64]"},
		{"a word of the title", &osvcv1.UpdateFilter{Text: "CUMULATIVE"}, "[updates/kb5031354-arm64 updates/kb5031354-x64]"},
		{"a product", &osvcv1.UpdateFilter{Text: "server 2022"}, "[updates/kb5031590-x64]"},
		{"x64 keeps neutral updates", &osvcv1.UpdateFilter{Architecture: osvcv1.Architecture_ARCHITECTURE_X64}, "[updates/kb5000001 updates/kb5031354-x64 updates/kb5031590-x64]"},
		{"arm64 and text together", &osvcv1.UpdateFilter{Text: "cumulative", Architecture: osvcv1.Architecture_ARCHITECTURE_ARM64}, "[updates/kb5031354-arm64]"},
		{"text matching nothing", &osvcv1.UpdateFilter{Text: "kb9"}, "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Pages of one, so the filter and the paging work together.
			var names []string
			token := ""
			for {
				us, next, err := f.cat.ListUpdates(ctx, tt.filter, 1, token)
				if err != nil {
					t.Fatal(err)
				}
				for _, u := range us {
					names = append(names, u.Name)
				}
				if next == "" {
					break
				}
				token = next
			}
			if got := fmt.Sprint(names); got != tt.want {
				t.Errorf("ListUpdates = %s, want %s", got, tt.want)
			}
		})
	}
	if _, _, err := f.cat.ListUpdates(ctx, &osvcv1.UpdateFilter{Architecture: 99}, 0, ""); fieldOf(err) != "filter.architecture" {
		t.Errorf("an unknown architecture: got %v, want InvalidArgument on filter.architecture", err)
	}
}

func TestConcurrentImportsOfOnePackageRecordOneUpdate(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	file := f.file(t, "kb5032190.cab", buildCAB(t, manifest("Package_for_KB5032190", "amd64", "1.0.0.0", "KB5032190", securityUpdate, nil)))
	const importers = 6
	names := make(chan string, importers)
	errs := make(chan error, importers)
	for range importers {
		go func() {
			us, err := f.cat.ImportUpdates(context.Background(), []*osvcv1.UpdateFile{file})
			if err != nil {
				errs <- err
				return
			}
			names <- us[0].Name
		}()
	}
	for range importers {
		select {
		case err := <-errs:
			t.Errorf("ImportUpdates: %v", err)
		case name := <-names:
			if name != "updates/kb5032190-x64" {
				t.Errorf("an importer got %s, want updates/kb5032190-x64", name)
			}
		}
	}
	if n := f.countUpdates(t); n != 1 {
		t.Errorf("%d updates in the catalog, want 1", n)
	}
}
