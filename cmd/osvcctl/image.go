package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// Image kinds as the --kind flag spells them.
const (
	kindOSImage          = "os-image"
	kindOSUpgradePackage = "os-upgrade-package"
)

// imageNotFoundHint follows an image's NotFound.
const imageNotFoundHint = "'osvcctl image list' lists the images"

// listPageSize is asked of the server when listing; lists follow
// next_page_token until the end either way.
const listPageSize = 100

func (c *cli) imageCommand() *cobra.Command {
	cmd := groupCommand("image", "Import and inspect WIM images")
	cmd.AddCommand(c.imageImportCommand(), c.imageListCommand(), c.imageGetCommand(), c.imageInspectCommand(), c.imageExportCommand(),
		c.imageDistributeCommand(), c.imageRollbackCommand(), c.imageDeleteCommand())
	return cmd
}

func (c *cli) imageImportCommand() *cobra.Command {
	var id, displayName, site, kind, staging string
	var watch bool
	var watchOpts watchOptions
	cmd := &cobra.Command{
		Use:   "import FILE|FOLDER|TAR --site SITE",
		Short: "Upload a WIM file, or an OS upgrade package's folder tree, and record it as a new image",
		Long: `Uploads a WIM file and records it as a new image. A folder, or a tar file
(.tar, .tar.gz, .tgz) of one, is an OS upgrade package as Configuration
Manager keeps it: a tree holding sources/install.wim, which is serviced,
and every other file of the package (setup.exe, boot/, efi/ …), kept as it
is in every version. Each file is uploaded once, unless the content library
holds it already; 'osvcctl image export' writes the tree back out.`,
		Example: `  osvcctl image import install.wim --site PS1
  osvcctl image import install.wim --site PS1 --id win11-23h2 --name "Windows 11 23H2" --watch
  osvcctl image import ./Win11_23H2_upgrade --site PS1 --kind os-upgrade-package
  osvcctl image import win11-upgrade.tar.gz --site PS1`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			source, err := treeSource(args[0])
			if err != nil {
				return err
			}
			if source != "" {
				if cmd.Flags().Changed("kind") && kind != kindOSUpgradePackage {
					return usageErrorf("%s is a %s: only an OS upgrade package is imported as a folder tree; use --kind %s, or give the WIM file alone",
						args[0], source, kindOSUpgradePackage)
				}
				kind = kindOSUpgradePackage
			}
			var k osvcv1.ImageKind
			switch kind {
			case kindOSImage:
				k = osvcv1.ImageKind_IMAGE_KIND_OS_IMAGE
			case kindOSUpgradePackage:
				k = osvcv1.ImageKind_IMAGE_KIND_OS_UPGRADE_PACKAGE
			default:
				return usageErrorf("--kind %q: use %s or %s", kind, kindOSImage, kindOSUpgradePackage)
			}
			if site == "" {
				return usageErrorf("--site is required: the code of the site whose agents service the image, e.g. PS1")
			}
			if id == "" {
				from := args[0]
				if source == "tar" {
					from = tarName(from)
				}
				if id, err = defaultImageID(from); err != nil {
					return err
				}
			} else if err := validateID(id); err != nil {
				return usageErrorf("--id: %w", err)
			}
			if source == "" {
				if _, err := statRegularFile(args[0]); err != nil {
					return err
				}
			}
			images, err := c.images()
			if err != nil {
				return err
			}
			// A WIM takes minutes to upload: refuse a taken ID before, not
			// after. The import itself still refuses it if another import
			// takes the ID in between.
			if err := c.checkImageIDFree(cmd.Context(), images, id); err != nil {
				return err
			}
			siteRecord, err := c.checkSiteExists(cmd.Context(), site)
			if err != nil {
				return err
			}
			var content *osvcv1.Content
			var tree string
			if source == "" {
				content, err = c.upload(cmd.Context(), c.stderr, args[0], mediaTypeWIM)
			} else {
				content, tree, err = c.uploadTree(cmd.Context(), args[0], source, staging)
			}
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := images.ImportImage(ctx, &osvcv1.ImportImageRequest{
				ImageId:       id,
				DisplayName:   displayName,
				Kind:          k,
				Site:          site,
				ContentSha256: content.GetSha256(),
				TreeSha256:    tree,
			})
			if err != nil {
				return err
			}
			if c.output == outputJSON && !watch {
				return printJSON(c.stdout, resp)
			}
			if c.output != outputJSON {
				fmt.Fprintf(c.stdout, "imported %s; %s inspects it: an agent of site %s verifies the file and reads its installed updates, then the image can be serviced\n",
					resp.GetImage().GetName(), resp.GetInspectionRun(), resp.GetImage().GetSite())
				c.printImage(resp.GetImage(), siteRecord)
			}
			if watch {
				return c.watchRun(cmd.Context(), resp.GetInspectionRun(), watchOpts)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&site, "site", "", "the `SITE` whose agents service the image, by its code, e.g. PS1 (required)")
	f.StringVar(&id, "id", "", "image `ID`: lower-case letters, digits and '-', starting with a letter (default: derived from the file name)")
	f.StringVar(&displayName, "name", "", "display `NAME` shown with the image (default: the ID)")
	f.StringVar(&kind, "kind", kindOSImage, "image `KIND`: "+kindOSImage+" or "+kindOSUpgradePackage)
	f.BoolVar(&watch, "watch", false, "then follow the image's inspection run like 'run watch'")
	addLogLevelFlag(cmd, &watchOpts)
	f.StringVar(&staging, "staging-dir", "", "the `DIR` a tar file is extracted into while it is imported (default: the system's temporary folder)")
	return cmd
}

func (c *cli) imageListCommand() *cobra.Command {
	var site string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List images",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			images, err := c.images()
			if err != nil {
				return err
			}
			all := &osvcv1.ListImagesResponse{}
			token := ""
			for {
				ctx, cancel := c.callContext(cmd.Context())
				resp, err := images.ListImages(ctx, &osvcv1.ListImagesRequest{PageSize: listPageSize, PageToken: token, Site: site})
				cancel()
				if err != nil {
					return err
				}
				all.Images = append(all.Images, resp.GetImages()...)
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, all)
			}
			t := newTable(c.stdout, "NAME", "DISPLAY NAME", "KIND", "SITE", "VERSION", "SIZE", "INDEXES", "INSPECTION", "STATUS", "LAST RUN", "SCHEDULED UPDATES")
			for _, img := range all.GetImages() {
				cur := currentVersion(img)
				t.AppendRow([]any{img.GetName(), orDash(img.GetDisplayName()), kindText(img.GetKind()), img.GetSite(),
					img.GetCurrentVersion(), sizeText(cur.GetSizeBytes()), len(img.GetIndexes()), inspectionStateText(cur.GetInspection()),
					servicingStatusText(img.GetServicingStatus()), orDash(img.GetLastRun()), timeText(img.GetScheduledUpdatesTime())})
			}
			renderList(c.stdout, t, "no images")
			return nil
		},
	}
	cmd.Flags().StringVar(&site, "site", "", "list only the images of this `SITE`, by its code, e.g. PS1")
	return cmd
}

