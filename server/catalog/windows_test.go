package catalog_test

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/updatepkg/updatepkgtest"
)

// Importing update files shaped as Microsoft ships them (updatepkgtest's
// windows.go says where their structure comes from).

// applicableToX64 names the updates applicable to an image of one x64
// index of build.
func (f *fixture) applicableToX64(t *testing.T, build uint32) string {
	t.Helper()
	img := &osvcv1.Image{Name: "images/win", Indexes: []*osvcv1.ImageIndex{{Index: 1, Architecture: osvcv1.Architecture_ARCHITECTURE_X64, Build: build}}}
	list, err := f.cat.ApplicableUpdates(context.Background(), img, nil)
	if err != nil {
		t.Fatal(err)
	}
	return names(list)
}

func TestImportOfAnMSUAsMicrosoftShipsItRecordsItsMetadata(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	lcu, ssu := updatepkgtest.KB5005565(), updatepkgtest.ServicingStack19041()
	data := updatepkgtest.WindowsMSUFile(t, updatepkgtest.WindowsMSU{Packages: []updatepkgtest.WindowsPackage{ssu, lcu}, Main: lcu,
		Properties: true, Unattend: true, WindowsUpdate: true})
	u := f.importOne(t, f.file(t, "windows10.0-kb5005565-x64_2b4b6f3f1c7d8e9a.msu", data))

	want := &osvcv1.Update{
		Name:            "updates/kb5005565-x64",
		Kb:              "KB5005565",
		Title:           "Security Update for Windows 10 (KB5005565)",
		Classification:  osvcv1.Classification_CLASSIFICATION_CUMULATIVE_UPDATE,
		Products:        []string{"Windows 10"},
		Architecture:    osvcv1.Architecture_ARCHITECTURE_X64,
		PackageIdentity: "Package_for_RollupFix~31bf3856ad364e35~amd64~~19041.1237.1.4",
		Engines:         []string{"dism"},
	}
	if u.Name != want.Name || u.Kb != want.Kb || u.Title != want.Title || u.Classification != want.Classification ||
		!slices.Equal(u.Products, want.Products) || u.Architecture != want.Architecture || u.PackageIdentity != want.PackageIdentity ||
		!slices.Equal(u.ApplicableBuilds, []uint32{19041}) || u.MinBuild != 0 || !slices.Equal(u.Engines, want.Engines) {
		t.Errorf("update = %v\nwant name, KB, title, classification, products, architecture, identity, builds [19041], engines of %v", u, want)
	}
	if !u.ReleaseTime.AsTime().Equal(time.Date(2021, 9, 3, 21, 17, 36, 0, time.UTC)) {
		t.Errorf("release_time = %v, want update.mum's creationTimeStamp", u.ReleaseTime.AsTime())
	}
	for _, w := range []string{"the wimlib engine does not install it", "Windows10.0-KB5005565-x64.cab: update.mum installs packages of its own (2: ", "DCM delta format"} {
		if !strings.Contains(u.UnsupportedReason, w) {
			t.Errorf("unsupported_reason %q does not say %q", u.UnsupportedReason, w)
		}
	}
	got, err := f.cat.GetUpdate(ctx, u.Name)
	if err != nil || got.Title != want.Title || !slices.Equal(got.Engines, want.Engines) || got.UnsupportedReason != u.UnsupportedReason {
		t.Errorf("GetUpdate = %v, %v; want what the import returned", got, err)
	}
	// It is listed for a build 19041 x64 index, for the dism engine to apply.
	for build, applies := range map[uint32]bool{19041: true, 22631: false} {
		if got := f.applicableToX64(t, build); (got == "[updates/kb5005565-x64]") != applies {
			t.Errorf("applicable to build %d = %s, want it listed %t", build, got, applies)
		}
	}
}

