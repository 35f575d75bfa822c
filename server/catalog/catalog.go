// Package catalog keeps the catalog of images and updates: importing WIMs and
// update packages already in the content library, listing them, and working
// out which updates apply to an image.
package catalog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/packagetree"
	"github.com/osvc/osvc/pkg/wiminfo"
	"github.com/osvc/osvc/server/admission"
	"github.com/osvc/osvc/server/content"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
)

// Config configures a Catalog.
type Config struct {
	Store   *store.Store
	Library *content.Library
	Logger  hclog.Logger
	// Now is the clock for create and update times; time.Now when nil.
	Now func() time.Time
	// MaxConcurrentImports bounds the ImportImage and ImportUpdates calls
	// that read files at once; more wait for their turn while their context
	// lives. Default DefaultMaxConcurrentImports.
	MaxConcurrentImports int
}

// DefaultMaxConcurrentImports is Config.MaxConcurrentImports when zero. An
// import reads a WIM's header and XML info or a package's manifests: a
// short burst of disk and CPU whose memory a hostile file can push to tens
// of megabytes, so a few at a time keep a small server responsive and its
// memory bounded while honest imports hardly wait.
const DefaultMaxConcurrentImports = 4

// Catalog is the catalog of images and updates.
type Catalog struct {
	store   *store.Store
	lib     *content.Library
	logger  hclog.Logger
	now     func() time.Time
	imports *admission.Gate
}

