package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// siteNotFoundHint follows a site's NotFound.
const siteNotFoundHint = "'osvcctl site list' lists the sites"

func (c *cli) sites() (osvcv1.SiteServiceClient, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return osvcv1.NewSiteServiceClient(conn), nil
}

func (c *cli) siteCommand() *cobra.Command {
	cmd := groupCommand("site", "Manage the sites of the hierarchy: parent, offline servicing drive, distribution points")
	cmd.AddCommand(c.siteCreateCommand(), c.siteListCommand(), c.siteGetCommand(), c.siteUpdateCommand(), c.siteDeleteCommand())
	return cmd
}

// siteFlags are the flags of site create and update, each a field of Site.
type siteFlags struct {
	parent, description, drive string
	distributionPoints         []string
}

// add declares the flags on cmd.
func (f *siteFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.parent, "parent", "", "the `CODE` of the site above it (the central site, for a primary site); \"\" for none")
	fl.StringVar(&f.description, "description", "", "what the site is, e.g. \"London primary site\"")
	fl.StringVar(&f.drive, "drive", "", "the offline servicing `DRIVE` of its agents: Automatic (the drive an agent is installed on), a drive such as D:, a folder such as D:\\osvc or /srv/osvc; an agent's own --drive overrides it (default Automatic)")
	fl.StringSliceVar(&f.distributionPoints, "distribution-point", nil, "the name of an `AGENT` that keeps copies of the site's images; repeat or separate with commas; \"\" for none")
}

// siteFields maps each flag to the field of Site it sets.
var siteFields = []struct{ flag, field string }{
	{"parent", "parent_site"}, {"description", "description"}, {"drive", "offline_servicing_drive"}, {"distribution-point", "distribution_points"},
}

// site returns the Site the flags describe and the fields cmd's flags set,
// by their names in Site.
func (f *siteFlags) site(cmd *cobra.Command, code string) (*osvcv1.Site, []string) {
	s := &osvcv1.Site{Code: code, ParentSite: f.parent, Description: f.description, OfflineServicingDrive: f.drive}
	for _, dp := range f.distributionPoints {
		if dp != "" {
			s.DistributionPoints = append(s.DistributionPoints, strings.TrimPrefix(dp, "agents/"))
		}
	}
	var paths []string
	for _, sf := range siteFields {
		if cmd.Flags().Changed(sf.flag) {
			paths = append(paths, sf.field)
		}
	}
	return s, paths
}

// siteCode turns "PS1" or "sites/PS1" into PS1.
func siteCode(arg string) (string, error) {
	name, err := resourceName(collSites, arg)
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(name, collSites+"/"), nil
}

func (c *cli) siteCreateCommand() *cobra.Command {
	var f siteFlags
	cmd := &cobra.Command{
		Use:   "create CODE [--parent CODE] [--description TEXT] [--drive DRIVE] [--distribution-point AGENT]...",
		Short: "Create a site; images and agents then name it by its code",
		Example: `  osvcctl site create CAS --description "central site"
  osvcctl site create PS1 --parent CAS --drive D: --description "London primary site"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := siteCode(args[0])
			if err != nil {
				return err
			}
			client, err := c.sites()
			if err != nil {
				return err
			}
			site, _ := f.site(cmd, code)
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := client.CreateSite(ctx, &osvcv1.CreateSiteRequest{Site: site})
			if err != nil {
				return err
			}
			return c.showChanged(resp, resp.GetSite(), "created")
		},
	}
	f.add(cmd)
	return cmd
}

func (c *cli) siteListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the sites",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := c.sites()
			if err != nil {
				return err
			}
			all := &osvcv1.ListSitesResponse{}
			token := ""
			for {
				ctx, cancel := c.callContext(cmd.Context())
				resp, err := client.ListSites(ctx, &osvcv1.ListSitesRequest{PageSize: listPageSize, PageToken: token})
				cancel()
				if err != nil {
					return err
				}
				all.Sites = append(all.Sites, resp.GetSites()...)
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, all)
			}
			t := newTable(c.stdout, "CODE", "PARENT", "DRIVE", "DISTRIBUTION POINTS", "DESCRIPTION")
			for _, s := range all.GetSites() {
				t.AppendRow([]any{s.GetCode(), orDash(s.GetParentSite()), orDash(s.GetOfflineServicingDrive()),
					orDash(strings.Join(s.GetDistributionPoints(), ",")), orDash(s.GetDescription())})
			}
			renderList(c.stdout, t, "no sites: create one with 'osvcctl site create CODE'")
			return nil
		},
	}
}

func (c *cli) siteGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get CODE",
		Short: "Show a site",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := siteCode(args[0])
			if err != nil {
				return err
			}
			site, err := c.getSite(cmd.Context(), code)
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, siteNotFoundHint)
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, &osvcv1.GetSiteResponse{Site: site})
			}
			c.printSite(site)
			return nil
		},
	}
}

func (c *cli) siteUpdateCommand() *cobra.Command {
	var f siteFlags
	cmd := &cobra.Command{
		Use:   "update CODE [--parent CODE] [--description TEXT] [--drive DRIVE] [--distribution-point AGENT]...",
		Short: "Change a site: what the flags given set; the rest stays as it is",
		Example: `  osvcctl site update PS1 --drive E:
  osvcctl site update SS1 --parent PS2
  osvcctl site update PS1 --parent ""               # no parent
  osvcctl site update PS1 --distribution-point ""   # no distribution points`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := siteCode(args[0])
			if err != nil {
				return err
			}
			site, paths := f.site(cmd, code)
			if len(paths) == 0 {
				return usageErrorf("nothing to change: give --parent, --description, --drive or --distribution-point\nusage: %s", cmd.UseLine())
			}
			site.Name, site.Code = collSites+"/"+code, ""
			client, err := c.sites()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := client.UpdateSite(ctx, &osvcv1.UpdateSiteRequest{Site: site, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, siteNotFoundHint)
			}
			return c.showChanged(resp, resp.GetSite(), "updated")
		},
	}
	f.add(cmd)
	return cmd
}

