package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/updatepkg"
	"github.com/osvc/osvc/server/catalog"
)

func identity(name, arch, version string) string {
	return updatepkg.Identity{Name: name, PublicKeyToken: token, Arch: arch, Language: "neutral", Version: version}.String()
}

func names(us []*osvcv1.Update) string {
	out := make([]string, 0, len(us))
	for _, u := range us {
		out = append(out, u.Name)
	}
	return fmt.Sprint(out)
}

func TestApplicableUpdatesMatchArchitectureBuildAndWhatIsInstalled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	const (
		cuClass  = securityUpdate
		secClass = securityUpdate
	)
	oldCU := identity("Package_for_RollupFix", "amd64", "22621.2361.1.0")
	packages := map[string]*updatepkg.Manifest{
		// Installed in the image, and supersedes the old cumulative update.
		"installed.cab": manifest("Package_for_RollupFix", "amd64", "22621.2338.1.0", "KB5030219", cuClass, nil,
			identity("Package_for_KB5029000", "amd64", "1.0.0.0")),
		"superseded.cab": manifest("Package_for_KB5029000", "amd64", "1.0.0.0", "KB5029000", secClass, nil),
		"x64-for-22631.cab": manifest("Package_for_RollupFix", "amd64", "22621.2428.1.0", "KB5031354", cuClass, []uint32{22621, 22631},
			oldCU),
		"x64-for-19045.cab": manifest("Package_for_RollupFix", "amd64", "19041.3570.1.0", "KB5031356", cuClass, []uint32{19045}),
		"arm64.cab":         manifest("Package_for_RollupFix", "arm64", "22621.2428.1.0", "KB5031354", cuClass, nil),
		"neutral.cab":       manifest("Package_for_KB5031000", "neutral", "1.0.0.0", "KB5031000", secClass, nil),
	}
	for name, m := range packages {
		f.importOne(t, f.file(t, name, buildCAB(t, m)))
	}
	f.importOne(t, f.file(t, "windows-kb890830-x64.exe", []byte("MZ malicious software removal tool")))
	f.importOne(t, f.file(t, "windows-kb890831-arm64.exe", []byte("MZ arm64 tool")))

	img := &osvcv1.Image{
		Name: "images/win11",
		Indexes: []*osvcv1.ImageIndex{{
			Index: 1, Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Build: 22631,
			InstalledUpdates: []*osvcv1.InstalledUpdate{{
				PackageIdentity: identity("Package_for_RollupFix", "amd64", "22621.2338.1.0"), Kb: "KB5030219", State: "Installed",
			}},
		}},
	}
	got, err := f.cat.ApplicableUpdates(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	// kb5030219: installed. kb5029000: superseded by the installed package.
	// kb5031356: another build. The arm64 ones: another architecture.
	want := "[updates/kb5031000 updates/kb5031354-x64 updates/kb890830-x64]"
	if names(got) != want {
		t.Errorf("applicable to an x64 22631 index = %s, want %s", names(got), want)
	}

	t.Run("an index of another architecture adds its updates", func(t *testing.T) {
		two := &osvcv1.Image{Name: img.Name, Indexes: append(img.Indexes, &osvcv1.ImageIndex{
			Index: 2, Architecture: osvcv1.Architecture_ARCHITECTURE_ARM64, Build: 22621,
		})}
		got, err := f.cat.ApplicableUpdates(ctx, two, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := "[updates/kb5031000 updates/kb5031354-arm64 updates/kb5031354-x64 updates/kb890830-x64 updates/kb890831-arm64]"
		if names(got) != want {
			t.Errorf("applicable = %s, want %s", names(got), want)
		}
	})
	t.Run("the filter narrows the list", func(t *testing.T) {
		got, err := f.cat.ApplicableUpdates(ctx, img, &osvcv1.UpdateFilter{Text: "kb8908"})
		if err != nil {
			t.Fatal(err)
		}
		if names(got) != "[updates/kb890830-x64]" {
			t.Errorf("applicable matching kb8908 = %s", names(got))
		}
	})
	t.Run("an update recorded as installed by name is not applicable", func(t *testing.T) {
		done := &osvcv1.Image{Name: img.Name, Indexes: []*osvcv1.ImageIndex{{
			Index: 1, Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Build: 22631,
			InstalledUpdates: []*osvcv1.InstalledUpdate{{Update: "updates/kb890830-x64", Kb: "KB890830"}},
		}}}
		got, err := f.cat.ApplicableUpdates(ctx, done, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := "[updates/kb5029000-x64 updates/kb5030219-x64 updates/kb5031000 updates/kb5031354-x64]"
		if names(got) != want {
			t.Errorf("applicable = %s, want %s", names(got), want)
		}
	})
}

func TestListApplicableUpdatesPagesThroughAnImportedImage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	wim := f.put(t, captureWIM(t, wimIndex{name: "Windows 11 Pro", arch: 9, build: 22631}))
	createSites(t, f.store, "PS1")
	if _, err := f.cat.ImportImage(ctx, catalog.ImportImage{ID: "win11", Site: "PS1", ContentSHA256: wim.Sha256}); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 5 {
		kb := fmt.Sprintf("KB50400%02d", i)
		m := manifest("Package_for_"+kb, "amd64", "1.0.0.0", kb, securityUpdate, []uint32{22631})
		u := f.importOne(t, f.file(t, kb+".cab", buildCAB(t, m)))
		want = append(want, u.Name)
	}
	// Not applicable: another build, so it must not take a place in any page.
	f.importOne(t, f.file(t, "old.cab", buildCAB(t, manifest("Package_for_KB4000000", "amd64", "1.0.0.0", "KB4000000",
		plainUpdate, []uint32{19045}))))

	var got []string
	token, pages := "", 0
	for {
		us, next, err := f.cat.ListApplicableUpdates(ctx, "images/win11", nil, false, 2, token)
		if err != nil {
			t.Fatalf("ListApplicableUpdates: %v", err)
		}
		pages++
		got = append(got, namesList(us)...)
		if next == "" {
			break
		}
		token = next
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || pages != 3 {
		t.Errorf("pages of 2 = %v in %d pages, want %v in 3", got, pages, want)
	}

	tests := []struct {
		name    string
		image   string
		token   string
		wantErr error
	}{
		{"an unknown image", "images/nope", "", errdefs.ErrNotFound},
		{"a bad image name", "win11", "", errdefs.ErrInvalidArgument},
		{"a damaged token", "images/win11", "%%%", errdefs.ErrInvalidArgument},
		{"a token of a list of updates", "images/win11", "dXBkYXRlcy9rYjE", errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			if _, _, err := f.cat.ListApplicableUpdates(ctx, tt.image, nil, false, 2, tt.token); !errors.Is(err, tt.wantErr) {
				t.Errorf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func namesList(us []*osvcv1.Update) []string {
	out := make([]string, 0, len(us))
	for _, u := range us {
		out = append(out, u.Name)
	}
	return out
}
