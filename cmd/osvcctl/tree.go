package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/packagetree"
	"github.com/osvc/osvc/pkg/transfer"
)

// tarSuffixes are the names of the tar files osvcctl reads as package trees.
var tarSuffixes = []string{".tar", ".tar.gz", ".tgz"}

// treeSource says what an import's path is: "folder" or "tar" for a
// package tree, "" for a single file.
func treeSource(path string) (string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", usageErrorf("file %s does not exist", path)
	}
	if err != nil {
		return "", err
	}
	if fi.IsDir() {
		return "folder", nil
	}
	if tarName(path) != "" {
		return "tar", nil
	}
	return "", nil
}

// tarName is path's base name without its tar suffix, "" when it has none.
func tarName(path string) string {
	base := filepath.Base(path)
	for _, s := range tarSuffixes {
		if len(base) > len(s) && strings.EqualFold(base[len(base)-len(s):], s) {
			return base[:len(base)-len(s)]
		}
	}
	return ""
}

// bigFile is the size from which an upload of a tree's file shows its
// progress: install.wim does, setup's thousand small files do not.
const bigFile = 64 << 20

// uploadTree uploads the package tree at path (a folder, or a tar file
// extracted first into a temporary folder under staging) to the content
// library: each distinct file once, unless the library holds it, then its
// manifest. It returns the install.wim's content and the manifest's sha256.
func (c *cli) uploadTree(ctx context.Context, path, source, staging string) (*osvcv1.Content, string, error) {
	dir := path
	if source == "tar" {
		tmp, err := os.MkdirTemp(staging, "osvc-import-")
		if err != nil {
			return nil, "", fmt.Errorf("staging folder for %s: %w (choose another with --staging-dir)", path, err)
		}
		defer os.RemoveAll(tmp)
		dir = filepath.Join(tmp, "tree")
		f, err := os.Open(path)
		if err != nil {
			return nil, "", err
		}
		fmt.Fprintf(c.stderr, "extracting %s\n", filepath.Base(path))
		err = packagetree.ExtractTar(ctx, f, dir)
		f.Close()
		if err != nil {
			return nil, "", treeError(path, err)
		}
	}
	tree, err := packagetree.FromDir(ctx, dir)
	if err != nil {
		return nil, "", treeError(path, err)
	}
	ref := packagetree.Ref("", tree)
	fmt.Fprintf(c.stderr, "uploading package tree %s: %d files, %s\n", filepath.Base(path), ref.GetFileCount(), sizeText(ref.GetSizeBytes()))
	client, err := c.contents()
	if err != nil {
		return nil, "", err
	}
	var install *osvcv1.Content
	for _, f := range packagetree.Blobs(tree) {
		local := packagetree.LocalPath(dir, f)
		var got *osvcv1.Content
		if f.GetSizeBytes() >= bigFile {
			got, err = c.upload(ctx, c.stderr, local, mediaTypeOf(local))
		} else {
			got, err = transfer.UploadUnlessHeld(ctx, client, local, mediaTypeOf(local), nil)
		}
		if err != nil {
			return nil, "", err
		}
		if got.GetSha256() != f.GetSha256() {
			return nil, "", fmt.Errorf("%s changed while it was imported: import the package again once nothing writes to it", f.GetPath())
		}
		if f.GetSha256() == packagetree.Install(tree).GetSha256() {
			install = got
		}
	}
	manifest, err := c.uploadManifest(ctx, client, tree)
	if err != nil {
		return nil, "", err
	}
	fmt.Fprintf(c.stderr, "  package tree uploaded: %d files\n", ref.GetFileCount())
	return install, manifest, nil
}

// uploadManifest stores a tree's manifest in the content library and
// returns its sha256.
func (c *cli) uploadManifest(ctx context.Context, client osvcv1.ContentServiceClient, tree *osvcv1.PackageTree) (string, error) {
	data, err := packagetree.Marshal(tree)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp("", "osvc-manifest-")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("write the package tree's manifest: %w", err)
	}
	got, err := transfer.UploadUnlessHeld(ctx, client, f.Name(), packagetree.MediaType, nil)
	if err != nil {
		return "", fmt.Errorf("upload the package tree's manifest: %w", err)
	}
	return got.GetSha256(), nil
}

