package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func TestSiteListShowsEverySiteWithItsParentAndDrive(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "site", "list")
	assertContainsInOrder(t, out, "CODE", "PARENT", "DRIVE", "DISTRIBUTION POINTS", "DESCRIPTION",
		"CAS", "Automatic", "central site", "PS1", "CAS", "D:", "dp-1,dp-2", "London primary site", "PS2", "CAS")
	if got := len(requestsOf[*osvcv1.ListSitesRequest](f)); got != len(cannedSites) {
		t.Errorf("ListSites called %d times, want %d (one per page)", got, len(cannedSites))
	}
}

func TestSiteCreateSendsItsFlagsAndShowsTheSite(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "site", "create", "sites/SS1", "--parent", "PS1", "--drive", `E:\osvc`, "--description", "Leeds secondary site",
		"--distribution-point", "dp-9,agents/dp-8")
	assertContainsInOrder(t, out, "created sites/SS1", "Code:", "SS1", "Parent site:", "PS1", "Description:", "Leeds secondary site",
		"Servicing drive:", `E:\osvc`, "Distribution points:", "dp-9, dp-8")
	want := &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "SS1", ParentSite: "PS1", Description: "Leeds secondary site",
		OfflineServicingDrive: `E:\osvc`, DistributionPoints: []string{"dp-9", "dp-8"}}}
	if reqs := requestsOf[*osvcv1.CreateSiteRequest](f); len(reqs) != 1 || !proto.Equal(reqs[0], want) {
		t.Errorf("CreateSite requests = %v, want %v", reqs, want)
	}
}

func TestSiteUpdateChangesOnlyWhatItsFlagsName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		args  []string
		want  *osvcv1.Site
		paths []string
		shown string
	}{
		{"a new drive", []string{"--drive", "E:"}, &osvcv1.Site{Name: "sites/PS1", OfflineServicingDrive: "E:"},
			[]string{"offline_servicing_drive"}, "Servicing drive:     E:"},
		{"no parent any more", []string{"--parent", ""}, &osvcv1.Site{Name: "sites/PS1"}, []string{"parent_site"}, "Parent site:         -"},
		{"no distribution points any more", []string{"--distribution-point", ""}, &osvcv1.Site{Name: "sites/PS1"},
			[]string{"distribution_points"}, "Distribution points: -"},
		{"a parent and a description", []string{"--description", "Paris", "--parent", "PS2"},
			&osvcv1.Site{Name: "sites/PS1", ParentSite: "PS2", Description: "Paris"}, []string{"parent_site", "description"}, "Description:         Paris"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := startFake(t)
			out := mustRun(t, f.addr, append([]string{"site", "update", "PS1"}, tt.args...)...)
			assertContainsInOrder(t, out, "updated sites/PS1", tt.shown)
			reqs := requestsOf[*osvcv1.UpdateSiteRequest](f)
			if len(reqs) != 1 || !proto.Equal(reqs[0].GetSite(), tt.want) || !slices.Equal(reqs[0].GetUpdateMask().GetPaths(), tt.paths) {
				t.Errorf("UpdateSite requests = %v, want site %v with mask %v", reqs, tt.want, tt.paths)
			}
		})
	}
	f := startFake(t)
	_, stderr, err := osvcctl(t, f.addr, "site", "update", "PS1")
	if exitCode(err) != exitUsage || !strings.Contains(stderr, "nothing to change") {
		t.Errorf("site update without a flag: exit %d, stderr %q; want a usage error", exitCode(err), stderr)
	}
}

func TestSiteGetAndDeleteNameTheSiteAndSayWhyADeleteIsRefused(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "site", "get", "PS1")
	assertContainsInOrder(t, out, "Code:", "PS1", "Parent site:", "CAS", "Servicing drive:", "D:", "Distribution points:", "dp-1, dp-2", "Created:", "2026-11-14")
	_, stderr, err := osvcctl(t, f.addr, "site", "get", "PS9")
	if exitCode(err) != exitNotFound || !strings.Contains(stderr, siteNotFoundHint) {
		t.Errorf("site get PS9: exit %d, stderr %q; want not found with the hint", exitCode(err), stderr)
	}
	_, stderr, err = osvcctl(t, f.addr, "site", "delete", "PS1")
	if err == nil || !strings.Contains(stderr, "site sites/PS1 cannot be deleted: 1 image (images/win11-23h2) name it") {
		t.Errorf("site delete PS1: %v, stderr %q; want the server's reason", err, stderr)
	}
	if out := mustRun(t, f.addr, "site", "delete", "sites/PS9"); out != "deleted sites/PS9\n" {
		t.Errorf("site delete PS9 printed %q", out)
	}
	if reqs := requestsOf[*osvcv1.DeleteSiteRequest](f); len(reqs) != 2 || reqs[1].GetName() != "sites/PS9" {
		t.Errorf("DeleteSite requests = %v", reqs)
	}
}

func TestImageGetShowsTheImagesSite(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	out := mustRun(t, f.addr, "image", "get", "win11-23h2")
	assertContainsInOrder(t, out, "Site:             PS1 (London primary site; under CAS; servicing drive D:)")
}

func TestImageImportIntoASiteThatDoesNotExistIsRefusedBeforeUploading(t *testing.T) {
	t.Parallel()
	f := startFake(t)
	wim := filepath.Join(t.TempDir(), "install.wim")
	if err := os.WriteFile(wim, []byte("MSWIM"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := osvcctl(t, f.addr, "image", "import", wim, "--site", "PS9")
	if err == nil || !strings.Contains(stderr, "site PS9 does not exist: create it with: osvcctl site create PS9") {
		t.Errorf("err %v, stderr %q; want the way to create PS9", err, stderr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.blobs) != 0 {
		t.Errorf("%d blobs uploaded, want none", len(f.blobs))
	}
}
