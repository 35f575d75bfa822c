package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

func (c *cli) distribution() (osvcv1.DistributionServiceClient, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return osvcv1.NewDistributionServiceClient(conn), nil
}

func (c *cli) dpCommand() *cobra.Command {
	cmd := groupCommand("dp", "Follow the distribution points: the agents that serve the images to deployment clients")
	cmd.AddCommand(c.dpListCommand())
	return cmd
}

func (c *cli) dpListCommand() *cobra.Command {
	var site string
	cmd := &cobra.Command{
		Use:   "list [--site SITE]",
		Short: "List the distribution points and where each stands with every image it serves",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := c.distribution()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := client.ListDistributionPoints(ctx, &osvcv1.ListDistributionPointsRequest{Site: strings.ToUpper(site)})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			t := newTable(c.stdout, "DISTRIBUTION POINT", "SITE", "LINK", "URL", "ROLE FROM", "IMAGE", "STATE", "SERVES", "PROGRESS", "RETRIES", "ERROR")
			for _, p := range resp.GetDistributionPoints() {
				link := strings.TrimPrefix(p.GetState().String(), "AGENT_STATE_")
				if p.GetState() == osvcv1.AgentState_AGENT_STATE_UNSPECIFIED {
					link = "never connected"
				}
				row := []any{p.GetName(), p.GetSite(), link, orDash(p.GetUrl()), strings.Join(p.GetRoleFrom(), ",")}
				if len(p.GetDistributions()) == 0 {
					t.AppendRow(append(row, "-", "-", "-", "-", "-", "-"))
				}
				for _, d := range p.GetDistributions() {
					t.AppendRow(append(row, distributionCells(d)...))
				}
			}
			renderList(c.stdout, t, "no distribution points: start an agent with --distribution-point, or name one with 'osvcctl site update SITE --distribution-point AGENT'")
			return nil
		},
	}
	cmd.Flags().StringVar(&site, "site", "", "list only the distribution points of this site")
	return cmd
}

// distributionCells are the IMAGE … ERROR cells of one distribution.
func distributionCells(d *osvcv1.Distribution) []any {
	serves := "-"
	if v := d.GetDistributedVersion(); v != 0 {
		serves = fmt.Sprintf("version %d", v)
	}
	progress := fmt.Sprintf("version %d", d.GetVersion())
	switch d.GetState() {
	case osvcv1.DistributionState_DISTRIBUTION_STATE_TRANSFERRING:
		progress += fmt.Sprintf(": %s of %s", sizeText(d.GetBytesTransferred()), sizeText(d.GetSizeBytes()))
	case osvcv1.DistributionState_DISTRIBUTION_STATE_DISTRIBUTED:
		// What crossed the network; the rest came from the versions it held.
		progress += fmt.Sprintf(": %s of %s received", sizeText(d.GetBytesReceived()), sizeText(d.GetSizeBytes()))
	}
	return []any{d.GetImage(), distributionStateText(d.GetState()), serves, progress, d.GetRetries(), orDash(d.GetError())}
}

func distributionStateText(st osvcv1.DistributionState) string {
	return strings.TrimPrefix(st.String(), "DISTRIBUTION_STATE_")
}

// printDistributions writes the distribution section of an image's view.
func printDistributions(w io.Writer, img *osvcv1.Image) {
	fmt.Fprintln(w, "\nDistribution points:")
	if img.GetDistributionVersion() == 0 {
		fmt.Fprintln(w, "  not distributed: 'osvcctl image distribute "+strings.TrimPrefix(img.GetName(), collImages+"/")+"' sends the current version to them, and so does a schedule with --update-distribution-points")
		return
	}
	t := newTable(w, "DISTRIBUTION POINT", "SITE", "STATE", "SERVES", "PROGRESS", "RETRIES", "ERROR")
	for _, d := range img.GetDistributions() {
		t.AppendRow(append([]any{d.GetDistributionPoint(), d.GetSite()}, distributionCells(d)[1:]...))
	}
	renderList(w, t, fmt.Sprintf("version %d goes to the distribution points of site %s and the sites below once inspected; none has it in hand yet ('osvcctl dp list' lists them)",
		img.GetDistributionVersion(), img.GetSite()))
}

func (c *cli) imageDistributeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "distribute IMAGE",
		Short: "Send the image's current version to the distribution points of its site and the sites below (again, after FAILED)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName(collImages, args[0])
			if err != nil {
				return err
			}
			client, err := c.distribution()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := client.DistributeImage(ctx, &osvcv1.DistributeImageRequest{Name: name})
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, imageNotFoundHint)
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			fmt.Fprintf(c.stdout, "%s: version %d goes to the distribution points of site %s and the sites below; 'osvcctl dp list' follows it\n",
				resp.GetImage().GetName(), resp.GetImage().GetDistributionVersion(), resp.GetImage().GetSite())
			return nil
		},
	}
}