// treeError makes a refused tree a usage error naming it: what to fix is
// in the package, not in the server.
func treeError(path string, err error) error {
	if errors.Is(err, packagetree.ErrInvalid) {
		return usageErrorf("%s is no OS upgrade package osvc can import: %v", path, err)
	}
	return err
}

func (c *cli) imageExportCommand() *cobra.Command {
	var to string
	var version int32
	cmd := &cobra.Command{
		Use:   "export IMAGE --to DIR",
		Short: "Write an image's version to a folder: an OS upgrade package's whole tree, or the WIM",
		Long: `Writes the image's current version (or --version) into DIR, a new or empty
folder: the whole folder tree of an OS upgrade package kept as one, every
file checked against its sha256, or else the WIM as DIR/install.wim.`,
		Example: `  osvcctl image export win11-upgrade --to D:\packages\win11-upgrade
  osvcctl image export win11-ent --version 1 --to ./win11-ent-v1`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usageErrorf("--to is required: the new or empty folder to write the image into")
			}
			name, err := resourceName(collImages, args[0])
			if err != nil {
				return err
			}
			images, err := c.images()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			resp, err := images.GetImage(ctx, &osvcv1.GetImageRequest{Name: name})
			cancel()
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, imageNotFoundHint)
			}
			img := resp.GetImage()
			if version == 0 {
				version = img.GetCurrentVersion()
			}
			var v *osvcv1.ImageVersion
			for _, x := range img.GetVersions() {
				if x.GetVersion() == version {
					v = x
				}
			}
			if v == nil {
				return usageErrorf("%s has no version %d: 'osvcctl image get %s' lists its versions", name, version, args[0])
			}
			client, err := c.contents()
			if err != nil {
				return err
			}
			fetch := func(ctx context.Context, sha, dst string) error {
				return transfer.Download(ctx, client, sha, dst, nil)
			}
			if v.GetTree() == nil {
				return c.exportWIM(cmd.Context(), name, v, to, fetch)
			}
			tree, err := c.downloadTree(cmd.Context(), client, v.GetTree().GetSha256())
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stderr, "writing %s version %d to %s: %d files, %s\n", name, v.GetVersion(), to, v.GetTree().GetFileCount(), sizeText(v.GetTree().GetSizeBytes()))
			if err := packagetree.Materialize(cmd.Context(), tree, to, fetch); err != nil {
				return fmt.Errorf("write %s version %d to %s: %w", name, v.GetVersion(), to, err)
			}
			return c.exported(name, v, to)
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "the new or empty `DIR` to write into (required)")
	f.Int32Var(&version, "version", 0, "the `VERSION` to write (default: the current one)")
	return cmd
}

// exportWIM writes the WIM of a version without a tree as dir/install.wim.
func (c *cli) exportWIM(ctx context.Context, name string, v *osvcv1.ImageVersion, dir string, fetch packagetree.Fetch) error {
	dst := filepath.Join(dir, "install.wim")
	if _, err := os.Lstat(dst); err == nil {
		return usageErrorf("%s exists already: give --to a new or empty folder", dst)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "writing %s version %d to %s (%s)\n", name, v.GetVersion(), dst, sizeText(v.GetSizeBytes()))
	if err := fetch(ctx, v.GetSha256(), dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return c.exported(name, v, dir)
}

// exported reports a finished export.
func (c *cli) exported(name string, v *osvcv1.ImageVersion, dir string) error {
	if c.output == outputJSON {
		return printJSON(c.stdout, v)
	}
	fmt.Fprintf(c.stdout, "wrote %s version %d to %s\n", name, v.GetVersion(), dir)
	return nil
}

// downloadTree reads the package tree manifest sha from the content library.
func (c *cli) downloadTree(ctx context.Context, client osvcv1.ContentServiceClient, sha string) (*osvcv1.PackageTree, error) {
	tmp, err := os.MkdirTemp("", "osvc-manifest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	file := filepath.Join(tmp, "manifest")
	if err := transfer.Download(ctx, client, sha, file, nil); err != nil {
		return nil, fmt.Errorf("download the package tree's manifest %s: %w", sha, err)
	}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if fi.Size() > packagetree.MaxManifestBytes {
		return nil, fmt.Errorf("the package tree's manifest %s is %d bytes, more than a manifest has", sha, fi.Size())
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return packagetree.Parse(data)
}
