package api_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/server/api"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/servicing/servicingtest"
)

// catalogAPI is the site, image and update services on a bufconn, over a
// real catalog, store and content library. Site PS1 exists: the tests
// import images into it.
type catalogAPI struct {
	sites   osvcv1.SiteServiceClient
	images  osvcv1.ImageServiceClient
	updates osvcv1.UpdateServiceClient
	lib     *content.Library
}

func newCatalogAPI(t *testing.T) *catalogAPI {
	t.Helper()
	env := servicingtest.New(t, servicingtest.Options{})
	env.Site(t, "PS1")
	lib, cat := env.Library, env.Catalog
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	osvcv1.RegisterSiteServiceServer(gs, api.NewSiteServer(env.Sites))
	osvcv1.RegisterImageServiceServer(gs, api.NewImageServer(cat, env.Service, env.Distribution, nil))
	osvcv1.RegisterUpdateServiceServer(gs, api.NewUpdateServer(cat, env.Service, nil))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &catalogAPI{sites: osvcv1.NewSiteServiceClient(conn), images: osvcv1.NewImageServiceClient(conn),
		updates: osvcv1.NewUpdateServiceClient(conn), lib: lib}
}

func (a *catalogAPI) put(t *testing.T, data []byte) string {
	t.Helper()
	c, _, err := a.lib.Write(context.Background(), content.WriteHeader{}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return c.Sha256
}

// catalogTestWIM captures a real one-index x64 WIM with wimlib-imagex.
func catalogTestWIM(t *testing.T) []byte { return servicingtest.CaptureWIM(t) }

// wantStatus fails the test unless err has code and, when field is set, a
// BadRequest violation of field.
func wantStatus(t *testing.T, err error, code codes.Code, field string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want %v", err, code)
	}
	if field != "" && violatedField(err) != field {
		t.Errorf("field violation on %q, want %q (%v)", violatedField(err), field, err)
	}
}

// violatedField returns the field of the BadRequest detail of err, if any.
func violatedField(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
			return br.FieldViolations[0].Field
		}
	}
	return ""
}

func TestImageServiceImportsGetsAndListsImages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newCatalogAPI(t)
	sha := a.put(t, catalogTestWIM(t))

	imported, err := a.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "win11", Site: "PS1", ContentSha256: sha})
	if err != nil {
		t.Fatalf("ImportImage: %v", err)
	}
	if imported.Image.Name != "images/win11" || len(imported.Image.Indexes) != 1 {
		t.Errorf("imported = %v", imported.Image)
	}
	got, err := a.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: "images/win11"})
	if err != nil || got.Image.Name != "images/win11" {
		t.Errorf("GetImage = %v, %v", got, err)
	}
	list, err := a.images.ListImages(ctx, &osvcv1.ListImagesRequest{Site: "PS1"})
	if err != nil || len(list.Images) != 1 || list.NextPageToken != "" {
		t.Errorf("ListImages(PS1) = %v, %v; want the one image", list, err)
	}
	list, err = a.images.ListImages(ctx, &osvcv1.ListImagesRequest{Site: "PS2"})
	if err != nil || len(list.Images) != 0 {
		t.Errorf("ListImages(PS2) = %v, %v; want none", list, err)
	}
}

func TestImageServiceMapsCatalogErrorsToCodes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newCatalogAPI(t)
	sha := a.put(t, catalogTestWIM(t))
	imported, err := a.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "taken", Site: "PS1", ContentSha256: sha})
	if err != nil {
		t.Fatal(err)
	}
	if imported.GetInspectionRun() == "" || imported.GetImage().GetVersions()[0].GetInspectionRun() != imported.GetInspectionRun() {
		t.Errorf("ImportImage = %v, want the inspection run of version 1", imported)
	}
	tests := []struct {
		name      string
		call      func() error
		wantCode  codes.Code
		wantField string
	}{
		{"a bad image id", func() error {
			_, err := a.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "Bad_ID", Site: "PS1", ContentSha256: sha})
			return err
		}, codes.InvalidArgument, "image_id"},
		{"a site that does not exist", func() error {
			_, err := a.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "win", Site: "PS9", ContentSha256: sha})
			return err
		}, codes.FailedPrecondition, ""},
		{"content not uploaded", func() error {
			_, err := a.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "win", Site: "PS1",
				ContentSha256: "2222222222222222222222222222222222222222222222222222222222222222"})
			return err
		}, codes.FailedPrecondition, ""},
		{"a taken id", func() error {
			_, err := a.images.ImportImage(ctx, &osvcv1.ImportImageRequest{ImageId: "taken", Site: "PS1", ContentSha256: sha})
			return err
		}, codes.AlreadyExists, ""},
		{"an unknown image", func() error {
			_, err := a.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: "images/nope"})
			return err
		}, codes.NotFound, ""},
		{"inspecting an image whose inspection is in progress", func() error {
			_, err := a.images.InspectImage(ctx, &osvcv1.InspectImageRequest{Name: "images/taken"})
			return err
		}, codes.FailedPrecondition, ""},
		{"inspecting an unknown image", func() error {
			_, err := a.images.InspectImage(ctx, &osvcv1.InspectImageRequest{Name: "images/nope"})
			return err
		}, codes.NotFound, ""},
		{"a malformed name", func() error {
			_, err := a.images.GetImage(ctx, &osvcv1.GetImageRequest{Name: "win11"})
			return err
		}, codes.InvalidArgument, "name"},
		{"a negative page size", func() error {
			_, err := a.images.ListImages(ctx, &osvcv1.ListImagesRequest{PageSize: -1})
			return err
		}, codes.InvalidArgument, "page_size"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is "+tt.wantCode.String(), func(t *testing.T) {
			wantStatus(t, tt.call(), tt.wantCode, tt.wantField)
		})
	}
}

func TestServerErrorsDoNotShowWhereTheLibraryKeepsFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := newCatalogAPI(t)
	sha := a.put(t, []byte("a package whose file the disk lost"))
	path := a.lib.Path(sha)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err := a.updates.ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{Files: []*osvcv1.UpdateFile{{FileName: "kb1.cab", Sha256: sha}}})
	if err == nil {
		t.Fatal("importing a blob whose file is gone succeeded")
	}
	if libDir := filepath.Dir(filepath.Dir(path)); strings.Contains(err.Error(), libDir) {
		t.Errorf("the error %q shows the library's folder %s", err, libDir)
	}
}