func TestImportOfAPackageForLaterBuildsListsItForThem(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	lcu := updatepkgtest.WindowsPackage{
		KB: "KB5043080", Name: "Package_for_RollupFix", Version: "26100.1742.1.10", Arch: "amd64",
		ReleaseType: "Security Update", BuildCompare: "GE", ParentVersion: "10.0.26100.1",
		Nested: 1, Catalogs: true, DCM: true,
	}
	// It also names one earlier build exactly, in a parent of its own.
	members := lcu.Members()
	members[0].Data = []byte(strings.Replace(string(members[0].Data), "    <parent ",
		`    <parent buildCompare="EQ" revisionCompare="GE" integrate="separate" disposition="detect"><assemblyIdentity name="Microsoft-Windows-Foundation-Package" version="10.0.22631.1" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35"/></parent>`+"\r\n    <parent ", 1))
	u := f.importOne(t, f.file(t, lcu.FileName(".cab"), updatepkgtest.Cabinet(t, members...)))
	if u.MinBuild != 26100 || !slices.Equal(u.ApplicableBuilds, []uint32{22631}) {
		t.Fatalf("builds %v from %d, want 22631 and from 26100 on", u.ApplicableBuilds, u.MinBuild)
	}
	for build, applies := range map[uint32]bool{22621: false, 22631: true, 26100: true, 26200: true} {
		if got := f.applicableToX64(t, build); (got == "[updates/kb5043080-x64]") != applies {
			t.Errorf("applicable to build %d = %s, want it listed %t", build, got, applies)
		}
	}
}

func TestImportSaysWhichEnginesApplyAnUpdate(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	osvcShaped := buildCAB(t, manifest("Package_for_KB5031001", "amd64", "22621.2428.1.0", "KB5031001", securityUpdate, []uint32{22631}))
	// Quantum, which osvc's cabinet reader lists but does not expand (LZX
	// is read, Quantum is not).
	quantum := append([]byte(nil), osvcShaped...)
	binary.LittleEndian.PutUint16(quantum[42:], 0x1472) // the folder's compression: Quantum, level 7, 20-bit window
	for _, tc := range []struct {
		name, file string
		data       []byte
		engines    []string
		reason     string
	}{
		{"a package in osvc's shape: both", "windows11.0-kb5031001-x64.cab", osvcShaped, []string{"dism", "wimlib"}, ""},
		{"a package Windows built: dism", "windows10.0-kb5005565-x64.cab", updatepkgtest.WindowsCab(t, updatepkgtest.KB5005565()), []string{"dism"},
			"the wimlib engine does not install it: it is signed with Windows' catalogs"},
		{"a Quantum cabinet: dism", "windows11.0-kb5031002-x64.cab", quantum, []string{"dism"}, "the wimlib engine does not read it: windows11.0-kb5031002-x64.cab: unsupported update file"},
		{"an MSU that is a WIM: dism", "windows11.0-kb5043080-x64.msu", append([]byte("MSWIM\x00\x00\x00"), make([]byte, 200)...), []string{"dism"}, "a WIM archive"},
		{"an .exe: none", "windows-kb890830-x64-v5.138.exe", []byte("MZ tool"), nil, "windows-kb890830-x64-v5.138.exe is not a CAB or MSU package"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := f.importOne(t, f.file(t, tc.file, tc.data))
			if !slices.Equal(u.Engines, tc.engines) || !strings.Contains(u.UnsupportedReason, tc.reason) || (tc.reason == "") != (u.UnsupportedReason == "") {
				t.Errorf("engines %q, unsupported_reason %q; want %q and a reason saying %q", u.Engines, u.UnsupportedReason, tc.engines, tc.reason)
			}
		})
	}
	t.Run("an MSU that is a WIM is recorded from its name", func(t *testing.T) {
		u, err := f.cat.GetUpdate(context.Background(), "updates/kb5043080-x64")
		if err != nil || u.Kb != "KB5043080" || u.Architecture != osvcv1.Architecture_ARCHITECTURE_X64 || u.PackageIdentity != "" {
			t.Errorf("GetUpdate = %v, %v; want KB5043080, x64, no package identity", u, err)
		}
	})
	t.Run("a .cab that is a WIM is still refused", func(t *testing.T) {
		bad := f.file(t, "windows11.0-kb5043081-x64.cab", append([]byte("MSWIM\x00\x00\x00"), make([]byte, 200)...))
		_, err := f.cat.ImportUpdates(context.Background(), []*osvcv1.UpdateFile{bad})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "is named like an update package but is not a cabinet") {
			t.Errorf("ImportUpdates = %v, want InvalidArgument: not a cabinet", err)
		}
	})
}
