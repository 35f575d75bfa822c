package api_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func TestSiteServiceCreatesGetsListsUpdatesAndDeletesSites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newCatalogAPI(t)
	created, err := a.sites.CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "SS1", ParentSite: "PS1", OfflineServicingDrive: "d:"}})
	if err != nil || created.GetSite().GetName() != "sites/SS1" || created.GetSite().GetOfflineServicingDrive() != "d:" {
		t.Fatalf("CreateSite = %v, %v", created, err)
	}
	if got, err := a.sites.GetSite(ctx, &osvcv1.GetSiteRequest{Name: "sites/SS1"}); err != nil || got.GetSite().GetParentSite() != "PS1" {
		t.Errorf("GetSite = %v, %v", got, err)
	}
	list, err := a.sites.ListSites(ctx, &osvcv1.ListSitesRequest{PageSize: 1})
	if err != nil || len(list.GetSites()) != 1 || list.GetSites()[0].GetCode() != "PS1" || list.GetNextPageToken() == "" {
		t.Fatalf("ListSites of one = %v, %v; want PS1 and a token", list, err)
	}
	list, err = a.sites.ListSites(ctx, &osvcv1.ListSitesRequest{PageToken: list.GetNextPageToken()})
	if err != nil || len(list.GetSites()) != 1 || list.GetSites()[0].GetCode() != "SS1" || list.GetNextPageToken() != "" {
		t.Errorf("ListSites after the token = %v, %v; want SS1 alone", list, err)
	}
	up, err := a.sites.UpdateSite(ctx, &osvcv1.UpdateSiteRequest{Site: &osvcv1.Site{Name: "sites/SS1"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"parent_site", "offline_servicing_drive"}}})
	if err != nil || up.GetSite().GetParentSite() != "" || up.GetSite().GetOfflineServicingDrive() != "Automatic" {
		t.Errorf("UpdateSite clearing the parent and the drive = %v, %v; want no parent, Automatic", up, err)
	}
	if _, err := a.sites.DeleteSite(ctx, &osvcv1.DeleteSiteRequest{Name: "sites/SS1"}); err != nil {
		t.Errorf("DeleteSite: %v", err)
	}
}

func TestSiteServiceAnswersWithTheCodeOfTheDomainError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newCatalogAPI(t)
	sha := a.put(t, catalogTestWIM(t))
	if _, err := a.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "win11", Site: "PS1", ContentSha256: sha}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.sites.CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "SS1", ParentSite: "PS1"}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		call      func() error
		wantCode  codes.Code
		wantField string
		wantText  string
	}{
		{"a taken code", func() error {
			_, err := a.sites.CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "PS1"}})
			return err
		}, codes.AlreadyExists, "", ""},
		{"a bad code", func() error {
			_, err := a.sites.CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "ps1"}})
			return err
		}, codes.InvalidArgument, "site.code", ""},
		{"a relative drive folder", func() error {
			_, err := a.sites.CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "PS2", OfflineServicingDrive: "work"}})
			return err
		}, codes.InvalidArgument, "site.offline_servicing_drive", ""},
		{"a parent that does not exist", func() error {
			_, err := a.sites.CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: &osvcv1.Site{Code: "PS2", ParentSite: "CAS"}})
			return err
		}, codes.FailedPrecondition, "", "osvcctl site create CAS"},
		{"a cycle", func() error {
			_, err := a.sites.UpdateSite(ctx, &osvcv1.UpdateSiteRequest{Site: &osvcv1.Site{Name: "sites/PS1", ParentSite: "SS1"}})
			return err
		}, codes.FailedPrecondition, "", "PS1 → SS1 → PS1"},
		{"a site that does not exist", func() error {
			_, err := a.sites.GetSite(ctx, &osvcv1.GetSiteRequest{Name: "sites/PS9"})
			return err
		}, codes.NotFound, "", ""},
		{"a malformed name", func() error {
			_, err := a.sites.GetSite(ctx, &osvcv1.GetSiteRequest{Name: "PS1"})
			return err
		}, codes.InvalidArgument, "name", ""},
		{"a field the mask cannot name", func() error {
			_, err := a.sites.UpdateSite(ctx, &osvcv1.UpdateSiteRequest{Site: &osvcv1.Site{Name: "sites/PS1"},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"create_time"}}})
			return err
		}, codes.InvalidArgument, "update_mask", ""},
		{"deleting a site with an image and a child", func() error {
			_, err := a.sites.DeleteSite(ctx, &osvcv1.DeleteSiteRequest{Name: "sites/PS1"})
			return err
		}, codes.FailedPrecondition, "", "1 image (images/win11) and 1 child site (sites/SS1)"},
		{"deleting a site that does not exist", func() error {
			_, err := a.sites.DeleteSite(ctx, &osvcv1.DeleteSiteRequest{Name: "sites/PS9"})
			return err
		}, codes.NotFound, "", ""},
		{"a negative page size", func() error {
			_, err := a.sites.ListSites(ctx, &osvcv1.ListSitesRequest{PageSize: -1})
			return err
		}, codes.InvalidArgument, "page_size", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is "+tt.wantCode.String(), func(t *testing.T) {
			err := tt.call()
			wantStatus(t, err, tt.wantCode, tt.wantField)
			if !strings.Contains(status.Convert(err).Message(), tt.wantText) {
				t.Errorf("message %q does not say %q", status.Convert(err).Message(), tt.wantText)
			}
		})
	}
}