// New validates cfg and returns a Catalog.
func New(cfg Config) (*Catalog, error) {
	if cfg.Store == nil {
		return nil, errors.New("catalog: Config.Store is required")
	}
	if cfg.Library == nil {
		return nil, errors.New("catalog: Config.Library is required")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	imports, err := admission.New(admission.Config{
		Limit:   cmp.Or(cfg.MaxConcurrentImports, DefaultMaxConcurrentImports),
		What:    "imports",
		Setting: "osvc-server --max-concurrent-imports",
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	return &Catalog{store: cfg.Store, lib: cfg.Library, logger: logger.Named("catalog"), now: now, imports: imports}, nil
}

// ImportImage asks for a WIM already in the content library to become version 1 of a new image.
type ImportImage struct {
	ID, DisplayName, Site, ContentSHA256 string
	// TreeSHA256, for an OS upgrade package kept as a folder tree, names
	// the tree's manifest; ContentSHA256 is then its sources/install.wim.
	TreeSHA256 string
	// Kind defaults to IMAGE_KIND_OS_IMAGE.
	Kind osvcv1.ImageKind
	// Within, when set, adds its writes to the transaction that records the
	// image, which it may still change: servicing queues the inspection run
	// of version 1 so, and an image is never recorded without one.
	Within func(tx *store.Tx, img *osvcv1.Image) error
}

// ImportImage records a new image from a WIM in the content library: the
// WIM's header and XML info are read from the file itself (its indexes), and
// it becomes version 1, current, its inspection PENDING. What only reading
// the whole file can tell (a damaged resource, the installed packages) an
// agent's inspection run finds. An image id already taken is ErrConflict.
func (c *Catalog) ImportImage(ctx context.Context, req ImportImage) (*osvcv1.Image, error) {
	if err := ValidateID(req.ID); err != nil {
		return nil, errdefs.InvalidArgument("image_id", err.Error())
	}
	if err := ValidateSite(req.Site); err != nil {
		return nil, errdefs.InvalidArgument("site", err.Error())
	}
	kind := req.Kind
	switch kind {
	case osvcv1.ImageKind_IMAGE_KIND_UNSPECIFIED:
		kind = osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE
	case osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE, osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE:
	default:
		return nil, errdefs.InvalidArgument("kind", fmt.Sprintf("unknown image kind %d; send IMAGE_KIND_OS_IMAGE or IMAGE_KIND_OS_UPGRADE_PACKAGE", kind))
	}
	if err := validateSHA256(req.ContentSHA256); err != nil {
		return nil, errdefs.InvalidArgument("content_sha256", err.Error())
	}
	if req.TreeSHA256 != "" {
		if kind != osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE {
			return nil, errdefs.InvalidArgument("tree_sha256", "only an OS upgrade package (IMAGE_KIND_OS_UPGRADE_PACKAGE) is kept as a folder tree; import an OS image as its WIM alone")
		}
		if err := validateSHA256(req.TreeSHA256); err != nil {
			return nil, errdefs.InvalidArgument("tree_sha256", err.Error())
		}
	}
	release, err := c.imports.Enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("import image %s: %w", ImageName(req.ID), err)
	}
	defer release()
	blob, err := c.content(ctx, req.ContentSHA256, "upload the WIM first with ContentService.Write / osvcctl image import")
	if err != nil {
		return nil, err
	}
	images, err := c.readWIMInfo(ctx, blob)
	if err != nil {
		return nil, err
	}
	indexes := make([]*osvcv1.ImageIndex, 0, len(images))
	for _, im := range images {
		indexes = append(indexes, im.Proto())
	}
	if len(indexes) == 0 {
		return nil, errdefs.InvalidArgument("content_sha256",
			fmt.Sprintf("WIM %s holds no image index; upload a WIM with at least one image", blob.GetSha256()))
	}
	var tree *osvcv1.PackageTreeRef
	if req.TreeSHA256 != "" {
		if tree, err = c.claimTree(ctx, req.TreeSHA256, blob); err != nil {
			return nil, err
		}
	}
	displayName := req.DisplayName
	if displayName == "" {
		displayName = req.ID
	}
	now := timestamppb.New(c.now())
	img := &osvcv1.Image{
		Name:        ImageName(req.ID),
		DisplayName: displayName,
		Kind:        kind,
		Site:        req.Site,
		Versions: []*osvcv1.ImageVersion{{
			Version:    1,
			Sha256:     blob.GetSha256(),
			SizeBytes:  blob.GetSizeBytes(),
			CreateTime: now,
			Inspection: osvcv1.InspectionState_INSPECTION_STATE_PENDING,
			Tree:       tree,
		}},
		CurrentVersion:  1,
		Indexes:         indexes,
		ServicingStatus: osvcv1.ServicingStatus_SERVICING_STATUS_NONE,
		CreateTime:      now,
		UpdateTime:      now,
	}
	key := c.store.ImageKey(req.ID)
	_, err = c.store.Txn(ctx, "import "+img.Name, func(tx *store.Tx) error {
		if _, exists, err := tx.Raw(key); err != nil {
			return err
		} else if exists {
			return fmt.Errorf("image %s already exists; choose another image_id: %w", img.Name, errdefs.ErrConflict)
		}
		if err := sites.Reference(tx, req.Site, img.Name); err != nil {
			return err
		}
		stored := proto.Clone(img).(*osvcv1.Image)
		if req.Within != nil {
			if err := req.Within(tx, stored); err != nil {
				return err
			}
		}
		img = stored
		return tx.Put(key, stored)
	})
	if err != nil {
		return nil, fmt.Errorf("import image %s: %w", img.Name, err)
	}
	c.logger.Info("image imported", "image", img.Name, "site", img.Site, "sha256", blob.GetSha256(), "indexes", len(indexes),
		"tree", tree.GetSha256(), "tree_files", tree.GetFileCount())
	return img, nil
}

// claimTree reads the package tree manifest sha from the library, checks
// it (packagetree.Check), that its sources/install.wim is the WIM wim, and
// that the library holds every file it lists with the size it says, and
// claims the manifest and the files, so the content collector keeps them
// until the import references them. Empty files have no blob.
func (c *Catalog) claimTree(ctx context.Context, sha string, wim *osvcv1.Content) (*osvcv1.PackageTreeRef, error) {
	if _, err := c.content(ctx, sha, "upload the tree's manifest first with ContentService.Write / osvcctl image import"); err != nil {
		return nil, err
	}
	tree, err := c.lib.ReadTree(ctx, sha)
	if errors.Is(err, packagetree.ErrInvalid) {
		return nil, errdefs.InvalidArgument("tree_sha256", err.Error())
	}
	if err != nil {
		return nil, fmt.Errorf("read package tree %s: %w", sha, err)
	}
	if f := packagetree.Install(tree); f.GetSha256() != wim.GetSha256() {
		return nil, errdefs.InvalidArgument("tree_sha256", fmt.Sprintf("the tree's %s is %s, not the WIM content_sha256 names (%s); send the sha256 of the tree's own install.wim",
			f.GetPath(), f.GetSha256(), wim.GetSha256()))
	}
	for _, f := range packagetree.Blobs(tree) {
		if f.GetSha256() == wim.GetSha256() {
			continue // claimed by ImportImage
		}
		blob, err := c.content(ctx, f.GetSha256(), fmt.Sprintf("upload the tree's file %s first with ContentService.Write / osvcctl image import", f.GetPath()))
		if err != nil {
			return nil, err
		}
		if blob.GetSizeBytes() != f.GetSizeBytes() {
			return nil, errdefs.InvalidArgument("tree_sha256", fmt.Sprintf("the tree lists %s with %d bytes, but the content library holds %s with %d",
				f.GetPath(), f.GetSizeBytes(), f.GetSha256(), blob.GetSizeBytes()))
		}
	}
	return packagetree.Ref(sha, tree), nil
}

// readWIMInfo reads the indexes of a WIM of the library from its header and
// XML info. Errors name the content, never where the library keeps it.
func (c *Catalog) readWIMInfo(ctx context.Context, blob *osvcv1.Content) ([]wiminfo.Image, error) {
	f, err := c.lib.Open(ctx, blob.GetSha256())
	if err != nil {
		return nil, fmt.Errorf("open content %s: %w", blob.GetSha256(), err)
	}
	defer f.Close()
	images, err := wiminfo.Read(f, blob.GetSizeBytes())
	if err != nil {
		return nil, errdefs.InvalidArgument("content_sha256",
			fmt.Sprintf("content %s is not a WIM file osvc can read (%v); upload the .wim file itself", blob.GetSha256(), err))
	}
	return images, nil
}

// content claims sha in the library (the content collector then leaves it
// alone for its grace period, long enough for the import to reference it)
// and returns its record; a blob it does not hold is ErrFailedPrecondition
// with hint telling the user how to upload it.
func (c *Catalog) content(ctx context.Context, sha, hint string) (*osvcv1.Content, error) {
	blob, err := c.lib.Claim(ctx, sha)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("content %s is not in the content library; %s: %w", sha, hint, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return nil, fmt.Errorf("look up content %s: %w", sha, err)
	}
	return blob, nil
}

// GetImage returns the image named images/{id}.
func (c *Catalog) GetImage(ctx context.Context, name string) (*osvcv1.Image, error) {
	id, err := ImageID(name)
	if err != nil {
		return nil, err
	}
	img, _, err := store.Get[*osvcv1.Image](ctx, c.store, c.store.ImageKey(id))
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("image %s: %w", name, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get image %s: %w", name, err)
	}
	return img, nil
}

// ListImages lists images in name order; site, when set, keeps that site's images.
func (c *Catalog) ListImages(ctx context.Context, site string, pageSize int, token string) ([]*osvcv1.Image, string, error) {
	if site != "" {
		if err := ValidateSite(site); err != nil {
			return nil, "", errdefs.InvalidArgument("site", err.Error())
		}
	}
	return listFiltered(ctx, c.store, c.store.ImagesPrefix(), pageSize, token, func(img *osvcv1.Image) bool {
		return site == "" || img.GetSite() == site
	})
}

// listFiltered pages through prefix keeping the values keep accepts, and
// fills the page by asking the store for no more than the rest of the page each
// time: then the store's token always points right after the last value looked
// at, and no kept value is skipped or returned twice.
func listFiltered[T proto.Message](ctx context.Context, s *store.Store, prefix string, pageSize int, token string, keep func(T) bool) ([]T, string, error) {
	pageSize = clampPageSize(pageSize)
	var out []T
	for {
		page, next, err := store.List[T](ctx, s, prefix, pageSize-len(out), token)
		if err != nil {
			return nil, "", err
		}
		for _, v := range page {
			if keep(v) {
				out = append(out, v)
			}
		}
		token = next
		if token == "" || len(out) >= pageSize {
			return out, token, nil
		}
	}
}

const (
	defaultPageSize = 50
	maxPageSize     = 1000
)

func clampPageSize(n int) int {
	if n <= 0 {
		return defaultPageSize
	}
	return min(n, maxPageSize)
}
