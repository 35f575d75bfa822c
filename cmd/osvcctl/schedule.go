package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func (c *cli) scheduleCommand() *cobra.Command {
	cmd := groupCommand("schedule", "Schedule updates for an image")
	cmd.AddCommand(c.scheduleCreateCommand())
	return cmd
}

func (c *cli) scheduleCreateCommand() *cobra.Command {
	var (
		updateIDs                            []string
		allApplicable, continueOnError       bool
		removeSuperseded, updateDistribution bool
		startTime                            string
		watch, quiet                         bool
		watchOpts                            watchOptions
	)
	cmd := &cobra.Command{
		Use:   "create IMAGE (--update ID... | --all-applicable)",
		Short: "Select updates for an image and queue a servicing run",
		Example: `  osvcctl schedule create win11-23h2 --all-applicable --remove-superseded --watch
  osvcctl schedule create win11-23h2 --update kb5031354 --update kb5031455 --continue-on-error
  RUN=$(osvcctl schedule create win11-23h2 --all-applicable -q) && osvcctl run watch "$RUN"`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			image, err := resourceName(collImages, args[0])
			if err != nil {
				return err
			}
			switch {
			case allApplicable && len(updateIDs) > 0:
				return usageErrorf("give --update ID or --all-applicable, not both")
			case !allApplicable && len(updateIDs) == 0:
				return usageErrorf("choose the updates: give --update ID (repeatable) or --all-applicable; 'osvcctl update list --applicable-to %s' lists them", args[0])
			}
			// Checked before the run is queued: failing after it would leave
			// a run the user believes was refused.
			if quiet && watch {
				return usageErrorf("--quiet prints only the run name: use it without --watch, then 'osvcctl run watch RUN'")
			}
			schedule := &osvcv1.Schedule{
				ContinueOnError:          continueOnError,
				RemoveSuperseded:         removeSuperseded,
				UpdateDistributionPoints: updateDistribution,
			}
			for _, id := range updateIDs {
				name, err := updateName(id)
				if err != nil {
					return usageErrorf("--update: %w", err)
				}
				schedule.Updates = append(schedule.Updates, name)
			}
			if startTime != "" {
				t, err := time.Parse(time.RFC3339, startTime)
				if err != nil {
					return usageErrorf("--start-time %q: give an RFC 3339 time such as 2026-11-24T22:00:00Z", startTime)
				}
				schedule.StartTime = timestamppb.New(t)
			}
			servicing, err := c.servicing()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := servicing.CreateSchedule(ctx, &osvcv1.CreateScheduleRequest{
				Parent: image, Schedule: schedule, AllApplicable: allApplicable})
			if err != nil {
				return err
			}
			if quiet {
				_, err := fmt.Fprintln(c.stdout, resp.GetRun().GetName())
				return err
			}
			if c.output == outputJSON && !watch {
				return printJSON(c.stdout, resp)
			}
			if c.output == outputTable {
				c.printSchedule(resp)
				c.noteMissingAgent(cmd.Context(), image)
			}
			if !watch {
				return nil
			}
			return c.watchRun(cmd.Context(), resp.GetRun().GetName(), watchOpts)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&updateIDs, "update", nil, "an update to apply, `ID` or updates/ID (repeatable)")
	f.BoolVar(&allApplicable, "all-applicable", false, "apply every update applicable to the image and not installed")
	f.BoolVar(&continueOnError, "continue-on-error", false, "Continue on error: keep applying the other updates when one fails")
	f.BoolVar(&removeSuperseded, "remove-superseded", false, "Remove superseded updates: clean up components and export the image to a smaller file (an image of one index only)")
	f.BoolVar(&updateDistribution, "update-distribution-points", false, "Update distribution points with the serviced image")
	f.StringVar(&startTime, "start-time", "", "hold the run until this RFC 3339 `TIME`, e.g. 2026-11-24T22:00:00Z (default: as soon as possible)")
	f.BoolVar(&watch, "watch", false, "then follow the run like 'run watch'")
	addLogLevelFlag(cmd, &watchOpts)
	f.BoolVarP(&quiet, "quiet", "q", false, "print only the run's name, for scripts")
	return cmd
}

func (c *cli) printSchedule(resp *osvcv1.CreateScheduleResponse) {
	s, r := resp.GetSchedule(), resp.GetRun()
	w := c.stdout
	fmt.Fprintf(w, "Schedule: %s\n", s.GetName())
	fmt.Fprintf(w, "Run:      %s (%s)\n", r.GetName(), runStateText(r.GetState()))
	if s.GetStartTime() != nil {
		fmt.Fprintf(w, "Start:    %s\n", timeText(s.GetStartTime()))
	} else {
		fmt.Fprintln(w, "Start:    as soon as possible")
	}
	fmt.Fprintf(w, "Continue on error: %s, Remove superseded updates: %s, Update distribution points: %s\n",
		yesNo(s.GetContinueOnError()), yesNo(s.GetRemoveSuperseded()), yesNo(s.GetUpdateDistributionPoints()))
	t := newTable(w, "ORDER", "UPDATE")
	// The run holds the apply order the server chose; the schedule the selection.
	updates := r.GetUpdates()
	if len(updates) == 0 {
		updates = s.GetUpdates()
	}
	for i, u := range updates {
		t.AppendRow([]any{i + 1, u})
	}
	t.Render()
}

// noteMissingAgent warns on stderr when no agent of the image's site is
// connected: the run then waits in PENDING, silently, until one connects.
// It is advice only, so failing to find out says nothing.
func (c *cli) noteMissingAgent(ctx context.Context, image string) {
	images, err := c.images()
	if err != nil {
		return
	}
	agents, err := c.agents()
	if err != nil {
		return
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	img, err := images.GetImage(ctx, &osvcv1.GetImageRequest{Name: image})
	if err != nil {
		return
	}
	site := img.GetImage().GetSite()
	token := ""
	for {
		resp, err := agents.ListAgents(ctx, &osvcv1.ListAgentsRequest{PageSize: listPageSize, PageToken: token})
		if err != nil {
			return
		}
		for _, a := range resp.GetAgents() {
			if a.GetSite() == site && a.GetState() == osvcv1.AgentState_AGENT_STATE_CONNECTED {
				return
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	fmt.Fprintf(c.stderr, "note: no agent of site %s is connected: the run waits until one is ('osvcctl agent list' shows the agents)\n", site)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