func (c *cli) siteDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete CODE",
		Short: "Delete a site that no image, agent, join token or child site names",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := siteCode(args[0])
			if err != nil {
				return err
			}
			client, err := c.sites()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			if _, err := client.DeleteSite(ctx, &osvcv1.DeleteSiteRequest{Name: collSites + "/" + code}); err != nil {
				return withHint(err, errdefs.ErrNotFound, siteNotFoundHint)
			}
			fmt.Fprintf(c.stdout, "deleted %s/%s\n", collSites, code)
			return nil
		},
	}
}

// showChanged prints the response of a change to site: the response as
// JSON, or what was done and the site.
func (c *cli) showChanged(resp proto.Message, site *osvcv1.Site, done string) error {
	if c.output == outputJSON {
		return printJSON(c.stdout, resp)
	}
	fmt.Fprintf(c.stdout, "%s %s\n", done, site.GetName())
	c.printSite(site)
	return nil
}

// printSite writes the detail view of one site.
func (c *cli) printSite(s *osvcv1.Site) {
	w := c.stdout
	fmt.Fprintf(w, "Code:                %s\n", s.GetCode())
	fmt.Fprintf(w, "Parent site:         %s\n", orDash(s.GetParentSite()))
	fmt.Fprintf(w, "Description:         %s\n", orDash(s.GetDescription()))
	fmt.Fprintf(w, "Servicing drive:     %s\n", orDash(s.GetOfflineServicingDrive()))
	fmt.Fprintf(w, "Distribution points: %s\n", orDash(strings.Join(s.GetDistributionPoints(), ", ")))
	fmt.Fprintf(w, "Created:             %s\n", timeText(s.GetCreateTime()))
	fmt.Fprintf(w, "Updated:             %s\n", timeText(s.GetUpdateTime()))
}

// checkSiteExists returns site, or fails when it does not exist: before a
// long upload, since the import would be refused after it.
func (c *cli) checkSiteExists(ctx context.Context, site string) (*osvcv1.Site, error) {
	s, err := c.getSite(ctx, site)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, errdefs.Newf(errdefs.ErrFailedPrecondition, "site %s does not exist: create it with: osvcctl site create %s", site, site)
	}
	return s, err
}

// getSite reads site code.
func (c *cli) getSite(ctx context.Context, code string) (*osvcv1.Site, error) {
	client, err := c.sites()
	if err != nil {
		return nil, err
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := client.GetSite(ctx, &osvcv1.GetSiteRequest{Name: collSites + "/" + code})
	return resp.GetSite(), err
}

// siteText describes an image's site in one line: its code, then what
// the site record says when there is one.
func siteText(code string, s *osvcv1.Site) string {
	if s == nil {
		return code
	}
	var parts []string
	if d := s.GetDescription(); d != "" {
		parts = append(parts, d)
	}
	if p := s.GetParentSite(); p != "" {
		parts = append(parts, "under "+p)
	}
	parts = append(parts, "servicing drive "+orDash(s.GetOfflineServicingDrive()))
	return code + " (" + strings.Join(parts, "; ") + ")"
}
