package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

// Rolling images back and deleting images, updates and agents.

func (c *cli) imageRollbackCommand() *cobra.Command {
	var (
		to     int32
		reason string
	)
	cmd := &cobra.Command{
		Use:   "rollback IMAGE [--to VERSION] --reason TEXT",
		Short: "Make a version the image keeps its current one again",
		Long: `Makes a version the image still keeps its current version again: --to
VERSION, or by default the newest one older than the current. No version is
added or removed, so the version left stays kept and 'rollback --to' it rolls
forward again. The distribution points follow when they held the version
left. Refused while a run of the image is leased or in process. 'osvcctl
image get' lists the image's rollbacks; the audit trail records them too.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := resourceName(collImages, args[0])
			if err != nil {
				return err
			}
			if strings.TrimSpace(reason) == "" {
				return usageErrorf("--reason is required: say why the image is rolled back, e.g. --reason \"KB5066793 breaks BitLocker\"")
			}
			if to < 0 {
				return usageErrorf("--to %d: give a version the image keeps ('osvcctl image get %s' lists them)", to, args[0])
			}
			images, err := c.images()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := images.RollbackImage(ctx, &osvcv1.RollbackImageRequest{Name: name, ToVersion: to, Reason: reason})
			if err != nil {
				return withHint(err, errdefs.ErrNotFound, "'osvcctl image get "+args[0]+"' lists the versions it keeps")
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			img := resp.GetImage()
			last := img.GetRollbacks()[len(img.GetRollbacks())-1]
			fmt.Fprintf(c.stdout, "%s rolled back from version %d to version %d\n", img.GetName(), last.GetFromVersion(), last.GetToVersion())
			if last.GetDistributed() {
				fmt.Fprintf(c.stdout, "its distribution points follow: they are to hold version %d\n", img.GetDistributionVersion())
			}
			return nil
		},
	}
	cmd.Flags().Int32Var(&to, "to", 0, "the `VERSION` to make current; default the newest one older than the current")
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded on the image and in the audit trail (required)")
	return cmd
}

func (c *cli) imageDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete IMAGE",
		Short: "Delete an image that has no run in progress",
		Long: `Removes the image from the catalog with its schedules; its runs stay, as
history. Refused while a run of the image (servicing or inspection) has not
ended: wait for it, or cancel it. The content collector removes the image's
files once nothing names them for osvc-server --content-grace, and the
distribution points withdraw it.`,
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
			if _, err := images.DeleteImage(ctx, &osvcv1.DeleteImageRequest{Name: name}); err != nil {
				return withHint(err, errdefs.ErrNotFound, imageNotFoundHint)
			}
			fmt.Fprintf(c.stdout, "deleted %s\n", name)
			return nil
		},
	}
}

func (c *cli) updateDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete UPDATE",
		Short: "Delete an update that no run in progress applies (admins only)",
		Long: `Removes the update from the catalog, for every site. Refused while a run
that has not ended applies it: wait for it, or cancel it. Images that have
it installed keep saying so. The content collector removes its files once
nothing names them for osvc-server --content-grace.`,
		Args: exactArgs(1),
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
			if _, err := updates.DeleteUpdate(ctx, &osvcv1.DeleteUpdateRequest{Name: name}); err != nil {
				return withHint(err, errdefs.ErrNotFound, updateNotFoundHint(name))
			}
			fmt.Fprintf(c.stdout, "deleted %s\n", name)
			return nil
		},
	}
}

func (c *cli) agentDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a stopped agent and revoke it (admins only)",
		Long: `Removes the agent's record and revokes its certificates: it comes back only
by enrolling again with a new join token. Refused while the agent holds a
run or is connected; its session lasts osvc-server --lease-ttl after its
stream closed.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := strings.TrimPrefix(args[0], "agents/")
			if err := validateID(id); err != nil {
				return err
			}
			agents, err := c.agents()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			if _, err := agents.DeleteAgent(ctx, &osvcv1.DeleteAgentRequest{Name: "agents/" + id}); err != nil {
				return withHint(err, errdefs.ErrNotFound, "'osvcctl agent list' lists the agents")
			}
			fmt.Fprintf(c.stdout, "deleted agents/%s and revoked it; it may enroll again with a new join token\n", id)
			return nil
		},
	}
}

// printRollbacks writes an image's rollback records, when it has any.
func printRollbacks(w io.Writer, img *osvcv1.Image) {
	if len(img.GetRollbacks()) == 0 {
		return
	}
	fmt.Fprintln(w, "\nRollbacks:")
	t := newTable(w, "TIME", "FROM", "TO", "BY", "REASON", "DISTRIBUTED")
	for _, r := range img.GetRollbacks() {
		distributed := "no"
		if r.GetDistributed() {
			distributed = "yes"
		}
		t.AppendRow([]any{timeText(r.GetTime()), r.GetFromVersion(), r.GetToVersion(), orDash(r.GetPrincipal()), orDash(r.GetReason()), distributed})
	}
	t.Render()
}