func (c *cli) imageGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get IMAGE",
		Short: "Show an image: its indexes, installed updates and versions",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName(collImages, args[0])
			if err != nil {
				return err
			}
			images, err := c.images()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := images.GetImage(ctx, &osvcv1.GetImageRequest{Name: name})
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, imageNotFoundHint)
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			// The site as it is now: its drive goes with the image's next run.
			site, err := c.getSite(cmd.Context(), resp.GetImage().GetSite())
			if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				return err
			}
			c.printImage(resp.GetImage(), site)
			return nil
		},
	}
}

// checkImageIDFree fails when an image with this ID exists already.
func (c *cli) checkImageIDFree(ctx context.Context, images osvcv1.ImageServiceClient, id string) error {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	_, err := images.GetImage(ctx, &osvcv1.GetImageRequest{Name: collImages + "/" + id})
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return nil
	case err == nil:
		return errdefs.Newf(errdefs.ErrConflict, "image %s/%s exists already: choose another --id, or see it with 'osvcctl image get %s'", collImages, id, id)
	}
	return err
}

// currentVersion returns the image's current version, nil when it has none.
func currentVersion(img *osvcv1.Image) *osvcv1.ImageVersion {
	for _, v := range img.GetVersions() {
		if v.GetVersion() == img.GetCurrentVersion() {
			return v
		}
	}
	return nil
}

