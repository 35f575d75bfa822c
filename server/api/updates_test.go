package api_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func TestUpdateServiceImportsListsAndFindsApplicableUpdates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newCatalogAPI(t)
	wim := a.put(t, catalogTestWIM(t))
	if _, err := a.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "win11", Site: "PS1", ContentSha256: wim}); err != nil {
		t.Fatal(err)
	}
	x64 := &osvcv1.UpdateFile{FileName: "windows-kb890830-x64.exe", Sha256: a.put(t, []byte("MZ x64 tool"))}
	arm := &osvcv1.UpdateFile{FileName: "windows-kb890830-arm64.exe", Sha256: a.put(t, []byte("MZ arm64 tool"))}

	imported, err := a.updates.ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{Files: []*osvcv1.UpdateFile{x64, arm}})
	if err != nil {
		t.Fatalf("ImportUpdates: %v", err)
	}
	if len(imported.Updates) != 2 || imported.Updates[0].Name != "updates/kb890830-x64" || imported.Updates[1].Name != "updates/kb890830-arm64" {
		t.Fatalf("imported = %v", imported.Updates)
	}
	got, err := a.updates.GetUpdate(ctx, &osvcv1.GetUpdateRequest{Name: "updates/kb890830-x64"})
	if err != nil || got.Update.Files[0].Sha256 != x64.Sha256 {
		t.Errorf("GetUpdate = %v, %v", got, err)
	}
	list, err := a.updates.ListUpdates(ctx, &osvcv1.ListUpdatesRequest{PageSize: 1})
	if err != nil || len(list.Updates) != 1 || list.NextPageToken == "" {
		t.Fatalf("ListUpdates first page = %v, %v; want one update and a token", list, err)
	}
	list, err = a.updates.ListUpdates(ctx, &osvcv1.ListUpdatesRequest{PageSize: 1, PageToken: list.NextPageToken})
	if err != nil || len(list.Updates) != 1 {
		t.Fatalf("ListUpdates second page = %v, %v", list, err)
	}
	applicable, err := a.updates.ListApplicableUpdates(ctx, &osvcv1.ListApplicableUpdatesRequest{Image: "images/win11"})
	if err != nil {
		t.Fatalf("ListApplicableUpdates: %v", err)
	}
	if len(applicable.Updates) != 1 || applicable.Updates[0].Name != "updates/kb890830-x64" {
		t.Errorf("applicable to an x64 image = %v, want only the x64 tool", applicable.Updates)
	}

	tests := []struct {
		name      string
		call      func() error
		wantCode  codes.Code
		wantField string
	}{
		{"an image that is not an image name", func() error {
			_, err := a.updates.ListApplicableUpdates(ctx, &osvcv1.ListApplicableUpdatesRequest{Image: "updates/kb1"})
			return err
		}, codes.InvalidArgument, "image"},
		{"an unknown image", func() error {
			_, err := a.updates.ListApplicableUpdates(ctx, &osvcv1.ListApplicableUpdatesRequest{Image: "images/nope"})
			return err
		}, codes.NotFound, ""},
		{"an unknown update", func() error {
			_, err := a.updates.GetUpdate(ctx, &osvcv1.GetUpdateRequest{Name: "updates/nope"})
			return err
		}, codes.NotFound, ""},
		{"no files", func() error {
			_, err := a.updates.ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{})
			return err
		}, codes.InvalidArgument, "files"},
		{"a file with a path", func() error {
			_, err := a.updates.ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{Files: []*osvcv1.UpdateFile{{FileName: "../x.exe", Sha256: x64.Sha256}}})
			return err
		}, codes.InvalidArgument, "files[0].file_name"},
		{"a negative page size", func() error {
			_, err := a.updates.ListUpdates(ctx, &osvcv1.ListUpdatesRequest{PageSize: -5})
			return err
		}, codes.InvalidArgument, "page_size"},
		{"a damaged page token", func() error {
			_, err := a.updates.ListApplicableUpdates(ctx, &osvcv1.ListApplicableUpdatesRequest{Image: "images/win11", PageToken: "!!"})
			return err
		}, codes.InvalidArgument, "page_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is "+tt.wantCode.String(), func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != tt.wantCode {
				t.Fatalf("got %v, want %v", err, tt.wantCode)
			}
			if tt.wantField != "" && violatedField(err) != tt.wantField {
				t.Errorf("field violation on %q, want %q (%v)", violatedField(err), tt.wantField, err)
			}
		})
	}
}
