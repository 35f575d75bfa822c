package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

func (c *cli) updateCommand() *cobra.Command {
	cmd := groupCommand("update", "Import and list software updates")
	cmd.AddCommand(c.updateImportCommand(), c.updateListCommand(), c.updateGetCommand(), c.updateDeleteCommand())
	return cmd
}

func (c *cli) updateImportCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "import DIR",
		Short: "Upload every file of DIR and record the updates they carry",
		Long: `Uploads every regular file directly in DIR (CAB and MSU packages; any other
file is recorded as an update the engines do not apply), then imports them all
in one request.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			entries, err := os.ReadDir(dir)
			if err != nil {
				return usageErrorf("update import: %w", err)
			}
			updates, err := c.updates()
			if err != nil {
				return err
			}
			var files []*osvcv1.UpdateFile
			for _, e := range entries {
				if !e.Type().IsRegular() {
					continue
				}
				path := filepath.Join(dir, e.Name())
				content, err := c.upload(cmd.Context(), c.stderr, path, mediaTypeOf(path))
				if err != nil {
					return err
				}
				files = append(files, &osvcv1.UpdateFile{FileName: e.Name(), Sha256: content.GetSha256(), SizeBytes: content.GetSizeBytes()})
			}
			if len(files) == 0 {
				return usageErrorf("update import: %s holds no files: put the update packages (.cab, .msu) directly in it", dir)
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := updates.ImportUpdates(ctx, &osvcv1.ImportUpdatesRequest{Files: files})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			c.printUpdates(resp.GetUpdates())
			return nil
		},
	}
}

func (c *cli) updateListCommand() *cobra.Command {
	var applicableTo, text, arch string
	var includeUnsupported bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List updates, or those applicable to an image",
		Example: `  osvcctl update list --filter KB5031354
  osvcctl update list --applicable-to win11-23h2 --arch x64`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			filter := &osvcv1.UpdateFilter{Text: text}
			switch strings.ToLower(arch) {
			case "", "all":
			case "x86":
				filter.Architecture = osvcv1.Architecture_ARCHITECTURE_X86
			case "x64":
				filter.Architecture = osvcv1.Architecture_ARCHITECTURE_X64
			case "arm64":
				filter.Architecture = osvcv1.Architecture_ARCHITECTURE_ARM64
			default:
				return usageErrorf("--arch %q: use x86, x64, arm64 or all", arch)
			}
			image := ""
			if applicableTo != "" {
				var err error
				if image, err = resourceName(collImages, applicableTo); err != nil {
					return usageErrorf("--applicable-to: %w", err)
				}
			}
			updates, err := c.updates()
			if err != nil {
				return err
			}
			var all []*osvcv1.Update
			token := ""
			for {
				ctx, cancel := c.callContext(cmd.Context())
				var page []*osvcv1.Update
				if image != "" {
					resp, err := updates.ListApplicableUpdates(ctx, &osvcv1.ListApplicableUpdatesRequest{
						Image: image, PageSize: listPageSize, PageToken: token, Filter: filter, IncludeUnsupported: includeUnsupported})
					cancel()
					if err != nil {
						return withHint(err, errdefs.ErrNotFound, imageNotFoundHint)
					}
					page, token = resp.GetUpdates(), resp.GetNextPageToken()
				} else {
					resp, err := updates.ListUpdates(ctx, &osvcv1.ListUpdatesRequest{
						PageSize: listPageSize, PageToken: token, Filter: filter})
					cancel()
					if err != nil {
						return err
					}
					page, token = resp.GetUpdates(), resp.GetNextPageToken()
				}
				all = append(all, page...)
				if token == "" {
					break
				}
			}
			if c.output == outputJSON {
				if image != "" {
					return printJSON(c.stdout, &osvcv1.ListApplicableUpdatesResponse{Updates: all})
				}
				return printJSON(c.stdout, &osvcv1.ListUpdatesResponse{Updates: all})
			}
			c.printUpdates(all)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&applicableTo, "applicable-to", "", "list the updates applicable to this `IMAGE` and not installed in it")
	f.BoolVar(&includeUnsupported, "include-unsupported", false, "with --applicable-to, list too the updates an agent's engine reported UNSUPPORTED for the image")
	f.StringVar(&text, "filter", "", "keep updates whose KB, title or product contains `TEXT`")
	f.StringVar(&arch, "arch", "all", "keep one architecture `ARCH` (and neutral updates): x86, x64, arm64 or all")
	return cmd
}

func (c *cli) updateGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get UPDATE",
		Short: "Show one update with its files",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := updateName(args[0])
			if err != nil {
				return err
			}
			updates, err := c.updates()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := updates.GetUpdate(ctx, &osvcv1.GetUpdateRequest{Name: name})
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, updateNotFoundHint(name))
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			u := resp.GetUpdate()
			w := c.stdout
			fmt.Fprintf(w, "Name:             %s\n", u.GetName())
			fmt.Fprintf(w, "KB:               %s\n", kbText(u.GetKb()))
			fmt.Fprintf(w, "Title:            %s\n", orDash(u.GetTitle()))
			fmt.Fprintf(w, "Classification:   %s\n", classificationText(u.GetClassification()))
			fmt.Fprintf(w, "Architecture:     %s\n", archText(u.GetArchitecture()))
			fmt.Fprintf(w, "Released:         %s\n", timeText(u.GetReleaseTime()))
			fmt.Fprintf(w, "Package identity: %s\n", orDash(u.GetPackageIdentity()))
			fmt.Fprintf(w, "Products:         %s\n", orDash(strings.Join(u.GetProducts(), "; ")))
			fmt.Fprintf(w, "OS builds:        %s\n", buildsText(u))
			for _, s := range u.GetSupersedes() {
				fmt.Fprintf(w, "Supersedes:       %s\n", s)
			}
			fmt.Fprintf(w, "Engines:          %s\n", enginesText(u))
			if r := u.GetUnsupportedReason(); r != "" {
				fmt.Fprintf(w, "Unsupported:      %s\n", r)
			}
			t := newTable(w, "FILE", "SHA256", "SIZE")
			for _, f := range u.GetFiles() {
				t.AppendRow([]any{f.GetFileName(), shortSHA(f.GetSha256()), sizeText(f.GetSizeBytes())})
			}
			t.Render()
			return nil
		},
	}
}

// printUpdates writes one table row per update.
func (c *cli) printUpdates(updates []*osvcv1.Update) {
	t := newTable(c.stdout, "NAME", "KB", "TITLE", "CLASSIFICATION", "ARCH", "RELEASED", "BUILDS", "ENGINES")
	for _, u := range updates {
		t.AppendRow([]any{u.GetName(), kbText(u.GetKb()), orDash(u.GetTitle()), classificationText(u.GetClassification()),
			archText(u.GetArchitecture()), dateText(u), buildsText(u), enginesText(u)})
	}
	renderList(c.stdout, t, "no updates")
}

func dateText(u *osvcv1.Update) string {
	if u.GetReleaseTime() == nil {
		return "-"
	}
	return u.GetReleaseTime().AsTime().UTC().Format("2006-01-02")
}

// buildsText lists the OS builds an update applies to: "22621,22631",
// "26100+" for a build and every later one, "any".
func buildsText(u *osvcv1.Update) string {
	sorted := append([]uint32(nil), u.GetApplicableBuilds()...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	parts := make([]string, 0, len(sorted)+1)
	for _, b := range sorted {
		parts = append(parts, fmt.Sprint(b))
	}
	if u.GetMinBuild() != 0 {
		parts = append(parts, fmt.Sprintf("%d+", u.GetMinBuild()))
	}
	if len(parts) == 0 {
		return "any"
	}
	return strings.Join(parts, ",")
}

// enginesText lists the engines that apply an update: "dism,wimlib",
// "none" when no engine does, "-" for an update imported before osvc
// recorded them.
func enginesText(u *osvcv1.Update) string {
	switch {
	case len(u.GetEngines()) > 0:
		return strings.Join(u.GetEngines(), ",")
	case u.GetUnsupportedReason() != "":
		return "none"
	}
	return "-"
}