// printImage writes the detail view of one image: a summary (with its
// site's record, when known), then its indexes, the updates installed per
// index and its versions.
func (c *cli) printImage(img *osvcv1.Image, site *osvcv1.Site) {
	w := c.stdout
	fmt.Fprintf(w, "Name:             %s\n", img.GetName())
	fmt.Fprintf(w, "Display name:     %s\n", orDash(img.GetDisplayName()))
	fmt.Fprintf(w, "Kind:             %s\n", kindText(img.GetKind()))
	fmt.Fprintf(w, "Site:             %s\n", siteText(img.GetSite(), site))
	fmt.Fprintf(w, "Current version:  %d\n", img.GetCurrentVersion())
	fmt.Fprintf(w, "Inspection:       %s\n", inspectionText(currentVersion(img)))
	if tree := currentVersion(img).GetTree(); tree != nil {
		fmt.Fprintf(w, "Package tree:     %d files, %s (sources/install.wim and the rest of the package; 'osvcctl image export' writes it out)\n",
			tree.GetFileCount(), sizeText(tree.GetSizeBytes()))
	}
	fmt.Fprintf(w, "Servicing status: %s\n", servicingStatusText(img.GetServicingStatus()))
	fmt.Fprintf(w, "Last run:         %s\n", orDash(img.GetLastRun()))
	fmt.Fprintf(w, "Scheduled updates: %s\n", scheduledText(img))

	fmt.Fprintln(w, "\nIndexes:")
	t := newTable(w, "INDEX", "NAME", "EDITION", "ARCH", "VERSION", "SIZE")
	for _, ix := range img.GetIndexes() {
		t.AppendRow([]any{ix.GetIndex(), ix.GetName(), orDash(ix.GetEdition()), archText(ix.GetArchitecture()),
			orDash(ix.GetVersion()), sizeText(ix.GetTotalBytes())})
	}
	renderList(w, t, "none")

	fmt.Fprintln(w, "\nInstalled updates:")
	t = newTable(w, "INDEX", "KB", "IDENTITY", "STATE")
	for _, ix := range img.GetIndexes() {
		for _, u := range ix.GetInstalledUpdates() {
			t.AppendRow([]any{ix.GetIndex(), kbText(u.GetKb()), u.GetPackageIdentity(), orDash(u.GetState())})
		}
	}
	renderList(w, t, "none")

	fmt.Fprintln(w, "\nVersions:")
	// A package tree's versions show the tree beside its install.wim.
	trees := slices.ContainsFunc(img.GetVersions(), func(v *osvcv1.ImageVersion) bool { return v.GetTree() != nil })
	header := []any{"VERSION", "SHA256", "SIZE", "INSPECTION", "CREATED BY RUN", "CREATED"}
	if trees {
		header = slices.Insert(header, 3, any("TREE"))
	}
	t = newTable(w, header...)
	for _, v := range img.GetVersions() {
		version := fmt.Sprint(v.GetVersion())
		if v.GetVersion() == img.GetCurrentVersion() {
			version += " (current)"
		}
		row := []any{version, shortSHA(v.GetSha256()), sizeText(v.GetSizeBytes()), inspectionStateText(v.GetInspection()),
			orDash(v.GetCreatedByRun()), timeText(v.GetCreateTime())}
		if trees {
			row = slices.Insert(row, 3, any(treeText(v.GetTree())))
		}
		t.AppendRow(row)
	}
	t.Render()
	printRollbacks(w, img)
	printDistributions(w, img)
}

// treeText describes a version's package tree for tables.
func treeText(tree *osvcv1.PackageTreeRef) string {
	if tree == nil {
		return "-"
	}
	return fmt.Sprintf("%d files, %s", tree.GetFileCount(), sizeText(tree.GetSizeBytes()))
}

// kbText spells a KB number the way Microsoft does, whether or not the server
// stored the prefix.
func kbText(kb string) string {
	if kb == "" {
		return "-"
	}
	if strings.HasPrefix(strings.ToUpper(kb), "KB") {
		return "KB" + kb[2:]
	}
	return "KB" + kb
}

// inspectionStateText names an inspection state for tables.
func inspectionStateText(st osvcv1.InspectionState) string {
	if st == osvcv1.InspectionState_INSPECTION_STATE_UNSPECIFIED {
		return "-"
	}
	return strings.TrimPrefix(st.String(), "INSPECTION_STATE_")
}

// inspectionText describes the inspection of a version: its state, the run
// and why it failed.
func inspectionText(v *osvcv1.ImageVersion) string {
	switch v.GetInspection() {
	case osvcv1.InspectionState_INSPECTION_STATE_UNSPECIFIED:
		return "- (recorded before inspections)"
	case osvcv1.InspectionState_INSPECTION_STATE_FAILED:
		return fmt.Sprintf("FAILED by %s: %s ('osvcctl image inspect' inspects it again)", v.GetInspectionRun(), v.GetInspectionError())
	}
	return fmt.Sprintf("%s by %s", inspectionStateText(v.GetInspection()), v.GetInspectionRun())
}

func (c *cli) imageInspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect IMAGE",
		Short: "Inspect the image's current version again",
		Long: `Queues an inspection run of the image's current version: an agent of the
image's site verifies the file and reads its indexes and installed updates.
Every import and every new version is inspected on its own; inspect again
after an inspection failed for a reason other than a damaged file.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName(collImages, args[0])
			if err != nil {
				return err
			}
			images, err := c.images()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := images.InspectImage(ctx, &osvcv1.InspectImageRequest{Name: name})
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, imageNotFoundHint)
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			fmt.Fprintf(c.stdout, "%s inspects %s version %d\n", resp.GetInspectionRun(), resp.GetImage().GetName(), resp.GetImage().GetCurrentVersion())
			return nil
		},
	}
}
